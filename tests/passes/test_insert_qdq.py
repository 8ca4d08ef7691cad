"""InsertQDQPass: a QuantizeLinear/DequantizeLinear pair on every activation point, consumers read the DQ."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    model,
    nodes_of,
    op_types,
    output_names,
    random_feeds,
    run,
    weights,
)

from qcompiler.passes.insert_qdq import InsertQDQPass
from qcompiler.quant_plan import QParams, activation_points

CONV_RELU_SIGMOID = """
g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
  [conv] c = Conv <kernel_shape = [1,1]> (x, w, b)
  [relu] r = Relu (c)
  [sigmoid] y = Sigmoid (r)
}
"""
POOL = {"w": weights(2, 3, 1, 1, seed=1), "b": weights(2, seed=2)}
PARAMS = {
    "x": QParams(0.03, 128, "uint8"),
    "r": QParams(0.02, 0, "uint8"),
    "y": QParams(1 / 255, 0, "uint8"),
}


def test_golden_pairs_on_activation_points_only():
    m = model(CONV_RELU_SIGMOID, **POOL)
    assert [v.name for v in activation_points(m.graph)] == ["x", "r", "y"]  # the Conv output is fused
    assert InsertQDQPass(PARAMS)(m).modified is True
    assert op_types(m) == [
        "QuantizeLinear",
        "DequantizeLinear",
        "Conv",
        "Relu",
        "QuantizeLinear",
        "DequantizeLinear",
        "Sigmoid",
        "QuantizeLinear",
        "DequantizeLinear",
    ]
    assert output_names(m) == ["y"] and m.graph.outputs[0].producer().op_type == "DequantizeLinear"
    conv, relu, sigmoid = (nodes_of(m, op)[0] for op in ("Conv", "Relu", "Sigmoid"))
    assert conv.inputs[0].producer().op_type == "DequantizeLinear"
    assert sigmoid.inputs[0].producer().op_type == "DequantizeLinear"
    assert [u.op_type for u in relu.outputs[0].consumers()] == ["QuantizeLinear"]
    assert [u.op_type for u in conv.outputs[0].consumers()] == ["Relu"]
    for quant in nodes_of(m, "QuantizeLinear"):
        name = quant.inputs[0].name.removesuffix("_float")
        assert quant.outputs[0].dtype == ir.DataType.UINT8
        assert const(quant.inputs[1]).dtype == np.float32
        assert float(const(quant.inputs[1])) == pytest.approx(PARAMS[name].scale)
        assert int(const(quant.inputs[2])) == PARAMS[name].zero_point
        assert const(quant.inputs[2]).dtype == np.uint8


def test_numerical_fake_quantization_is_within_steps_of_float():
    m = model(CONV_RELU_SIGMOID, **POOL)
    feeds = random_feeds(m)
    expected = run(m, feeds)["y"]
    InsertQDQPass(PARAMS)(m)
    actual = run(m, feeds)["y"]
    # |x| < 3.8 stays in range; each rounding adds at most half a step of its point, Sigmoid has slope <= 1/4
    bound = (PARAMS["x"].scale * np.abs(POOL["w"]).sum(axis=(1, 2, 3)).max() + PARAMS["r"].scale) / 8
    mask = np.all(np.abs(feeds["x"]) < 3.8, axis=1, keepdims=True).repeat(2, axis=1)
    assert np.max(np.abs(actual - expected)[mask]) <= bound + PARAMS["y"].scale / 2 + 1e-6
    assert not np.array_equal(actual, expected)


def test_no_match_without_float_activations():
    m = model("g (int32[4] a, int32[4] b) => (int32[4] y) { [add] y = Add (a, b) }")
    assert_no_match(InsertQDQPass({}), m)


def test_missing_parameters_name_the_activation():
    with pytest.raises(KeyError, match="'r'"):
        InsertQDQPass({"x": PARAMS["x"], "y": PARAMS["y"]})(model(CONV_RELU_SIGMOID, **POOL))
