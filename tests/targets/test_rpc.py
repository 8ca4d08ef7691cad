"""TVM RPC: a TVM tracker and qc's RPC server for aarch64 (sessions under qemu-aarch64) on the loopback
address. An aarch64 artifact runs through the tracker bit-exact (Python API and ``qc run``); ``qc tune
--target aarch64`` times kernels on the device, and a schedule searched there, applied by the build, runs
there bit-exact; the search's latency table is measured there; refusals name the tracker, the key or the
target. qemu has no cycle model: these tests
prove the plumbing, not the timing."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from tvm.rpc.tracker import Tracker

import qcompiler
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.latency import measure_latency
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError, TargetError
from qcompiler.targets import aarch64, get_target, rpc, tuning
from tests.cli.cli_testkit import run_qc
from tests.e2e.zoo import build_tiny_cnn

KEY = "qemu-a76"
SHAPES = {"input": (1, 1, 16, 16)}
CALIBRATION = {"input": np.random.default_rng(0).standard_normal((16, 1, 16, 16)).astype(np.float32)}

pytestmark = pytest.mark.skipif(bool(aarch64.emulation_problems()), reason="; ".join(aarch64.emulation_problems()))


@pytest.fixture(scope="module")
def device():
    """(tracker address "host:port", server): a tracker with one emulated aarch64 device under KEY."""
    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc.RpcServer(aarch64.AARCH64_TOOLCHAIN, ("127.0.0.1", tracker.port), KEY, port=9300, port_end=9400)
    yield f"127.0.0.1:{tracker.port}", server
    server.close()
    tracker.terminate()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(float model path, aarch64 artifact directory)."""
    work = tmp_path_factory.mktemp("rpc")
    model = build_tiny_cnn(work / "tiny.onnx")
    artifact = qcompiler.compile(model, target="aarch64", calibration=CALIBRATION, input_shapes=SHAPES)
    return model, artifact.save(work / "artifact")


def _assert_bit_exact_on_device(directory, tracker):
    """The artifact run on the device matches onnxruntime on its integer region, on random integer inputs."""
    module = qcompiler.load(directory, rpc_tracker=tracker, rpc_key=KEY)
    assert isinstance(module.compiled, rpc.RemoteModule)
    reference = module.reference_session()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        feeds = {s.name: rng.integers(np.iinfo(s.dtype).min, np.iinfo(s.dtype).max, size=s.shape, dtype=s.dtype,
                                      endpoint=True) for s in module.compiled.inputs}  # fmt: skip
        got, want = module.compiled.run(feeds), reference.run(None, feeds)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True)), seed
    module.compiled.close()
    with pytest.raises(TargetError, match="session was closed"):
        module.compiled.run(feeds)


@pytest.mark.slow
def test_an_aarch64_artifact_runs_bit_exact_through_the_tracker(device, tiny, tmp_path):
    tracker, server = device
    before = server.sessions
    _assert_bit_exact_on_device(tiny[1], tracker)

    np.savez(tmp_path / "in.npz", input=CALIBRATION["input"][:1])
    result = run_qc("run", str(tiny[1]), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.npz"),
                    "--integer", "--rpc-tracker", tracker, "--rpc-key", KEY, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    emulated = qcompiler.load(tiny[1], emulate=True)
    want = emulated.run_integer(emulated.quantize_inputs({"input": CALIBRATION["input"][:1]}))
    with np.load(tmp_path / "out.npz") as got:
        for name, value in want.items():
            assert np.array_equal(got[name], value), name
    assert server.sessions >= before + 2  # the sessions ran on the emulated device, and ended


@pytest.mark.slow
def test_tune_measures_on_the_device_and_a_schedule_found_there_runs_bit_exact(device, tiny, tmp_path):
    tracker, server = device
    model, _ = tiny
    np.savez(tmp_path / "calib.npz", **CALIBRATION)
    config = CompileConfig(target="aarch64", input_shapes=SHAPES)
    before = server.sessions
    report = qcompiler.tune(model, tmp_path / "calib.npz", tmp_path / "db", config, trials=4, kernels=1, samples=1,
                            rpc_tracker=tracker, rpc_key=KEY)  # fmt: skip
    assert report["measured_on"] == f"RPC device {KEY!r} of the tracker {tracker}"
    (row,) = report["kernels"]
    assert row["default_seconds"] > 0 and row["tuned_seconds"] > 0, row
    assert row["status"] in ("kept", "not kept: no faster than the default schedule"), row
    assert server.sessions > before + 4  # ranking, trials and the default schedule ran there

    # a schedule searched on the device, kept by hand whatever its speed, is applied and runs there bit-exact
    target = get_target("aarch64")
    region = qcompiler.compile(model, calibration=CALIBRATION, config=config).quantized.region()
    name = row["kernel"]
    func = tuning.generic_functions(tuning.fused_module(region, target))[name]
    measurement = tuning.Measurement(rpc.parse_tracker(tracker), KEY, target.library_cxx)
    record = tuning.tune_function(func, target.tvm_target(), tmp_path / "search", 4, measurement)
    assert record is not None
    tuning.keep_record(tmp_path / "kept", func, record, target.tvm_target())
    artifact = qcompiler.compile(model, calibration=CALIBRATION,
                                 config=config.replace(target_options={"tuning_db": str(tmp_path / "kept")}))
    directory = artifact.save(tmp_path / "tuned")
    assert json.loads((directory / "manifest.json").read_text())["library"]["tuning_db"]["records"] == 1
    _assert_bit_exact_on_device(directory, tracker)


def test_refusals_name_the_tracker_the_key_or_the_target(device, tiny, tmp_path):
    tracker, _ = device
    with pytest.raises(QcError, match=r"--rpc-tracker must be host:port"):
        rpc.parse_tracker("localhost")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TargetError, match=rf"cannot reach the RPC tracker at 127.0.0.1:{port}.*rpc_tracker"):
        qcompiler.load(tiny[1], rpc_tracker=f"127.0.0.1:{port}", rpc_key=KEY)
    with pytest.raises(TargetError, match=rf"under the key 'phone'.*registered keys: {KEY}"):
        qcompiler.load(tiny[1], rpc_tracker=tracker, rpc_key="phone")
    with pytest.raises(QcError, match="takes both rpc_tracker"):
        qcompiler.load(tiny[1], rpc_tracker=tracker)
    with pytest.raises(TargetError, match="cortex-m4 artifacts do not run over RPC"):
        rpc.remote_loader(get_target("cortex-m4"), tracker, KEY)
    with pytest.raises(QcError, match=r"aarch64 code does not run on this .* host.*--rpc-tracker"):
        qcompiler.tune(tiny[0], CALIBRATION, tmp_path / "db", CompileConfig(target="aarch64"))
    with pytest.raises(QcError, match="go together"):
        qcompiler.tune(tiny[0], CALIBRATION, tmp_path / "db", CompileConfig(target="aarch64"), rpc_key=KEY)
    assert not (tmp_path / "db").exists()


@pytest.mark.slow
def test_a_latency_table_is_measured_on_the_device(device, tiny):
    """The search's per-layer latency table comes from the same runner as tuning: every layer's kernels at
    4- and 8-bit weights timed in sessions on the device."""
    tracker, server = device
    before = server.sessions
    base = CompileConfig(target="aarch64", input_shapes=SHAPES)
    evaluator = CandidateEvaluator(tiny[0], CALIBRATION, CALIBRATION, base, samples=8)
    table = measure_latency(evaluator, base, (4, 8), tuning.measurement_for(get_target("aarch64"), tracker, KEY))
    assert table.measured_on == f"RPC device '{KEY}' of the tracker {tracker}"
    assert set(table.seconds) == {layer.name for layer in evaluator.layers}
    assert all(set(row) == {4, 8} and all(s > 0 for s in row.values()) for row in table.seconds.values())
    assert server.sessions > before
