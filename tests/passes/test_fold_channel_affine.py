"""FoldChannelAffinePass: per-channel Mul/Add/Sub/Div by constants fold into the producing Conv or MatMul."""

from __future__ import annotations

import numpy as np
import pytest
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    deadline,
    model,
    only,
    op_types,
    output_names,
    positive,
    weights,
)

from qcompiler.passes.fold_channel_affine import FoldChannelAffinePass

W, B = weights(4, 3, 3, 3, seed=1), weights(4, seed=2)
K, A = positive(1, 4, 1, 1, seed=3), weights(4, 1, 1, seed=4)

CONV_MUL_ADD = """
g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)
  [mul] m = Mul (c, k)
  [add] s = Add (a, m)
  [relu] y = Relu (s)
}
"""
CONV_DIV_SUB = """
g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
  [div] d = Div (c, k)
  [sub] y = Sub (d, a)
}
"""
MATMUL_ADD_MUL = """
g (float[2,6] x) => (float[2,4] y) {
  [fc] mm = MatMul (x, wm)
  [bias] s = Add (mm, bm)
  [mul] y = Mul (s, km)
}
"""
MATMUL_INITS = {"wm": weights(6, 4, seed=5), "bm": weights(4, seed=6), "km": positive(4, seed=7)}


def test_golden_mul_and_add_fold_into_conv():
    m = model(CONV_MUL_ADD, w=W, b=B, k=K, a=A)
    assert FoldChannelAffinePass()(m).modified is True
    assert op_types(m) == ["Conv", "Relu"]
    conv = only(m, "Conv")
    k = K.reshape(-1)
    np.testing.assert_allclose(const(conv.inputs[1]), W * k[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(const(conv.inputs[2]), B * k + A.reshape(-1), rtol=1e-6)
    assert output_names(m) == ["y"]


def test_golden_div_and_sub_fold_into_biasless_conv_keeping_output_name():
    m = model(CONV_DIV_SUB, w=W, k=K, a=A)
    assert FoldChannelAffinePass()(m).modified is True
    assert op_types(m) == ["Conv"]
    conv = only(m, "Conv")
    np.testing.assert_allclose(const(conv.inputs[1]), W / K.reshape(-1)[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(const(conv.inputs[2]), -A.reshape(-1), rtol=1e-6)
    assert output_names(m) == ["y"] and conv.outputs[0].name == "y"


@pytest.mark.parametrize(
    ("graph", "inits"), [(CONV_MUL_ADD, {"b": B}), (CONV_DIV_SUB, {})], ids=["mul-add", "div-sub"]
)
def test_numerical_equivalence(graph, inits):
    assert_pass_preserves_function(FoldChannelAffinePass(), model(graph, w=W, k=K, a=A, **inits), atol=1e-5)


def test_golden_mul_folds_into_matmul_with_bias():
    m = model(MATMUL_ADD_MUL, **MATMUL_INITS)
    with deadline(2.0):
        assert FoldChannelAffinePass()(m).modified is True
    assert op_types(m) == ["MatMul", "Add"]
    np.testing.assert_allclose(
        const(only(m, "MatMul").inputs[1]), MATMUL_INITS["wm"] * MATMUL_INITS["km"], rtol=1e-6
    )


def test_no_match_on_canonical_matmul_bias():
    m = model(MATMUL_ADD_MUL.replace("[mul] y = Mul (s, km)", "[relu] y = Relu (s)"), **MATMUL_INITS)
    with deadline(2.0):
        assert_no_match(FoldChannelAffinePass(), m)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_add_of_zero_bias_folds_without_warnings():
    m = model(CONV_MUL_ADD, w=W, b=B, k=K, a=np.zeros((4, 1, 1), np.float32))
    assert FoldChannelAffinePass()(m).modified is True


NO_MATCH = {
    "constant-not-per-channel": """
        g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
          [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
          [mul] y = Mul (c, spatial)
        }""",
    "producer-has-other-users": """
        g (float[1,3,6,6] x) => (float[1,4,6,6] y, float[1,4,6,6] c) {
          [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
          [mul] y = Mul (c, k)
        }""",
    "constant-on-the-left-of-sub": """
        g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
          [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w)
          [sub] y = Sub (a, c)
        }""",
    "not-after-conv-or-matmul": """
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
          [relu] r = Relu (x)
          [mul] y = Mul (r, k)
        }""",
}


@pytest.mark.parametrize("graph", NO_MATCH.values(), ids=NO_MATCH.keys())
def test_no_match(graph):
    pool = {"w": W, "k": K, "a": A, "spatial": positive(1, 1, 6, 1, seed=8)}
    assert_no_match(FoldChannelAffinePass(), model(graph, **pool))
