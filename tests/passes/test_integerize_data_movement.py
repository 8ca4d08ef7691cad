"""IntegerizeDataMovementPass: range-preserving ops run on the integer tensor, bit-exact with the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, const, integerize, model, only, op_types, output_names, qdq

from qcompiler.passes.integerize_data_movement import IntegerizeDataMovementPass
from qcompiler.qmath import quantize
from qcompiler.quant_plan import QParams

MAXPOOL = "g (float[1,3,8,8] x) => (float[1,3,4,4] y) { [pool] y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (x) }"
PAD = "g (float[1,3,8,8] x) => (float[1,3,10,10] y) { [pad] y = Pad (x, pads, half) }"
RESIZE = (
    'g (float[1,3,8,8] x) => (float[1,3,16,16] y) { [resize] y = Resize <mode = "nearest"> (x, , scales) }'
)
POOL = {
    "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
    "half": np.array(0.5, np.float32),
    "scales": np.array([1, 1, 2, 2], np.float32),
    "shape": np.array([1, 3, 64], np.int64),
    "starts": np.array([1, 2], np.int64),
    "ends": np.array([3, 7], np.int64),
    "axes": np.array([1, 3], np.int64),
    "axis0": np.array([0], np.int64),
}
VARIANTS = {
    "maxpool": MAXPOOL,
    "maxpool-padded": """g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
                           [pool] y = MaxPool <kernel_shape = [3,3], pads = [1,1,1,1]> (x) }""",
    "reshape": "g (float[1,3,8,8] x) => (float[1,3,64] y) { [reshape] y = Reshape (x, shape) }",
    "flatten": "g (float[1,3,8,8] x) => (float[1,192] y) { [flatten] y = Flatten (x) }",
    "transpose": "g (float[1,3,8,8] x) => (float[1,8,8,3] y) { [t] y = Transpose <perm = [0,2,3,1]> (x) }",
    "slice": "g (float[1,3,8,8] x) => (float[1,2,8,5] y) { [slice] y = Slice (x, starts, ends, axes) }",
    "squeeze": "g (float[1,3,8,8] x) => (float[3,8,8] y) { [squeeze] y = Squeeze (x, axis0) }",
    "unsqueeze": "g (float[3,8,8] x) => (float[1,3,8,8] y) { [unsqueeze] y = Unsqueeze (x, axis0) }",
    "pad": PAD,
    "resize-nearest": RESIZE,
}


def test_golden_maxpool_on_integers():
    m = qdq(MAXPOOL)
    assert IntegerizeDataMovementPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "MaxPool", "DequantizeLinear"]
    pool = only(m, "MaxPool")
    assert {name: list(a.value) for name, a in pool.attributes.items()} == {
        "kernel_shape": [2, 2],
        "strides": [2, 2],
    }
    assert pool.inputs[0].dtype == pool.outputs[0].dtype == ir.DataType.UINT8
    assert pool.outputs[0].name == "y_q" and output_names(m) == ["y"]


def test_golden_pad_value_is_quantized():
    m = qdq(PAD, **POOL)
    x_quant = m.graph.inputs[0].consumers()[0]
    assert IntegerizeDataMovementPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    pad = only(m, "Pad")
    expected = quantize(np.array(0.5), const(x_quant.inputs[1]), const(x_quant.inputs[2]), "uint8")
    assert const(pad.inputs[2]) == expected and const(pad.inputs[2]).dtype == np.uint8
    np.testing.assert_array_equal(const(pad.inputs[1]), POOL["pads"])


def test_golden_resize_gets_integer_sizes():
    m = qdq(RESIZE, **POOL)
    assert IntegerizeDataMovementPass()(m).modified is True
    resize = only(m, "Resize")
    assert resize.inputs[1] is None and resize.inputs[2] is None
    np.testing.assert_array_equal(const(resize.inputs[3]), [1, 3, 16, 16])


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_bit_exact_against_qdq(graph, dtype):
    result, m = integerize(IntegerizeDataMovementPass(), qdq(graph, dtype=dtype, **POOL), steps=0)
    assert result.modified is True
    assert len(op_types(m)) == 3


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq(MAXPOOL, overrides={"y": QParams(0.5, 3, "uint8")}),  # parameters differ from the input's
        lambda: qdq(RESIZE.replace('"nearest"', '"linear"'), **POOL),
        lambda: model(MAXPOOL),
    ],
    ids=["parameters-differ", "resize-linear", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeDataMovementPass(), build())
