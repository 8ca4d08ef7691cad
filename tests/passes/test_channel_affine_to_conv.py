"""ChannelAffineToConvPass: standalone per-channel affine ops become depthwise 1x1 Convs."""

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

from qcompiler.passes.channel_affine_to_conv import ChannelAffineToConvPass

MEAN, STD = weights(1, 3, 1, 1, seed=1), positive(3, 1, 1, seed=2)

NORMALIZE_INPUT = """
g (float[1,3,5,5] x) => (float[1,3,5,5] y) {
  [sub] centered = Sub (x, mean)
  [div] scaled = Div (centered, std)
  [relu] y = Relu (scaled)
}
"""


def normalize_input():
    return model(NORMALIZE_INPUT, mean=MEAN, std=STD)


def test_golden_input_normalization_becomes_depthwise_convs():
    m = normalize_input()
    assert ChannelAffineToConvPass()(m).modified is True
    assert op_types(m) == ["Conv", "Conv", "Relu"]
    sub, div = nodes_of(m, "Conv")
    for conv in (sub, div):
        assert conv.attributes["group"].value == 3 and list(conv.attributes["kernel_shape"].value) == [1, 1]
        assert const(conv.inputs[1]).shape == (3, 1, 1, 1) and const(conv.inputs[1]).dtype == np.float32
    np.testing.assert_allclose(const(sub.inputs[1]).reshape(-1), 1.0)
    np.testing.assert_allclose(const(sub.inputs[2]), -MEAN.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(const(div.inputs[1]).reshape(-1), 1.0 / STD.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(const(div.inputs[2]), 0.0)
    assert div.inputs[0] is sub.outputs[0]
    assert output_names(m) == ["y"]


def test_numerical_equivalence():
    assert_pass_preserves_function(ChannelAffineToConvPass(), normalize_input(), atol=1e-5)


NO_MATCH = {
    "rank-2-activation": "g (float[2,3] x) => (float[2,3] y) { [mul] y = Mul (x, k) }",
    "constant-not-per-channel": "g (float[1,3,5,5] x) => (float[1,3,5,5] y) { [mul] y = Mul (x, spatial) }",
    "two-activations": "g (float[1,3,5,5] x, float[1,3,5,5] z) => (float[1,3,5,5] y) { [mul] y = Mul (x, z) }",
    "constant-on-the-left-of-div": "g (float[1,3,5,5] x) => (float[1,3,5,5] y) { [div] y = Div (std, x) }",
}


@pytest.mark.parametrize("graph", NO_MATCH.values(), ids=NO_MATCH.keys())
def test_no_match(graph):
    pool = {"k": positive(3, seed=7), "spatial": positive(1, 1, 5, 5, seed=8), "std": STD}
    assert_no_match(ChannelAffineToConvPass(), model(graph, **pool))
