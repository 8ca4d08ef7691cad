"""FoldBatchNormPass: inference BatchNormalization folds into the Conv that feeds it."""

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
    positive,
    weights,
)

from qcompiler.passes.fold_batchnorm import FoldBatchNormPass

CONV_BN = """
g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w BIAS)
  [bn] n = BatchNormalization <epsilon = 0.001> (c, scale, shift, mean, var)
  [relu] y = Relu (n)
}
"""
BN_PARAMS = {
    "scale": positive(4, seed=3),
    "shift": weights(4, seed=4),
    "mean": weights(4, seed=5),
    "var": positive(4, seed=6),
}


def conv_bn(with_bias: bool = True):
    inits = {"w": weights(4, 3, 3, 3, seed=1), **BN_PARAMS}
    if with_bias:
        inits["b"] = weights(4, seed=2)
    return model(CONV_BN.replace(" BIAS", ", b" if with_bias else ""), **inits)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_golden_bn_folded_into_conv(with_bias):
    m = conv_bn(with_bias)
    assert FoldBatchNormPass()(m).modified is True
    assert op_types(m) == ["Conv", "Relu"]
    conv = only(m, "Conv")
    assert len(conv.inputs) == 3 and only(m, "Relu").inputs[0] is conv.outputs[0]
    k = BN_PARAMS["scale"].astype(np.float64) / np.sqrt(BN_PARAMS["var"] + 0.001)
    np.testing.assert_allclose(
        const(conv.inputs[1]), weights(4, 3, 3, 3, seed=1) * k[:, None, None, None], rtol=1e-5
    )
    bias = weights(4, seed=2) if with_bias else 0.0
    np.testing.assert_allclose(
        const(conv.inputs[2]), (bias - BN_PARAMS["mean"]) * k + BN_PARAMS["shift"], rtol=1e-5
    )
    assert const(conv.inputs[1]).dtype == np.float32 and const(conv.inputs[2]).dtype == np.float32
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_numerical_equivalence(with_bias):
    assert_pass_preserves_function(FoldBatchNormPass(), conv_bn(with_bias), atol=1e-5)


def test_graph_output_name_kept_when_bn_is_last():
    m = model(
        """
        g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
          [conv] c = Conv <kernel_shape = [1,1]> (x, w4)
          [bn] y = BatchNormalization (c, scale, shift, mean, var)
        }""",
        w4=weights(4, 3, 1, 1),
        **BN_PARAMS,
    )
    assert FoldBatchNormPass()(m).modified is True
    assert op_types(m) == ["Conv"]
    assert output_names(m) == ["y"]


NO_MATCH = {
    "conv-output-has-other-users": """
        g (float[1,3,6,6] x) => (float[1,4,6,6] y, float[1,4,6,6] c) {
          [conv] c = Conv <kernel_shape = [1,1]> (x, w4)
          [bn] y = BatchNormalization (c, scale, shift, mean, var)
        }""",
    "not-after-conv": """
        g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
          [relu] r = Relu (x)
          [bn] y = BatchNormalization (r, scale, shift, mean, var)
        }""",
    "non-constant-bn-parameter": """
        g (float[1,3,6,6] x, float[4] scale) => (float[1,4,6,6] y) {
          [conv] c = Conv <kernel_shape = [1,1]> (x, w4)
          [bn] y = BatchNormalization (c, scale, shift, mean, var)
        }""",
}


@pytest.mark.parametrize("graph", NO_MATCH.values(), ids=NO_MATCH.keys())
def test_no_match(graph):
    assert_no_match(FoldBatchNormPass(), model(graph, w4=weights(4, 3, 1, 1), **BN_PARAMS))
