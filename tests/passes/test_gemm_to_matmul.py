"""GemmToMatMulPass: Gemm with constant B/C becomes MatMul(A, alpha*B') + beta*C."""

from __future__ import annotations

import numpy as np
import pytest
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    model,
    only,
    op_types,
    output_names,
    weights,
)

from qcompiler.passes.gemm_to_matmul import GemmToMatMulPass

GEMM = """
g (float[2,6] x) => (float[2,4] y) {
  [fc] y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, b)
}
"""
W, B = weights(4, 6, seed=1), weights(4, seed=2)


def test_golden_matmul_plus_bias():
    m = model(GEMM, w=W, b=B)
    assert GemmToMatMulPass()(m).modified is True
    assert op_types(m) == ["MatMul", "Add"]
    np.testing.assert_allclose(const(only(m, "MatMul").inputs[1]), 0.5 * W.T, rtol=1e-6)
    np.testing.assert_allclose(const(only(m, "Add").inputs[1]), 2.0 * B, rtol=1e-6)
    assert only(m, "Add").inputs[0] is only(m, "MatMul").outputs[0]
    assert output_names(m) == ["y"]


def test_golden_without_bias():
    m = model("g (float[2,6] x) => (float[2,4] y) { [fc] y = Gemm (x, w) }", w=W.T.copy())
    assert GemmToMatMulPass()(m).modified is True
    assert op_types(m) == ["MatMul"]
    assert output_names(m) == ["y"]


def test_numerical_equivalence():
    assert_pass_preserves_function(GemmToMatMulPass(), model(GEMM, w=W, b=B))


@pytest.mark.parametrize(
    "graph",
    [
        "g (float[6,2] x) => (float[2,4] y) { [fc] y = Gemm <transA = 1, transB = 1> (x, w, b) }",
        "g (float[2,6] x, float[4,6] w) => (float[2,4] y) { [fc] y = Gemm <transB = 1> (x, w, b) }",
    ],
    ids=["transA", "activation-weight"],
)
def test_no_match(graph):
    assert_no_match(GemmToMatMulPass(), model(graph, w=W, b=B))


def test_no_match_with_activation_bias_leaves_model_unchanged():
    graph = "g (float[2,6] x, float[4] b) => (float[2,4] y) { [fc] y = Gemm <transB = 1> (x, w, b) }"
    assert_no_match(GemmToMatMulPass(), model(graph, w=W))


def test_unnamed_gemms_stay_runnable():
    m = model(
        """g (float[2,6] x) => (float[2,4] y) {
             h = Gemm <transB = 1> (x, w6, b6)
             y = Gemm <transB = 1> (h, w, b)
           }""",
        w6=weights(6, 6, seed=3),
        b6=weights(6, seed=4),
        w=W,
        b=B,
    )
    assert_pass_preserves_function(GemmToMatMulPass(), m)
