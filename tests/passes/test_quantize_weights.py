"""QuantizeWeightsPass: int8 per-channel weights and int32 biases behind DequantizeLinear nodes."""

from __future__ import annotations

import numpy as np
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    copy,
    model,
    only,
    op_types,
    output_names,
    random_feeds,
    run,
    weights,
)

from qcompiler.passes.insert_qdq import InsertQDQPass
from qcompiler.passes.quantize_weights import QuantizeWeightsPass
from qcompiler.quant_plan import QParams

CONV = """
g (float[1,3,4,4] x) => (float[1,4,4,4] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)
  [relu] y = Relu (c)
}
"""
MATMUL = """
g (float[8,6] x) => (float[8,4] y) {
  [fc] m = MatMul (x, wm)
  [bias] y = Add (m, bm)
}
"""
POOL = {
    "w": weights(4, 3, 3, 3, seed=1),
    "b": weights(4, seed=2),
    "wm": weights(6, 4, seed=3),
    "bm": weights(4, seed=4),
}
S_X = 0.03
PARAMS = {"x": QParams(S_X, 128, "uint8"), "y": QParams(0.05, 100, "uint8")}


def with_qdq(graph: str, **pool):
    m = model(graph, **{**POOL, **pool})
    InsertQDQPass(PARAMS)(m)
    return m


def dequantize_input(node, index):
    """The (DequantizeLinear node, integer tensor, scale) feeding ``node.inputs[index]``."""
    dq = node.inputs[index].producer()
    assert dq is not None and dq.op_type == "DequantizeLinear"
    return dq, const(dq.inputs[0]), const(dq.inputs[1])


def test_golden_conv_weight_per_output_channel_and_int32_bias():
    m = with_qdq(CONV)
    assert QuantizeWeightsPass()(m).modified is True
    assert op_types(m).count("DequantizeLinear") == 4 and op_types(m).count("Conv") == 1
    conv = only(m, "Conv")
    dq, q, scale = dequantize_input(conv, 1)
    assert q.dtype == np.int8 and q.shape == (4, 3, 3, 3) and np.abs(q).max() == 127
    assert dq.attributes["axis"].value == 0 and scale.shape == (4,) and scale.dtype == np.float32
    np.testing.assert_allclose(scale, np.abs(POOL["w"]).max(axis=(1, 2, 3)) / 127, rtol=1e-6)
    np.testing.assert_array_equal(const(dq.inputs[2]), np.zeros(4, np.int8))
    _, q_bias, bias_scale = dequantize_input(conv, 2)
    assert q_bias.dtype == np.int32
    np.testing.assert_allclose(bias_scale, S_X * scale, rtol=1e-6)
    np.testing.assert_array_equal(q_bias, np.rint(POOL["b"] / bias_scale.astype(np.float64)))
    assert output_names(m) == ["y"]


def test_golden_matmul_weight_per_column_and_bias_of_the_add():
    m = with_qdq(MATMUL)
    assert QuantizeWeightsPass()(m).modified is True
    dq, q, scale = dequantize_input(only(m, "MatMul"), 1)
    assert q.dtype == np.int8 and q.shape == (6, 4) and dq.attributes["axis"].value == 1
    np.testing.assert_allclose(scale, np.abs(POOL["wm"]).max(axis=0) / 127, rtol=1e-6)
    _, q_bias, bias_scale = dequantize_input(only(m, "Add"), 1)  # the bias replaced in place
    assert q_bias.dtype == np.int32
    np.testing.assert_allclose(bias_scale, S_X * scale, rtol=1e-6)


@pytest.mark.parametrize("graph", [CONV, MATMUL], ids=["conv", "matmul"])
def test_numerical_within_one_output_step(graph):
    m = with_qdq(graph)
    feeds = random_feeds(m)
    expected = run(m, feeds)["y"]
    QuantizeWeightsPass()(m)
    actual = run(m, feeds)["y"]
    steps = np.abs(actual - expected) / PARAMS["y"].scale
    assert steps.max() <= 1.0 + 1e-4 and np.mean(steps < 1e-4) > 0.8


@pytest.mark.parametrize(
    "build",
    [
        lambda: with_qdq("g (float[1,3,4,4] x) => (float[1,3,4,4] y) { [relu] y = Relu (x) }"),
        lambda: _quantized(with_qdq(CONV)),  # weights already quantized: nothing left to do
    ],
    ids=["no-conv-or-matmul", "already-quantized"],
)
def test_no_match(build):
    assert_no_match(QuantizeWeightsPass(), build())


def _quantized(m):
    QuantizeWeightsPass()(m)
    return copy(m)


def test_unquantized_input_is_refused():
    with pytest.raises(ValueError, match="conv.*InsertQDQPass"):
        QuantizeWeightsPass()(model(CONV, **POOL))


def test_bias_too_large_for_int32_widens_the_weight_scale():
    m = with_qdq(CONV, b=np.array([1e9, 0.1, 0.1, 0.1], np.float32))
    QuantizeWeightsPass()(m)
    conv = only(m, "Conv")
    _, _, scale = dequantize_input(conv, 1)
    _, q_bias, _ = dequantize_input(conv, 2)
    assert np.abs(q_bias.astype(np.int64)).max() <= 2**30
    assert scale[0] > np.abs(POOL["w"][0]).max() / 127  # only the offending channel is widened
    np.testing.assert_allclose(scale[1:], np.abs(POOL["w"][1:]).max(axis=(1, 2, 3)) / 127, rtol=1e-6)


def test_unnamed_nodes_get_unique_names():
    m = model(
        """
        g (float[1,3,4,4] x) => (float[1,3,4,4] y) {
          c1 = Conv <kernel_shape = [1,1]> (x, w1)
          c2 = Conv <kernel_shape = [1,1]> (c1, w2)
          y = Relu (c2)
        }""",
        w1=weights(3, 3, 1, 1, seed=5),
        w2=weights(3, 3, 1, 1, seed=6),
    )
    InsertQDQPass({name: PARAMS["x"] for name in ("x", "c1", "y")})(m)
    QuantizeWeightsPass()(m)
    values = [v.name for n in m.graph for v in n.outputs]
    assert len(set(values)) == len(values)
    named = [n.name for n in m.graph if n.name]  # the model's own Convs are unnamed; qc's nodes are not
    assert len(set(named)) == len(named) == m.graph.num_nodes() - 3
    run(m, random_feeds(m))


def test_layer_bits_narrow_only_the_named_layer():
    m = model(CONV.replace("[relu] y = Relu (c)", "[fc] y = Conv <kernel_shape = [1,1]> (c, w2)")
              .replace("float[1,4,4,4] y", "float[1,3,4,4] y"), **POOL, w2=weights(3, 4, 1, 1, seed=7))
    InsertQDQPass({**PARAMS, "c": PARAMS["x"], "y": PARAMS["y"]})(m)
    QuantizeWeightsPass(8, {"conv": 4})(m)
    convs = {n.name: n for n in m.graph if n.op_type == "Conv"}
    _, narrow, narrow_scale = dequantize_input(convs["conv"], 1)
    _, wide, _ = dequantize_input(convs["fc"], 1)
    assert np.abs(narrow).max() == 7 and np.abs(wide).max() == 127  # [-7, 7] at 4 bits, [-127, 127] at 8
    np.testing.assert_allclose(narrow_scale, np.abs(POOL["w"]).max(axis=(1, 2, 3)) / 7, rtol=1e-6)


def test_per_tensor_weights_share_one_scale():
    m = with_qdq(MATMUL)
    QuantizeWeightsPass(per_channel=False)(m)
    _, q, scale = dequantize_input(only(m, "MatMul"), 1)
    np.testing.assert_allclose(scale, np.full(4, np.abs(POOL["wm"]).max() / 127), rtol=1e-6)
    assert np.abs(q).max() == 127 and scale.shape == (4,)  # still one entry per column, all equal
