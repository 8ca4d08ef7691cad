"""IntegerizeActivationMatMulPass: MatMul of two activations becomes a centered int32 MatMul + Requantize."""

from __future__ import annotations

import numpy as np
from passes_testkit import assert_no_match, integerize, op_types, qdq

from qcompiler.passes.integerize_activation_matmul import IntegerizeActivationMatMulPass

ATTENTION_SCORES = """
g (float[1,2,4,8] q, float[1,2,8,4] k) => (float[1,2,4,4] y) {
  [scores] y = MatMul (q, k)
}
"""


def test_golden_two_activations_become_int32_matmul_and_requantize():
    m = qdq(ATTENTION_SCORES)
    assert IntegerizeActivationMatMulPass()(m).modified is True
    ops = op_types(m)
    assert "MatMul" in ops and "qc.Requantize" in ops
    matmul = next(n for n in m.graph if n.op_type == "MatMul")
    assert all(v.dtype.name == "INT32" for v in [*matmul.inputs, *matmul.outputs])


def test_numerical_matches_the_qdq_model_within_one_step():
    integerize(IntegerizeActivationMatMulPass(), qdq(ATTENTION_SCORES), steps=1, equal_fraction=0.9)


def test_no_match_on_constant_weight():
    graph = "g (float[2,8] x) => (float[2,4] y) { [fc] y = MatMul (x, w) }"
    assert_no_match(IntegerizeActivationMatMulPass(), qdq(graph, w=np.ones((8, 4), np.float32)))
