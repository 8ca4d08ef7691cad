"""IntegerizeMulPass: the product of two activations as an int32 product and one qc.Requantize."""

from __future__ import annotations

from collections import Counter

import numpy as np
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

from qcompiler.passes.integerize_mul import IntegerizeMulPass

MUL = "g (float[2,8] a, float[2,8] b) => (float[2,8] y) { [mul] y = Mul (a, b) }"
VARIANTS = {
    "mul": MUL,
    "mul-relu": "g (float[2,8] a, float[2,8] b) => (float[2,8] y) { [mul] m = Mul (a, b) \n [relu] y = Relu (m) }",
    "squeeze-excite": """
        g (float[2,3,4,4] x, float[2,3,1,1] z) => (float[2,3,4,4] y) {
          [gate] s = Sigmoid (z)
          [mul] y = Mul (x, s)
        }""",
}


def test_golden_centered_int32_product():
    m = qdq(MUL)
    assert IntegerizeMulPass()(m).modified is True
    assert Counter(op_types(m)) == {
        "QuantizeLinear": 2,
        "Cast": 2,
        "Sub": 2,
        "Mul": 1,
        "qc.Requantize": 1,
        "DequantizeLinear": 1,
    }
    product = only(m, "Mul")
    assert product.outputs[0].dtype == ir.DataType.INT32
    assert [v.producer().op_type for v in product.inputs] == ["Sub", "Sub"]  # both operands centered
    requantize = only(m, "Requantize")
    assert requantize.inputs[0] is product.outputs[0] and const(requantize.inputs[1]).size == 1
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeMulPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True
    assert not any(n.op_type == "Mul" and n.outputs[0].dtype == ir.DataType.FLOAT for n in m.graph)


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq("g (float[2,8] a) => (float[2,8] y) { [mul] y = Mul (a, k) }", k=weights(2, 8, seed=1)),
        lambda: qdq(
            "g (float[2,8] x) => (float[2,8] y) { [sigmoid] s = Sigmoid (x) \n [swish] y = Mul (x, s) }"
        ),
        lambda: model(MUL),
    ],
    ids=["constant-operand", "swish-left-to-lookup-table", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeMulPass(), build())


def test_scalar_constant_multiply_becomes_one_requantize():
    graph = "g (float[2,3,4] x) => (float[2,3,4] y) { [scale] y = Mul (x, c) }"
    m = qdq(graph, c=np.array(-0.25, np.float32))
    assert IntegerizeMulPass()(m).modified is True
    assert "Mul" not in op_types(m) and "qc.Requantize" in op_types(m)
    integerize(IntegerizeMulPass(), qdq(graph, c=np.array(-0.25, np.float32)), steps=1, equal_fraction=0.9)
