"""Cross-compilation helpers: toolchains, the C++ runner (examples/cpp) built per toolchain, and running an
exported library through that runner (natively or under an emulator) with files for inputs and outputs.

A :class:`Toolchain` is data: the C++ compiler, where the TVM runtime libraries for its architecture live, and
the command prefix that runs its binaries here (empty on the host, ``qemu-aarch64 -L <sysroot>`` for aarch64).
Every missing piece is a :class:`~qcompiler.errors.TargetError` that says which package or command fixes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from qcompiler.errors import TargetError
from qcompiler.targets._runtime import TensorSpec

__all__ = [
    "HOST_TOOLCHAIN",
    "Toolchain",
    "build_runner",
    "cache_dir",
    "host_runtime_dirs",
    "require_tool",
    "run_library",
    "runner_sources",
]

#: the repository root (targets/ is installed in place by the editable install).
REPO = pathlib.Path(__file__).resolve().parents[1]

#: seconds one runner invocation may take (qemu is slow, models are small).
RUN_TIMEOUT = 600


def cache_dir() -> pathlib.Path:
    """``$QC_CACHE_DIR``, else ``<repo>/.cache``: downloaded runtimes and built runners."""
    return pathlib.Path(os.environ.get("QC_CACHE_DIR") or REPO / ".cache")


def require_tool(name: str, fix: str) -> str:
    """The path of executable ``name``, or a :class:`TargetError` saying how to install it (``fix``)."""
    path = shutil.which(name)
    if path is None:
        raise TargetError(f"{name} is not installed; {fix}")
    return path


def host_runtime_dirs() -> tuple[pathlib.Path, ...]:
    """The installed (host) wheels' directories holding libtvm_ffi.so and libtvm_runtime.so."""
    import tvm
    import tvm_ffi

    return pathlib.Path(tvm_ffi.__file__).parent / "lib", pathlib.Path(tvm.__file__).parent / "lib"


def ffi_include_dir() -> pathlib.Path:
    """tvm-ffi's C++ headers, from the installed wheel (architecture independent)."""
    import tvm_ffi

    return pathlib.Path(tvm_ffi.__file__).parent / "include"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """How to build and run the C++ runner for one architecture."""

    arch: str
    cxx: str
    cxx_fix: str
    runtime_dirs: Callable[[], tuple[pathlib.Path, ...]]
    emulator: tuple[str, ...] = ()
    emulator_fix: str = ""

    def check(self) -> None:
        """Raise :class:`TargetError` naming every missing tool, with the fix for each."""
        problems = [f"{self.cxx} ({self.cxx_fix})"] if shutil.which(self.cxx) is None else []
        if self.emulator and shutil.which(self.emulator[0]) is None:
            problems.append(f"{self.emulator[0]} ({self.emulator_fix})")
        if problems:
            raise TargetError(f"{self.arch}: missing tools: {'; '.join(problems)}")

    def run(
        self, binary: pathlib.Path, args: Sequence[str], timeout: float = RUN_TIMEOUT, pass_fds: Sequence[int] = ()
    ) -> subprocess.CompletedProcess:
        """Run ``binary args`` here (under the emulator if any) with the runtime libraries on the loader path;
        the file descriptors ``pass_fds`` stay open in it."""
        library_path = {"LD_LIBRARY_PATH": ":".join(str(d) for d in self.runtime_dirs())}
        if self.emulator:  # the emulated loader gets the variable with -E; qemu's own loader must not see it
            sets = [arg for key, value in library_path.items() for arg in ("-E", f"{key}={value}")]
            command, env = [*self.emulator, *sets, str(binary), *args], None
        else:
            command, env = [str(binary), *args], {**os.environ, **library_path}
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, pass_fds=tuple(pass_fds)
            )
        except subprocess.TimeoutExpired as err:
            raise TargetError(f"{self.arch}: {binary.name} did not finish in {timeout:.0f} s") from err


HOST_TOOLCHAIN = Toolchain(
    arch="x86_64", cxx="g++", cxx_fix="apt-get install g++", runtime_dirs=host_runtime_dirs
)


def runner_sources(program: str = "run_artifact") -> list[pathlib.Path]:
    """The sources of one of qc's C++ programs in examples/cpp (``run_artifact``, ``rpc_session``): the shared
    header and ``<program>.cc`` (part of the source tree, not of the installed package)."""
    sources = [REPO / "examples" / "cpp" / name for name in ("qc_runtime.h", f"{program}.cc")]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise TargetError(
            f"the C++ runner sources are missing: {', '.join(missing)} (a source checkout is needed)"
        )
    return sources


def build_runner(
    toolchain: Toolchain, cache: pathlib.Path | None = None, program: str = "run_artifact"
) -> pathlib.Path:
    """Build examples/cpp/<program>.cc with ``toolchain`` once; the binary is cached by a hash of its inputs.

    Links ``-ltvm_ffi -Wl,--no-as-needed -ltvm_runtime`` (the runtime registers the VM when loaded), with an
    rpath to the runtime directories.
    """
    toolchain.check()
    header, source = runner_sources(program)
    lib_dirs = [str(d) for d in toolchain.runtime_dirs()]
    flags = ["-std=c++17", "-O2", f"-I{ffi_include_dir()}", f"-I{header.parent}"]
    links = [f"-L{d}" for d in lib_dirs] + [
        "-ltvm_ffi",
        "-Wl,--no-as-needed",
        "-ltvm_runtime",
        "-Wl,--as-needed",
    ]
    links += [f"-Wl,-rpath,{':'.join(lib_dirs)}", f"-Wl,-rpath-link,{':'.join(lib_dirs)}"]
    digest = hashlib.sha256()
    for part in (
        header.read_bytes(),
        source.read_bytes(),
        json.dumps([toolchain.cxx, flags, links]).encode(),
    ):
        digest.update(part)
    binary = (cache or cache_dir()) / "runner" / f"{toolchain.arch}-{digest.hexdigest()[:12]}" / program
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{program}.{os.getpid()}")
    command = [toolchain.cxx, *flags, str(source), "-o", str(partial), *links]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise TargetError(f"building {program} failed:\n  {' '.join(command)}\n{result.stderr[-3000:]}")
    partial.replace(binary)  # atomic: a concurrent build of the same inputs writes the same file
    return binary


def run_library(
    toolchain: Toolchain,
    library: pathlib.Path,
    library_info: Mapping,
    inputs: Sequence[np.ndarray],
    timeout: float = RUN_TIMEOUT,
) -> list[np.ndarray]:
    """Run ``library``'s ``main`` through the C++ runner on integer ``inputs`` (signature order).

    The inputs are written as raw files, the runner reads a manifest holding ``library_info`` and writes raw
    outputs, read back with the recorded output dtypes and shapes.
    """
    runner = build_runner(toolchain)
    outputs = [TensorSpec.from_json(d) for d in library_info["outputs"]]
    with tempfile.TemporaryDirectory(prefix="qc-run-") as scratch:
        work = pathlib.Path(scratch)
        (work / "model.so").symlink_to(pathlib.Path(library).resolve())
        (work / "manifest.json").write_text(json.dumps({"library": {**library_info, "library": "model.so"}}))
        files = []
        for i, value in enumerate(inputs):
            files.append(str(work / f"in_{i}.bin"))
            pathlib.Path(files[-1]).write_bytes(np.ascontiguousarray(value).tobytes())
        (work / "out").mkdir()
        result = toolchain.run(runner, [str(work), *files, "--out", str(work / "out")], timeout)
        if result.returncode != 0:
            raise TargetError(
                f"{toolchain.arch}: running {library.name} failed (exit {result.returncode}):\n"
                f"{result.stderr.strip()[-3000:]}"
            )
        return [
            np.fromfile(work / "out" / f"out_{i}.bin", dtype=spec.dtype).reshape(spec.shape)
            for i, spec in enumerate(outputs)
        ]
