"""IntegerizeMatMulPass: DQ -> MatMul -> [Add bias] -> [Relu|Clip] -> Q becomes MatMulInteger + qc.Requantize.

The biased models are written as Gemm: a MatMul -> Add with inferred shapes does not get through the
normalize pipeline (FoldChannelAffinePass loops, see test_fold_channel_affine.py).
"""

from __future__ import annotations

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

from qcompiler.passes.integerize_matmul import IntegerizeMatMulPass

LINEAR = """
g (float[4,16] x) => (float[4,8] y) {
  [fc] s = Gemm <transB = 1> (x, w, b)
  [relu] y = Relu (s)
}
"""
POOL = {"w": weights(8, 16, seed=1), "b": weights(8, seed=2), "wk": weights(16, 8, seed=3)}
VARIANTS = {
    "bias-relu": LINEAR,
    "bias": "g (float[4,16] x) => (float[4,8] y) { [fc] y = Gemm <transB = 1> (x, w, b) }",
    "no-bias": "g (float[4,16] x) => (float[4,8] y) { [fc] y = MatMul (x, wk) }",
    "3d-input": "g (float[2,3,16] x) => (float[2,3,8] y) { [fc] m = MatMul (x, wk) \n [relu] y = Relu (m) }",
}


def test_golden_matmul_integer_with_bias_and_relu():
    m = qdq(LINEAR, **POOL)
    assert IntegerizeMatMulPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "MatMulInteger", "Add", "qc.Requantize", "DequantizeLinear"]
    matmul, add, requantize = only(m, "MatMulInteger"), only(m, "Add"), only(m, "Requantize")
    assert matmul.inputs[1].const_value.dtype == ir.DataType.INT8
    assert matmul.outputs[0].dtype == ir.DataType.INT32 and add.outputs[0].dtype == ir.DataType.INT32
    assert const(add.inputs[1]).shape == (8,) and const(add.inputs[1]).dtype == np.int32
    assert const(requantize.inputs[1]).shape == (8,)  # per-column multipliers
    assert const(requantize.inputs[4]) == const(m.graph.outputs[0].producer().inputs[2])  # Relu as clamp
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(
        IntegerizeMatMulPass(), qdq(graph, dtype=dtype, **POOL), steps=1, equal_fraction=0.9
    )
    assert result.modified is True and "MatMul" not in op_types(m)


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq("g (float[4,16] x, float[4,16,8] w) => (float[4,4,8] y) { [mm] y = MatMul (x, w) }"),
        lambda: model(LINEAR, **POOL),
    ],
    ids=["two-activations", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeMatMulPass(), build())
