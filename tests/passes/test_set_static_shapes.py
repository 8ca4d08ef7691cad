"""SetStaticShapesPass: input shape overrides, refusal of dynamic dims with a fix-it message, shape inference."""

from __future__ import annotations

import pytest
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


def dynamic():
    return model(DYNAMIC, w=weights(4, 3, 1, 1))


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
        SetStaticShapesPass()(dynamic())
    message = str(info.value)
    assert "'x'" in message and "N" in message
    assert "--input-shape x=1,3,8,8" in message


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
        SetStaticShapesPass(override)(dynamic())
    assert expected in str(info.value)
