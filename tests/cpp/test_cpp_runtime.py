"""The C++ runtime (examples/cpp): run_artifact built for the host and cross-built for aarch64, run on saved
artifacts (their real manifest.json), bit-exact with onnxruntime on the integer region, integer and float I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qcompiler
from qcompiler.api import Module
from qcompiler.errors import TargetError
from qcompiler.qmath import dequantize
from qcompiler.reference import integer_session
from qcompiler.targets import _cross as cross
from qcompiler.targets import get_target
from tests.e2e.zoo import build_tiny_cnn

CALIBRATION = {"input": np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32)}
FEEDS = [CALIBRATION["input"][i : i + 1] for i in range(3)] + [np.full((1, 1, 16, 16), 1e6, np.float32)]


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory):
    return build_tiny_cnn(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def compile_tiny(path, target: str, directory):
    artifact = qcompiler.compile(
        path, target=target, calibration=CALIBRATION, input_shapes={"input": (1, 1, 16, 16)}
    )
    return artifact.save(directory)


def host_runner():
    try:
        return cross.build_runner(cross.HOST_TOOLCHAIN)
    except TargetError as err:
        pytest.skip(f"cannot build the C++ runner for the host: {err}")


def run_cli(toolchain, runner, directory, inputs: list[np.ndarray], out, *flags):
    """run_artifact on raw files of ``inputs``; returns the completed process."""
    out.mkdir(exist_ok=True)
    files = []
    for i, value in enumerate(inputs):
        files.append(str(out / f"in_{i}.bin"))
        np.ascontiguousarray(value).tofile(files[-1])
    return toolchain.run(runner, [str(directory), *files, "--out", str(out), *flags])


def check_artifact(toolchain, runner, directory, tmp_path, *flags):
    """Integer I/O bit-exact with onnxruntime; float I/O equal to qc's Python quantize/dequantize.
    ``flags`` go to every run."""
    manifest = json.loads((directory / "manifest.json").read_text())
    boundary_in, boundary_out = manifest["inputs"][0], manifest["outputs"][0]
    (spec,) = manifest["library"]["outputs"]
    # the Python-side Module only for its quantize/dequantize and the reference session: no library loaded
    module = Module(directory, manifest, compiled=None)
    reference = module.reference_session()
    for i, x in enumerate(FEEDS):
        ints = module.quantize_inputs({"input": x})
        result = run_cli(toolchain, runner, directory, [ints[boundary_in["int_name"]]], tmp_path / f"int{i}",
                         *flags)
        assert result.returncode == 0, result.stderr
        got = np.fromfile(tmp_path / f"int{i}" / "out_0.bin", dtype=spec["dtype"]).reshape(spec["shape"])
        (want,) = reference.run(None, ints)
        assert got.dtype == want.dtype and np.array_equal(got, want), (
            f"feed {i}: {np.count_nonzero(got != want)} differ"
        )

        result = run_cli(toolchain, runner, directory, [x], tmp_path / f"float{i}", "--float", *flags)
        assert result.returncode == 0, result.stderr
        floats = np.fromfile(tmp_path / f"float{i}" / "float_out_0.bin", dtype=np.float32)
        expected = dequantize(want, boundary_out["scale"], boundary_out["zero_point"])
        assert np.array_equal(floats.reshape(expected.shape), expected)


@pytest.mark.parametrize("threads", [[], ["--threads", "1"], ["--threads", "2"]])
def test_host_runner_is_bit_exact_on_the_x86_tiny_cnn(tiny_cnn, tmp_path, threads):
    runner = host_runner()
    directory = compile_tiny(tiny_cnn, "x86", tmp_path / "artifact")
    check_artifact(cross.HOST_TOOLCHAIN, runner, directory, tmp_path, *threads)


def test_aarch64_runner_is_bit_exact_under_qemu(tiny_cnn, tmp_path, monkeypatch):

    aarch64 = pytest.importorskip("qcompiler.targets.aarch64")
    if aarch64.emulation_problems():
        pytest.skip("; ".join(aarch64.emulation_problems()))
    try:
        runner = cross.build_runner(aarch64.AARCH64_TOOLCHAIN)
    except TargetError as err:
        pytest.skip(f"cannot cross-build the C++ runner: {err}")
    directory = compile_tiny(tiny_cnn, "aarch64", tmp_path / "artifact")
    check_artifact(aarch64.AARCH64_TOOLCHAIN, runner, directory, tmp_path)


def test_runner_reports_a_wrong_input_size(tiny_cnn, tmp_path):
    runner = host_runner()
    model = tmp_path / "region"
    info = get_target("x86").compile(_small_region(), model)
    (model / "manifest.json").write_text(json.dumps({"library": info}))
    result = run_cli(
        cross.HOST_TOOLCHAIN, runner, model, [np.zeros(5, np.int8), np.zeros(3, np.int8)], tmp_path / "o"
    )
    assert result.returncode == 1
    assert "input 'a' (int8[2,3]) needs 6" in result.stderr
    result = run_cli(cross.HOST_TOOLCHAIN, runner, model, [np.zeros(6, np.int8)], tmp_path / "o")
    assert result.returncode == 1 and "the model has 2 input(s), got 1 file(s)" in result.stderr


def test_run_library_on_the_host_returns_every_output(tmp_path):
    model = _small_region()
    info = get_target("x86").compile(model, tmp_path)
    feeds = {"a": np.array([[1, -2, 3], [127, -128, 0]], np.int8), "b": np.array([5, 6, -7], np.int8)}
    got = cross.run_library(cross.HOST_TOOLCHAIN, tmp_path / "model.so", info, [feeds["a"], feeds["b"]])
    session = integer_session(model)
    for g, w in zip(got, session.run(None, feeds), strict=True):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def _small_region():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Cast", ["sum"], ["wide"], to=TensorProto.INT32),
        ],
        "small",
        [
            helper.make_tensor_value_info("a", TensorProto.INT8, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.INT8, [2, 3]),
            helper.make_tensor_value_info("wide", TensorProto.INT32, [2, 3]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
