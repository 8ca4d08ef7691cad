"""The compiled x86 module must match onnxruntime running model.int.onnx bit for bit, on every zoo model."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnxruntime
import pytest

import qcompiler
from qcompiler.reference import integer_session
from qcompiler.targets import set_num_threads
from qcompiler.verify import integer_region_problems
from tests.e2e.conftest import compile_light
from tests.e2e.zoo import LIGHT_MODELS


def assert_bit_exact(artifact, feeds: list[dict], emulate: bool = False) -> None:
    """Zero differing elements between the compiled module and onnxruntime on the integer region."""
    module = artifact.module(emulate=emulate)
    reference = integer_session(artifact.quantized.region())
    for feed in feeds:
        ints = module.quantize_inputs(feed)
        compiled = module.run_integer(ints)
        expected = reference.run(None, ints)
        for (name, got), want in zip(compiled.items(), expected, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape, name
            differing = int(np.count_nonzero(got != want))
            assert differing == 0, f"{name}: {differing} of {got.size} elements differ"


def test_tiny_cnn_bit_exact(tiny_artifact, tiny_calibration):
    feeds = [{"input": tiny_calibration["input"][i:i + 1]} for i in range(8)]
    feeds.append({"input": np.full((1, 1, 16, 16), 1e6, np.float32)})  # saturates every input code
    assert_bit_exact(tiny_artifact, feeds)


def test_tiny_cnn_integer_region_is_integer(tiny_artifact):
    import onnx_ir as ir

    assert integer_region_problems(ir.serde.deserialize_model(tiny_artifact.quantized.int_model)) == []


def test_tiny_cnn_tracks_float(tiny_artifact, tiny_calibration):
    """The integer model stays close to the float model (a loose sanity bound, not an accuracy claim)."""
    session = onnxruntime.InferenceSession(tiny_artifact.quantized.float_model.SerializeToString())
    module = tiny_artifact.module()
    x = tiny_calibration["input"][:1]
    expected = session.run(None, {"input": x})[0]
    got = module.run({"input": x})["probs"]
    assert np.abs(got - expected).max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_bit_exact(name):
    artifact = compile_light(name)
    value = artifact.module().inputs[0]
    rng = np.random.default_rng(1)
    feeds = [{value["name"]: rng.standard_normal(value["shape"]).astype(np.float32)} for _ in range(2)]
    assert_bit_exact(artifact, feeds)


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs gcc-arm-none-eabi and qemu-system-arm")
def test_tiny_cnn_cortex_m4_emulated_bit_exact(tiny_cnn_path, tiny_calibration, tmp_path):
    """The same model for a microcontroller: saved, loaded with emulate=True, run in qemu, bit-exact."""
    artifact = qcompiler.compile(tiny_cnn_path, target="cortex-m4", calibration=tiny_calibration,
                                 input_shapes={"input": (1, 1, 16, 16)})
    assert artifact.report["memory"]["flash_bytes"] < 2 * 1024 * 1024
    assert_bit_exact(artifact, [{"input": tiny_calibration["input"][i:i + 1]} for i in range(2)], emulate=True)
    saved = qcompiler.load(artifact.save(tmp_path / "m4"), emulate=True)
    feed = {"input": tiny_calibration["input"][:1]}
    np.testing.assert_array_equal(saved.run(feed)["probs"], artifact.module(emulate=True).run(feed)["probs"])


def _attention_model(path):
    """One attention head: Linear Q/K/V, Q·Kᵀ (two activations), scale, Softmax, A·V."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))

        def forward(self, x):
            scores = self.q(x) @ self.k(x).transpose(1, 2) * 0.25
            return torch.softmax(scores, dim=-1) @ self.v(x)

    torch.manual_seed(0)
    torch.onnx.export(Attention().eval(), torch.randn(1, 8, 16), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return path


def test_attention_head_bit_exact(tmp_path):
    """Activation x activation MatMuls and a scalar Mul compile integer-only and bit-exact."""
    calibration = {"x": np.random.default_rng(0).standard_normal((16, 8, 16)).astype(np.float32)}
    artifact = qcompiler.compile(_attention_model(tmp_path / "attention.onnx"), target="x86", calibration=calibration)
    assert_bit_exact(artifact, [{"x": calibration["x"][i:i + 1]} for i in range(3)])


def _host_has(flag: str) -> bool:
    with open("/proc/cpuinfo") as cpuinfo:
        return any(line.startswith("flags") and flag in line.split() for line in cpuinfo)


@pytest.mark.skipif(not _host_has("avx2"), reason="host CPU lacks avx2")
def test_avx2_kernels_bit_exact(tiny_cnn_path, tiny_calibration, tmp_path):
    """mcpu=haswell (AVX2, no VNNI): the convolutions and attention GEMMs run on the vpmaddwd kernels."""
    options = {"target_options": {"mcpu": "haswell"}}
    cnn = qcompiler.compile(tiny_cnn_path, target="x86", calibration=tiny_calibration,
                            input_shapes={"input": (1, 1, 16, 16)}, **options)
    feeds = [{"input": tiny_calibration["input"][i:i + 1]} for i in range(4)]
    assert_bit_exact(cnn, [*feeds, {"input": np.full((1, 1, 16, 16), 1e6, np.float32)}])
    calibration = {"x": np.random.default_rng(0).standard_normal((16, 8, 16)).astype(np.float32)}
    attention = qcompiler.compile(_attention_model(tmp_path / "attention.onnx"), target="x86",
                                  calibration=calibration, **options)
    assert_bit_exact(attention, [{"x": calibration["x"][i:i + 1]} for i in range(3)])
    for artifact, feed in [(cnn, feeds[0]), (attention, {"x": calibration["x"][:1]})]:
        kernels = {symbol for symbol, _, _ in artifact.module().profile(feed, rounds=1)}
        assert any(symbol.startswith("qc_avx2_") for symbol in kernels), sorted(kernels)


@pytest.mark.skipif(not _host_has("avx2"), reason="host CPU lacks avx2")
def test_narrow_weight_kernels_bit_exact(tiny_cnn_path, tiny_calibration):
    """mcpu=haswell at 4-bit weights: the convolutions run on the vpmaddubsw kernels, bit-exact."""
    cnn = qcompiler.compile(tiny_cnn_path, target="x86", calibration=tiny_calibration, weight_bits=4,
                            input_shapes={"input": (1, 1, 16, 16)}, target_options={"mcpu": "haswell"})
    feeds = [{"input": tiny_calibration["input"][i:i + 1]} for i in range(4)]
    assert_bit_exact(cnn, [*feeds, {"input": np.full((1, 1, 16, 16), 1e6, np.float32)}])
    kernels = {symbol for symbol, _, _ in cnn.module().profile(feeds[0], rounds=1)}
    assert any(symbol.startswith("qc_avx2_narrow_conv2d") for symbol in kernels), sorted(kernels)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_changes_no_bit(tiny_artifact, tiny_calibration, tmp_path, threads):
    directory = tiny_artifact.save(tmp_path / "saved")
    feed = {"input": tiny_calibration["input"][:1]}
    want = tiny_artifact.module().run(feed)["probs"]
    try:
        got = qcompiler.load(directory, num_threads=threads).run(feed)["probs"]
    finally:
        set_num_threads(os.cpu_count())  # the default pool again, for the tests after this one
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_thread_pool_spans_every_core():
    """TVM would size its pool to half the x86 CPUs (one worker on 2 cores) and clamp every later request."""
    import tvm

    try:
        set_num_threads(2)
        assert tvm.get_global_func("runtime.NumThreads")() == 2
    finally:
        set_num_threads(os.cpu_count())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_thread_count_is_refused(tiny_artifact, tmp_path, bad):
    directory = tiny_artifact.save(tmp_path / "saved")
    with pytest.raises(qcompiler.QcError, match="num_threads must be a positive integer"):
        qcompiler.load(directory, num_threads=bad)
