"""IntegerizeAddPass: residual Add/Sub/Sum of activations as one int64 weighted sum and one qc.Requantize."""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    integerize,
    model,
    only,
    op_types,
    output_names,
    qdq,
    weights,
)

from qcompiler.passes.integerize_add import IntegerizeAddPass

ADD_RELU = """
g (float[2,3,4,4] a, float[2,3,4,4] b) => (float[2,3,4,4] y) {
  [add] s = Add (a, b)
  [relu] y = Relu (s)
}
"""
VARIANTS = {
    "add-relu": ADD_RELU,
    "sub": "g (float[2,8] a, float[2,8] b) => (float[2,8] y) { [sub] y = Sub (a, b) }",
    "sum-of-three": "g (float[2,8] a, float[2,8] b, float[2,8] c) => (float[2,8] y) { [sum] y = Sum (a, b, c) }",
    "broadcast": "g (float[2,3,4,4] a, float[2,3,1,1] b) => (float[2,3,4,4] y) { [add] y = Add (a, b) }",
}


def test_golden_weighted_sum_with_relu_clamp():
    m = qdq(ADD_RELU)
    assert IntegerizeAddPass()(m).modified is True
    counts = Counter(op_types(m))
    assert counts == {
        "QuantizeLinear": 2,
        "Cast": 2,
        "Sub": 2,
        "Mul": 2,
        "Add": 1,
        "qc.Requantize": 1,
        "DequantizeLinear": 1,
    }
    assert all(
        n.outputs[0].dtype == ir.DataType.INT64 for n in m.graph if n.op_type in ("Cast", "Sub", "Mul", "Add")
    )
    requantize = only(m, "Requantize")
    assert const(requantize.inputs[1]) == 1  # the branch multipliers share one shift
    assert const(requantize.inputs[4]) == const(m.graph.outputs[0].producer().inputs[2])  # Relu as clamp
    assert requantize.outputs[0].dtype == ir.DataType.UINT8
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeAddPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True
    assert not any(
        n.op_type in ("Add", "Sub", "Sum") and n.outputs[0].dtype == ir.DataType.FLOAT for n in m.graph
    )


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_numerical_constant_operand_is_added_on_the_output_grid(dtype):
    """A position embedding: ``x + k`` with a float constant ``k`` of the activation's shape."""
    graph = "g (float[2,8] a) => (float[2,8] y) { [add] y = Add (a, k) }"
    result, m = integerize(IntegerizeAddPass(), qdq(graph, dtype=dtype, k=weights(2, 8, seed=1)), steps=1,
                           equal_fraction=0.9)
    assert result.modified is True and Counter(op_types(m))["Add"] == 1  # the int64 offset


def test_no_match_on_a_float_model():
    assert_no_match(IntegerizeAddPass(), model(ADD_RELU))
