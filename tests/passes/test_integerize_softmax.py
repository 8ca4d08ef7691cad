"""IntegerizeSoftmaxPass: last-axis Softmax as an exponential table, an integer sum and one rounded division."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, const, integerize, model, only, op_types, output_names, qdq

from qcompiler.passes.integerize_softmax import EXP_BITS, IntegerizeSoftmaxPass
from qcompiler.quant_plan import QParams

SOFTMAX = "g (float[4,10] x) => (float[4,10] y) { [softmax] y = Softmax (x) }"
VARIANTS = {
    "default-axis": SOFTMAX,
    "explicit-last-axis": SOFTMAX.replace("Softmax (x)", "Softmax <axis = 1> (x)"),
    "rank-3": "g (float[2,3,16] x) => (float[2,3,16] y) { [softmax] y = Softmax <axis = -1> (x) }",
}


def test_golden_integer_softmax():
    m = qdq(SOFTMAX)
    x_scale = float(const(m.graph.inputs[0].consumers()[0].inputs[1]))
    assert IntegerizeSoftmaxPass()(m).modified is True
    assert Counter(op_types(m)) == {
        "QuantizeLinear": 1,
        "ReduceMax": 1,
        "Cast": 3,
        "Sub": 1,
        "qc.LookupTable": 1,
        "ReduceSum": 1,
        "Mul": 1,
        "Div": 2,
        "Add": 2,
        "DequantizeLinear": 1,
    }
    table = const(only(m, "LookupTable").inputs[1])
    assert table.dtype == np.int32 and table.shape == (256,) and table[0] == 2**EXP_BITS
    np.testing.assert_array_equal(table, np.rint(2.0**EXP_BITS * np.exp(-x_scale * np.arange(256))))
    assert all(n.outputs[0].dtype != ir.DataType.FLOAT for n in m.graph if n.op_type != "DequantizeLinear")
    assert m.graph.outputs[0].producer().inputs[0].dtype == ir.DataType.UINT8
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeSoftmaxPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True and "Softmax" not in op_types(m)


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq(SOFTMAX, overrides={"y": QParams(0.01, 0, "uint8")}),  # not the fixed [0, 1] grid
        lambda: model(SOFTMAX),
    ],
    ids=["output-not-on-unit-grid", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeSoftmaxPass(), build())


def test_no_match_on_softmax_over_a_leading_axis():
    assert_no_match(IntegerizeSoftmaxPass(), qdq(SOFTMAX.replace("Softmax (x)", "Softmax <axis = 0> (x)")))
