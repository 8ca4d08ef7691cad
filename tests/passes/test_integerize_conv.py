"""IntegerizeConvPass: DQ -> Conv -> [Relu|Clip] -> Q becomes Pad, ConvInteger, Add, qc.Requantize."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    integerize,
    model,
    nodes_of,
    only,
    op_types,
    output_names,
    qdq,
    weights,
)

from qcompiler.errors import OverflowRiskError
from qcompiler.passes.integerize_conv import IntegerizeConvPass

CONV = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)
  [relu] y = Relu (c)
}
"""
POOL = {
    "w": weights(4, 3, 3, 3, seed=1),
    "b": weights(4, seed=2),
    "dw": weights(3, 1, 3, 3, seed=3),
    "w1d": weights(4, 3, 3, seed=4),
    "w2x2": weights(4, 3, 2, 2, seed=5),
    "six": np.array(6.0, np.float32),
    "zero": np.array(0.0, np.float32),
}
VARIANTS = {
    "relu": CONV,
    "no-activation": CONV.replace("c = Conv", "y = Conv").replace("[relu] y = Relu (c)", ""),
    "clip-0-6": CONV.replace("Relu (c)", "Clip (c, zero, six)"),
    "strided-no-bias": CONV.replace("pads = [1,1,1,1]> (x, w, b)", "strides = [2,2]> (x, w)").replace(
        "float[1,4,8,8] y", "float[1,4,3,3] y"
    ),
    "depthwise": CONV.replace("(x, w, b)", "(x, dw)")
    .replace("kernel_shape", "group = 3, kernel_shape")
    .replace("float[1,4,8,8] y", "float[1,3,8,8] y"),
    "dilated-strided": CONV.replace(
        "pads = [1,1,1,1]", "pads = [2,2,2,2], dilations = [2,2], strides = [2,2]"
    ).replace("float[1,4,8,8] y", "float[1,4,4,4] y"),
    "asymmetric-pads": CONV.replace(
        "kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)",
        "kernel_shape = [2,2], pads = [0,0,1,1]> (x, w2x2, b)",
    ),
    "1d": """g (float[1,3,16] x) => (float[1,4,16] y) { [conv] y = Conv <kernel_shape = [3], pads = [1,1]> (x, w1d, b) }""",
}


def test_golden_integer_conv_with_fused_relu():
    m = qdq(CONV, **POOL)
    x_params = nodes_of(m, "QuantizeLinear")[0]
    assert IntegerizeConvPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "Pad", "ConvInteger", "Add", "qc.Requantize", "DequantizeLinear"]
    pad, conv, requantize = only(m, "Pad"), only(m, "ConvInteger"), only(m, "Requantize")
    assert const(pad.inputs[2]) == const(x_params.inputs[2])  # padded with the input zero point
    np.testing.assert_array_equal(const(pad.inputs[1]), [0, 0, 1, 1, 0, 0, 1, 1])
    assert "pads" not in conv.attributes and conv.inputs[1].const_value.dtype == ir.DataType.INT8
    assert conv.outputs[0].dtype == ir.DataType.INT32
    y_zero_point = const(m.graph.outputs[0].producer().inputs[2])
    assert const(requantize.inputs[4]) == y_zero_point  # the fused Relu is the lower clamp
    assert const(requantize.inputs[1]).shape == (4, 1, 1)  # per-output-channel multiplier
    assert requantize.outputs[0].dtype == ir.DataType.UINT8 and requantize.outputs[0].name == "y_q"
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeConvPass(), qdq(graph, dtype=dtype, **POOL), steps=1, equal_fraction=0.9)
    assert result.modified is True
    assert "Conv" not in op_types(m)


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq(CONV.replace("pads = [1,1,1,1]", 'auto_pad = "SAME_UPPER"'), **POOL),
        lambda: model(CONV, **POOL),
    ],
    ids=["auto-pad", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeConvPass(), build())


def test_accumulator_that_could_overflow_int32_is_refused():
    channels = 70_000  # 255 * 127 * 70000 > 2**31
    graph = f"""g (float[1,{channels},1,1] x) => (float[1,1,1,1] y) {{
                  [wide] y = Conv <kernel_shape = [1,1]> (x, ones) }}"""
    m = qdq(graph, ones=np.ones((1, channels, 1, 1), np.float32))
    with pytest.raises(OverflowRiskError, match=r"wide \(Conv\).*int32 accumulator"):
        IntegerizeConvPass()(m)
