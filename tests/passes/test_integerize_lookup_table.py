"""IntegerizeLookupTablePass: elementwise functions of one 8-bit activation as qc.LookupTable, bit-exact."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    dequantize,
    every_code,
    integerize,
    model,
    only,
    op_types,
    output_names,
    qdq,
)

from qcompiler.passes.integerize_lookup_table import IntegerizeLookupTablePass
from qcompiler.qmath import quantize
from qcompiler.quant_plan import QParams

UNARY = "g (float[1,3,16,16] x) => (float[1,3,16,16] y) {{ [f] y = {op} }}"
FUNCTIONS = {
    "sigmoid": "Sigmoid (x)",
    "tanh": "Tanh (x)",
    "relu": "Relu (x)",
    "clip": "Clip (x, lo, hi)",
    "leaky-relu": "LeakyRelu <alpha = 0.1> (x)",
    "hard-sigmoid": "HardSigmoid (x)",
    "hard-swish": "HardSwish (x)",
    "elu": "Elu (x)",
    "selu": "Selu (x)",
    "softplus": "Softplus (x)",
    "softsign": "Softsign (x)",
    "gelu": "Gelu (x)",
    "gelu-tanh": 'Gelu <approximate = "tanh"> (x)',
    "mish": "Mish (x)",
    "celu": "Celu <alpha = 2.0> (x)",
    "thresholded-relu": "ThresholdedRelu <alpha = 0.5> (x)",
    "prelu-scalar": "PRelu (x, slope1)",
    "prelu-per-channel": "PRelu (x, slopes)",
}
POOL = {
    "lo": np.array(-1.0, np.float32),
    "hi": np.array(1.5, np.float32),
    "slope1": np.array([0.25], np.float32),
    "slopes": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1),
}
SWISH = "g (float[2,256] x) => (float[2,256] y) { [sigmoid] s = Sigmoid (x) \n [swish] y = Mul (x, s) }"


def test_golden_sigmoid_table_over_every_input_code():
    m = qdq(UNARY.format(op="Sigmoid (x)"))
    x_quant = m.graph.inputs[0].consumers()[0]
    assert IntegerizeLookupTablePass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "qc.LookupTable", "DequantizeLinear"]
    lookup = only(m, "LookupTable")
    table = const(lookup.inputs[1])
    assert table.dtype == np.uint8 and table.shape == (256,)
    assert const(lookup.inputs[2]) == 0  # uint8 codes index the table directly
    x_real = dequantize(np.arange(256), const(x_quant.inputs[1]), const(x_quant.inputs[2]))
    y_dq = m.graph.outputs[0].producer()
    expected = quantize(
        1 / (1 + np.exp(-x_real.astype(np.float64))), const(y_dq.inputs[1]), const(y_dq.inputs[2]), "uint8"
    )
    np.testing.assert_array_equal(table, expected)
    assert lookup.outputs[0].dtype == ir.DataType.UINT8 and output_names(m) == ["y"]


def test_golden_swish_is_one_table():
    m = qdq(SWISH)
    assert IntegerizeLookupTablePass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "qc.LookupTable", "DequantizeLinear"]


def test_golden_per_channel_prelu_offsets_select_one_table_per_channel():
    m = qdq(UNARY.format(op=FUNCTIONS["prelu-per-channel"]), dtype="int8", **POOL)
    assert IntegerizeLookupTablePass()(m).modified is True
    lookup = only(m, "LookupTable")
    assert const(lookup.inputs[1]).shape == (3 * 256,) and const(lookup.inputs[1]).dtype == np.int8
    np.testing.assert_array_equal(const(lookup.inputs[2]).reshape(-1), [128, 128 + 256, 128 + 512])


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("op", FUNCTIONS.values(), ids=FUNCTIONS.keys())
def test_numerical_bit_exact_against_qdq_on_every_input_code(op, dtype):
    qdq_model = qdq(UNARY.format(op=op), dtype=dtype, **POOL)
    result, m = integerize(IntegerizeLookupTablePass(), qdq_model, steps=0, feeds=every_code(qdq_model))
    assert result.modified is True
    assert op_types(m) == ["QuantizeLinear", "qc.LookupTable", "DequantizeLinear"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_numerical_swish_bit_exact_against_qdq_on_every_input_code(dtype):
    qdq_model = qdq(SWISH, dtype=dtype)
    _, m = integerize(IntegerizeLookupTablePass(), qdq_model, steps=0, feeds=every_code(qdq_model))
    assert "Mul" not in op_types(m)


def int16_input() -> ir.Model:
    """``x`` quantized to int16 (wider than a table can index), then Sigmoid quantized to uint8."""
    return model(
        """
        g (float[2,8] x) => (float[2,8] y) {
          [xq] x_q = QuantizeLinear (x, sx, zx)
          [xdq] x_dq = DequantizeLinear (x_q, sx, zx)
          [sigmoid] s = Sigmoid (x_dq)
          [sq] s_q = QuantizeLinear (s, sy, zy)
          [sdq] y = DequantizeLinear (s_q, sy, zy)
        }""",
        sx=np.array(1e-3, np.float32),
        zx=np.array(0, np.int16),
        sy=np.array(1 / 255, np.float32),
        zy=np.array(0, np.uint8),
    )


@pytest.mark.parametrize(
    "build",
    [int16_input, lambda: model(UNARY.format(op="Sigmoid (x)")), lambda: qdq(UNARY.format(op="Cos (x)"))],
    ids=["int16-input", "not-quantized", "no-table-for-op"],
)
def test_no_match(build):
    assert_no_match(IntegerizeLookupTablePass(), build())


def test_selu_default_constants_are_exact():
    # parameters where the truncated constants move a table entry across a rounding boundary
    overrides = {
        "x": QParams(0.030144449323415756, 69, "uint8"),
        "y": QParams(0.025025412440299988, 166, "uint8"),
    }
    qdq_model = qdq(UNARY.format(op="Selu (x)"), overrides=overrides)
    integerize(IntegerizeLookupTablePass(), qdq_model, steps=0, feeds=every_code(qdq_model))


def test_prelu_slope_along_the_last_axis():
    slope = np.array([0.1, 0.5, -0.3, 0.9], np.float32)
    graph = "g (float[1,4,8,4] x) => (float[1,4,8,4] y) { [prelu] y = PRelu (x, slope) }"
    integerize(IntegerizeLookupTablePass(), qdq(graph, slope=slope), steps=0)
