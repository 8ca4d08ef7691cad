"""TVM RPC: measuring and running builds on devices registered with a TVM RPC tracker.

Client side (what ``qc tune --rpc-tracker`` and ``qc run --rpc-tracker`` use): :func:`parse_tracker`,
:func:`open_session` (a session on a free device of a key, refused by name when the tracker is unreachable
or holds no such key) and :func:`load_remote` (a compiled library uploaded, loaded and run in the Relax VM
on the session's CPU; inputs and outputs cross the connection).

Server side: a real device runs TVM's own server (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key
KEY`` with the device's TVM wheel). :class:`RpcServer` is qc's stand-in for a device: it registers with a
tracker under a key and serves each session in examples/cpp/rpc_session built by a
:class:`~qcompiler.targets._cross.Toolchain`, on this host or under its emulator. With the aarch64 toolchain
the session runs under qemu-aarch64, so aarch64 builds are uploaded, loaded and timed through exactly the
client path a phone takes; qemu has no cycle model, so such timings prove the plumbing, not the speed.

Protocol (TVM's, as its Python server speaks it): the server sends the tracker ``UPDATE_INFO`` with its key,
then ``PUT`` with a fresh match key; a client asks the tracker for a device, gets the address and match key,
connects and sends ``RPC_MAGIC`` and ``client:<match key>``; the server answers ``RPC_CODE_SUCCESS`` and
``server:<key>`` and hands the socket to the session program, which runs TVM's RPC loop until the client
closes. The server then puts a new match key. A match key the tracker handed out but no client used is
replaced after :data:`_UNUSED_KEY_SECONDS`.
"""

from __future__ import annotations

import gc
import logging
import os
import pathlib
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tvm import relax, rpc
from tvm.rpc import base
from tvm.rpc.base import TrackerCode

from qcompiler.errors import QcError, TargetError
from qcompiler.targets._cross import Toolchain, build_runner
from qcompiler.targets._runtime import CompiledModule, TensorSpec, numpy_outputs

__all__ = ["RemoteModule", "RpcServer", "check_device", "load_remote", "open_session", "parse_tracker", "remote_loader",
           "tracker_keys"]

_LOG = logging.getLogger("qcompiler.rpc")
#: seconds between the server's checks on the tracker while it waits for a client.
_PING_SECONDS = 1.0
#: a match key handed out this long ago without a client connecting is replaced by a new one.
_UNUSED_KEY_SECONDS = 6.0
#: seconds one session may last unless the client asks for less (``-timeout=``).
SESSION_SECONDS = 600


def parse_tracker(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); anything else is a :class:`QcError` saying what is expected."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise QcError(f"--rpc-tracker must be host:port (e.g. 127.0.0.1:9190), got {address!r}")
    return host, int(port)


def tracker_keys(tracker: tuple[str, int], wait_seconds: float = 0) -> dict[str, dict]:
    """Key -> queue info (free / pending devices) of the tracker, waiting up to ``wait_seconds`` for it to
    accept connections; a TargetError naming it when it cannot be reached."""
    host, port = tracker
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            socket.create_connection(tracker, timeout=5).close()  # TVM's own connect retries for a minute
            return rpc.connect_tracker(host, port).summary()["queue_info"]
        except (OSError, RuntimeError) as err:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise TargetError(
                f"cannot reach the RPC tracker at {host}:{port} ({err}); start one with "
                f"python -m tvm.exec.rpc_tracker --host {host} --port {port}"
            ) from err


def check_device(tracker: tuple[str, int], key: str) -> None:
    """Refuse, by name, a tracker that cannot be reached or holds no device under ``key``."""
    keys = tracker_keys(tracker)
    if key not in keys:
        raise TargetError(
            f"no device is registered with the RPC tracker at {tracker[0]}:{tracker[1]} under the key {key!r} "
            f"(registered keys: {', '.join(sorted(keys)) or 'none'}); start a server with that key"
        )


def open_session(tracker: tuple[str, int], key: str, session_seconds: float = SESSION_SECONDS):
    """A session on a free device registered under ``key``, waiting while all of them are busy."""
    check_device(tracker, key)
    return rpc.connect_tracker(*tracker).request(key, priority=1, session_timeout=session_seconds)


class RemoteModule(CompiledModule):
    """A compiled library in a Relax VM on an RPC session's CPU; :meth:`run` as for a local module.

    Calls go through the VM's stateful interface (set_input / invoke_stateful / get_outputs), which returns
    each output of a tuple separately: a tuple object cannot cross the connection. Holds the session: the
    remote VM lives as long as this object.
    """

    def __init__(self, session, vm: relax.VirtualMachine, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec]):  # fmt: skip
        super().__init__(vm, session.cpu(), inputs, outputs)
        self.session = session

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``main`` on the device on ``inputs`` (by graph input name); the outputs in graph order."""
        if self._vm is None:
            raise TargetError("this remote module's session was closed; load the artifact again")
        self._vm.set_input("main", *self._device_args(inputs))
        self._vm.invoke_stateful("main")
        return numpy_outputs(self._vm.get_outputs("main"))

    def close(self) -> None:
        """End the session now, so that the device serves its next client (TVM's servers serve one at a time);
        the module cannot run afterwards. The session's Python objects hold reference cycles, so this collects
        them rather than leave the connection open until the garbage collector runs."""
        self._vm = self._device = self.session = None
        gc.collect()

    def profile(self, inputs, rounds: int = 10):
        """Not over RPC: the per-kernel instrument is a host callback the device cannot call."""
        raise TargetError("per-kernel profiles run on the host only; qc tune ranks remote kernels by timing them")


def load_remote(library, library_info: Mapping, session) -> RemoteModule:
    """Upload ``library`` (a target's compiled library) through ``session``, load it there into a Relax VM."""
    remote_name = f"qc-{os.getpid()}-{id(session):x}-{os.path.basename(library)}"
    try:
        session.upload(str(library), remote_name)
        vm = relax.VirtualMachine(session.load_module(remote_name), session.cpu())
    except Exception as err:  # the error is the device's, relayed as a TVM error of some type
        raise TargetError(f"the RPC device could not load {library}: {str(err).strip()[-800:]}") from err
    specs = [[TensorSpec.from_json(d) for d in library_info[key]] for key in ("inputs", "outputs")]
    return RemoteModule(session, vm, *specs)


class RpcServer:
    """A device stand-in registered with a tracker under ``key``: each session runs examples/cpp/rpc_session
    built by ``toolchain`` (under its emulator, if it has one), one session at a time, in a background thread
    until :meth:`close`. See the module docstring for the protocol."""

    def __init__(self, toolchain: Toolchain, tracker: tuple[str, int], key: str, host: str = "127.0.0.1",
                 port: int = 9090, port_end: int = 9199):  # fmt: skip
        self.toolchain, self.tracker, self.key = toolchain, tracker, key
        self._program = build_runner(toolchain, program="rpc_session")
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.port = next((p for p in range(port, port_end) if self._bind(host, p)), None)
        if self.port is None:
            self._listener.close()
            raise TargetError(f"RPC server: no free port in [{port}, {port_end}) on {host}")
        self._listener.listen(1)
        self.sessions = 0
        self._active: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"qc-rpc-{key}", daemon=True)
        self._thread.start()

    def _bind(self, host: str, port: int) -> bool:
        try:
            self._listener.bind((host, port))
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Stop serving, ending the session in progress (its socket is shut down), and free the port."""
        self._stop.set()
        active = self._active
        if active is not None:
            try:
                active.shutdown(socket.SHUT_RDWR)  # the session program sees the client gone and exits
            except OSError:
                pass  # it has just ended
        self._thread.join()
        self._listener.close()

    def __enter__(self) -> RpcServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                tracker = self._register()
            except OSError as err:
                _LOG.warning("RPC server %s: tracker %s unreachable (%s), retrying", self.key, self.tracker, err)
                self._stop.wait(_PING_SECONDS)
                continue
            try:
                while not self._stop.is_set():
                    accepted = self._wait_for_client(tracker)
                    if accepted is not None:
                        self._session(*accepted)
            except OSError as err:
                _LOG.warning("RPC server %s: lost the tracker (%s), registering again", self.key, err)
            finally:
                tracker.close()

    def _register(self) -> socket.socket:
        tracker = socket.create_connection(self.tracker, timeout=30)
        tracker.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(tracker, 4))[0] != base.RPC_TRACKER_MAGIC:
            tracker.close()
            raise OSError(f"{self.tracker} is not a TVM RPC tracker")
        base.sendjson(tracker, [TrackerCode.UPDATE_INFO, {"key": "server:" + self.key, "addr": [None, self.port]}])
        if base.recvjson(tracker) != TrackerCode.SUCCESS:
            raise OSError("the tracker refused the server's key")
        return tracker

    def _put(self, tracker: socket.socket, used: set[str]) -> str:
        match_key = base.random_key(self.key, cmap=used)
        used.add(match_key)
        base.sendjson(tracker, [TrackerCode.PUT, self.key, [self.port, match_key], None])
        if base.recvjson(tracker) != TrackerCode.SUCCESS:
            raise OSError("the tracker refused the server's PUT")
        return match_key

    def _wait_for_client(self, tracker: socket.socket) -> tuple[socket.socket, float] | None:
        """The next client that presents the current match key, with its session limit; None on close."""
        used: set[str] = set()
        match_key = self._put(tracker, used)
        unused_for = 0.0
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], _PING_SECONDS)[0]:
                base.sendjson(tracker, [TrackerCode.GET_PENDING_MATCHKEYS])
                unused_for = 0.0 if match_key in base.recvjson(tracker) else unused_for + _PING_SECONDS
                if unused_for > _UNUSED_KEY_SECONDS:  # handed to a client that never came
                    match_key, unused_for = self._put(tracker, used), 0.0
                continue
            conn, _ = self._listener.accept()
            try:
                if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_MAGIC:
                    raise OSError("not a TVM RPC client")
                words = base.recvall(conn, struct.unpack("<i", base.recvall(conn, 4))[0]).decode().split()
                if not words or words[0] != "client:" + match_key:
                    conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
                    raise OSError(f"client key {words[:1]} does not match")
                reply = ("server:" + self.key).encode()
                conn.sendall(struct.pack("<ii", base.RPC_CODE_SUCCESS, len(reply)) + reply)
            except OSError as err:
                _LOG.warning("RPC server %s: refused a connection: %s", self.key, err)
                conn.close()
                continue
            limits = [float(w.split("=", 1)[1]) for w in words[1:] if w.startswith("-timeout=")]
            return conn, (limits[0] if limits and limits[0] > 0 else SESSION_SECONDS)
        return None

    def _session(self, conn: socket.socket, seconds: float) -> None:
        work = tempfile.mkdtemp(prefix="qc-rpc-session-")
        self._active = conn
        try:
            result = self.toolchain.run(self._program, [str(conn.fileno()), work], seconds, pass_fds=(conn.fileno(),))
            if result.returncode != 0:
                _LOG.warning("RPC server %s: session ended with exit %d: %s", self.key, result.returncode,
                             result.stderr.strip()[-2000:])  # fmt: skip
        except TargetError as err:  # the session outlived its limit
            _LOG.warning("RPC server %s: %s", self.key, err)
        finally:
            self._active = None
            conn.close()
            shutil.rmtree(work, ignore_errors=True)
            self.sessions += 1


def remote_loader(target, tracker: str, key: str):
    """``target.load``'s counterpart for a device behind the RPC tracker ``tracker`` (host:port): a
    function (artifact dir, library info) -> :class:`RemoteModule`, each call on a session of its own."""
    if not target.cpu_library:
        raise TargetError(f"{target.name} artifacts do not run over RPC: only CPU libraries (x86, aarch64) do")
    address = parse_tracker(tracker)
    return lambda out_dir, info: load_remote(pathlib.Path(out_dir) / info["library"], info,
                                             open_session(address, key))  # fmt: skip
