"""BatchNormToAffinePass: a BatchNorm that did not fold into a Conv becomes a per-channel Mul and Add."""

from __future__ import annotations

import numpy as np
import pytest
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    model,
    nodes_of,
    op_types,
    output_names,
    positive,
    weights,
)

from qcompiler.passes.batchnorm_to_affine import BatchNormToAffinePass

BN = {"scale": positive(3, seed=3), "shift": weights(3, seed=4), "mean": weights(3, seed=5), "var": positive(3, seed=6)}
GRAPHS = {
    "preactivation": """
        g (float[1,3,5,5] x) => (float[1,3,5,5] y) {
          [relu] r = Relu (x)
          [bn] y = BatchNormalization (r, scale, shift, mean, var)
        }""",
    "after-linear": """
        g (float[2,4] x) => (float[2,3] y) {
          [fc] h = MatMul (x, w)
          [bn] y = BatchNormalization (h, scale, shift, mean, var)
        }""",
}
POOL = {"w": weights(4, 3, seed=7), **BN}


def test_golden_batchnorm_becomes_mul_add_keeping_output_name():
    m = model(GRAPHS["preactivation"], **POOL)
    assert BatchNormToAffinePass()(m).modified is True
    assert op_types(m) == ["Relu", "Mul", "Add"]
    (mul,), (add,) = nodes_of(m, "Mul"), nodes_of(m, "Add")
    k = BN["scale"] / np.sqrt(BN["var"].astype(np.float64) + 1e-5)
    np.testing.assert_allclose(const(mul.inputs[1]).reshape(-1), k, rtol=1e-6)
    assert const(mul.inputs[1]).shape == (3, 1, 1)
    np.testing.assert_allclose(const(add.inputs[1]).reshape(-1), BN["shift"] - BN["mean"] * k, rtol=1e-5, atol=1e-7)
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("name", GRAPHS)
def test_numerical_equivalence(name):
    assert_pass_preserves_function(BatchNormToAffinePass(), model(GRAPHS[name], **POOL), atol=1e-5)


def test_no_match_on_batchnorm_with_input_parameters():
    graph = """
        g (float[1,3,5,5] x, float[3] scale) => (float[1,3,5,5] y) {
          [bn] y = BatchNormalization (x, scale, shift, mean, var)
        }"""
    assert_no_match(BatchNormToAffinePass(), model(graph, **POOL))
