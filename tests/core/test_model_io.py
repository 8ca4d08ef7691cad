"""Loading float models with clear errors, and the integer region / boundary of a quantized model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from core_testkit import session
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.errors import ModelError
from qcompiler.model_io import boundary, integer_region, load_float_model
from qcompiler.pass_infra import instrumented
from qcompiler.qmath import DTYPE_RANGES, dequantize, quantize
from qcompiler.verify import integer_region_problems, verify_integer_region

RNG = np.random.default_rng(0)


def float_model(nodes, inputs, outputs, initializers=(), opset: int = 21) -> onnx.ModelProto:
    """A float32 model from ``onnx.helper`` nodes; ``inputs``/``outputs`` map names to shapes."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(a, n) for n, a in dict(initializers).items()],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def residual_model(opset: int = 17) -> onnx.ModelProto:
    """Two inputs, Conv + residual Add + Relu, and two outputs (one of them also feeding a MaxPool)."""
    nodes = [
        oh.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node("Add", ["c", "skip"], ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["y"], name="relu"),
        oh.make_node("MaxPool", ["y"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    weights = {"conv_w": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
               "conv_b": RNG.standard_normal(4).astype(np.float32)}
    return float_model(nodes, {"x": [1, 2, 6, 6], "skip": [1, 4, 6, 6]}, {"y": [1, 4, 6, 6], "p": [1, 4, 3, 3]},
                       weights, opset)


def relu_model(opset: int = 21, **initializers) -> onnx.ModelProto:
    """``y = Relu(x + bias)``, with extra (unused) ``initializers``."""
    nodes = [oh.make_node("Add", ["x", "bias"], ["a"], name="add"), oh.make_node("Relu", ["a"], ["y"], name="relu")]
    return float_model(nodes, {"x": [1, 4]}, {"y": [1, 4]},
                       {"bias": np.ones(4, np.float32), **initializers}, opset)


@pytest.fixture(scope="module")
def int_model() -> onnx.ModelProto:
    calibration = {"x": RNG.standard_normal((4, 2, 6, 6)).astype(np.float32),
                   "skip": RNG.standard_normal((4, 4, 6, 6)).astype(np.float32)}
    # module-scoped, so outside the autouse verifier fixture: install the staged verifier here too
    with instrumented(lambda name, model: verify_integer_region(model, staged=True)):
        return quantize_model(residual_model(), calibration, CompileConfig()).int_model


# -- integer_region / boundary ---------------------------------------------------------------------------


def test_boundary_describes_every_input_and_output(int_model):
    inputs, outputs = boundary(int_model)
    assert [e["name"] for e in inputs] == ["x", "skip"]
    assert [e["name"] for e in outputs] == ["y", "p"]
    shapes = {"x": [1, 2, 6, 6], "skip": [1, 4, 6, 6], "y": [1, 4, 6, 6], "p": [1, 4, 3, 3]}
    for entry in inputs + outputs:
        assert sorted(entry) == ["int_dtype", "int_name", "name", "scale", "shape", "zero_point"]
        assert entry["shape"] == shapes[entry["name"]]
        assert entry["int_dtype"] == "uint8"
        assert isinstance(entry["scale"], float) and entry["scale"] > 0
        qmin, qmax = DTYPE_RANGES[entry["int_dtype"]]
        assert isinstance(entry["zero_point"], int) and qmin <= entry["zero_point"] <= qmax
        assert entry["int_name"] != entry["name"]


def test_integer_region_has_integer_inputs_and_outputs_and_no_qdq(int_model):
    region = integer_region(int_model)
    inputs, outputs = boundary(int_model)
    assert [v.name for v in region.graph.input] == [e["int_name"] for e in inputs]
    assert [v.name for v in region.graph.output] == [e["int_name"] for e in outputs]
    for value in [*region.graph.input, *region.graph.output]:
        assert value.type.tensor_type.elem_type == TensorProto.UINT8
    assert not {n.op_type for n in region.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    used = {name for node in region.graph.node for name in node.input}
    assert {t.name for t in region.graph.initializer} <= used
    assert integer_region_problems(ir.serde.deserialize_model(region)) == []
    onnx.checker.check_model(region)


def test_integer_region_computes_what_the_integer_model_computes(int_model):
    inputs, outputs = boundary(int_model)
    feeds = {e["name"]: RNG.standard_normal(e["shape"]).astype(np.float32) for e in inputs}
    expected = session(int_model).run([e["name"] for e in outputs], feeds)
    int_feeds = {e["int_name"]: quantize(feeds[e["name"]], e["scale"], e["zero_point"], e["int_dtype"]) for e in inputs}
    got = session(integer_region(int_model)).run([e["int_name"] for e in outputs], int_feeds)
    for entry, want, ints in zip(outputs, expected, got, strict=True):
        np.testing.assert_array_equal(dequantize(ints, entry["scale"], entry["zero_point"]), want)


def test_boundary_refuses_a_model_without_boundary_quantize():
    with pytest.raises(ModelError, match="input 'x' is not consumed by exactly one boundary QuantizeLinear"):
        boundary(relu_model())


# -- load_float_model ------------------------------------------------------------------------------------


def test_load_upgrades_opset_17_to_21():
    model = load_float_model(residual_model(opset=17))
    assert model.opset_imports[""] == 21
    assert [n.op_type for n in model.graph] == ["Conv", "Add", "Relu", "MaxPool"]


def test_load_keeps_opset_21():
    assert load_float_model(relu_model(opset=21)).opset_imports[""] == 21


def test_load_refuses_a_newer_opset():
    with pytest.raises(ModelError, match="uses opset 22; qc supports opsets up to 21: re-export with opset 21"):
        load_float_model(relu_model(opset=22))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_refuses_non_finite_weights_naming_each(bad):
    broken = np.zeros((2, 3), np.float32)
    broken[1, 2] = bad
    also = np.full(5, bad, np.float32)
    model = relu_model(bad_w=broken, also_bad=also, good_w=np.ones(3, np.float32))
    with pytest.raises(ModelError, match="weights hold NaN or Inf") as error:
        load_float_model(model)
    message = str(error.value)
    assert "bad_w (1 non-finite of 6)" in message and "also_bad (5 non-finite of 5)" in message
    assert "good_w" not in message and "bias" not in message


def test_load_refuses_non_finite_weights_in_constant_nodes():
    weights = np.ones(4, np.float32)
    weights[2] = np.nan
    nodes = [oh.make_node("Constant", [], ["w"], name="weight_const", value=numpy_helper.from_array(weights)),
             oh.make_node("Mul", ["x", "w"], ["y"], name="mul")]
    with pytest.raises(ModelError, match="weight_const|'w'|w \\("):
        load_float_model(float_model(nodes, {"x": [1, 4]}, {"y": [1, 4]}))


def test_load_refuses_a_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_float_model(tmp_path / "absent.onnx")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_load_refuses_unreadable_files(tmp_path, damage):
    good = relu_model().SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(600) if damage == "random" else good[: len(good) // 2])
    with pytest.raises(ModelError, match=r"model\.onnx is not a readable ONNX model \(truncated or corrupt\?\)"):
        load_float_model(path)


def test_load_refuses_a_model_failing_the_checker():
    nodes = [oh.make_node("Relu", ["nowhere"], ["y"], name="relu")]
    with pytest.raises(ModelError, match="the model fails the ONNX checker"):
        load_float_model(float_model(nodes, {"x": [1]}, {"y": [1]}))


def test_load_refuses_an_empty_graph():
    with pytest.raises(ModelError, match="graph has no nodes"):
        load_float_model(float_model([], {"x": [1]}, {"x": [1]}))
