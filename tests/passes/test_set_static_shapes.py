"""SetStaticShapesPass: input shape overrides, refusal of dynamic dims with a fix-it message, shape inference."""

from __future__ import annotations

import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper
from passes_testkit import assert_no_match, assert_pass_preserves_function, model, op_types, weights

from qcompiler.errors import ModelError
from qcompiler.passes.set_static_shapes import SetStaticShapesPass

DYNAMIC = """
g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
  [conv] c = Conv <kernel_shape = [1,1]> (x, w)
  [relu] y = Relu (c)
}
"""
STATIC = DYNAMIC.replace("N,", "1,")
#: dynamic height and width besides the batch: no default fixes them.
DYNAMIC_HW = DYNAMIC.replace("[N,3,8,8] x", "[N,3,H,W] x").replace("[N,4,8,8] y", "[N,4,H,W] y")


def dynamic(text: str = DYNAMIC):
    return model(text, w=weights(4, 3, 1, 1))


def test_golden_override_makes_input_static_and_infers_shapes():
    m = dynamic()
    assert SetStaticShapesPass({"x": (2, 3, 8, 8)})(m).modified is True
    assert list(m.graph.inputs[0].shape) == [2, 3, 8, 8]
    conv_out = m.graph.node(0).outputs[0]
    assert list(conv_out.shape) == [2, 4, 8, 8]
    assert conv_out.dtype.is_floating_point()
    assert op_types(m) == ["Conv", "Relu"]


def test_numerical_equivalence():
    m = dynamic()
    SetStaticShapesPass({"x": (1, 3, 8, 8)})(m)  # random inputs need a static shape
    assert_pass_preserves_function(SetStaticShapesPass(), m)


@pytest.mark.parametrize("overrides", [None, {"x": (1, 3, 8, 8)}], ids=["no-override", "same-shape-override"])
def test_no_match_on_static_model(overrides):
    assert_no_match(SetStaticShapesPass(overrides), model(STATIC, w=weights(4, 3, 1, 1)))


def test_inferring_intermediate_shapes_is_a_modification():
    m = model(STATIC, infer_shapes=False, w=weights(4, 3, 1, 1))
    assert m.graph.node(0).outputs[0].shape is None
    assert SetStaticShapesPass()(m).modified is True
    assert list(m.graph.node(0).outputs[0].shape) == [1, 4, 8, 8]


def test_dynamic_dim_names_input_and_the_flag_that_fixes_it():
    with pytest.raises(ModelError) as info:
        SetStaticShapesPass()(dynamic(DYNAMIC_HW))
    message = str(info.value)
    assert "input 'x' has a dynamic shape [N,3,H,W]" in message
    assert "--input-shape x=1,3,1,1" in message and "input_shapes={'x': (1, 3, 1, 1)}" in message


def test_a_dynamic_batch_alone_defaults_to_one():
    m = dynamic()
    assert SetStaticShapesPass()(m).modified is True
    assert list(m.graph.inputs[0].shape) == [1, 3, 8, 8]
    assert list(m.graph.outputs[0].shape) == [1, 4, 8, 8]


def negative_batch_with_stale_value_info() -> onnx.ModelProto:
    """A Paddle2ONNX-style model: batch written as ``dim_value: -1``, and a value_info entry for the Conv output
    whose shape (batch 7, 5 channels) contradicts what inference derives."""
    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 21]>\n' + DYNAMIC)
    proto.graph.initializer.append(numpy_helper.from_array(weights(4, 3, 1, 1), "w"))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = -1
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [7, 5, 8, 8]))
    return proto


@pytest.mark.parametrize("overrides", [None, {"x": (1, 3, 8, 8)}], ids=["default-batch", "override"])
def test_negative_dims_are_dynamic_and_stale_value_info_is_reinferred(overrides):
    m = ir.serde.deserialize_model(negative_batch_with_stale_value_info())
    SetStaticShapesPass(overrides)(m)
    assert list(m.graph.inputs[0].shape) == [1, 3, 8, 8]
    assert list(m.graph.node(0).outputs[0].shape) == [1, 4, 8, 8]
    assert list(m.graph.outputs[0].shape) == [1, 4, 8, 8]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"x": (1, 3, 8)}, "rank 3 given, the model's input has rank 4"),
        ({"x": (1, 3, 8, 8, 1)}, "rank 5 given"),
        ({"x": (1, 4, 8, 8)}, "dim 1 is fixed to 3 by the model, got 4"),
        ({"image": (1, 3, 8, 8)}, "unknown input(s) ['image']"),
    ],
)
def test_bad_override_raises(override, expected):
    with pytest.raises(ModelError, match="--input-shape") as info:
        SetStaticShapesPass(override)(dynamic(DYNAMIC_HW))
    assert expected in str(info.value)
