"""IntegerizeConcatPass: inputs brought to the output's parameters (qc.Requantize where they differ), then Concat."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, integerize, model, only, op_types, output_names, qdq, weights

from qcompiler.passes.integerize_concat import IntegerizeConcatPass
from qcompiler.quant_plan import QParams

CONCAT = """
g (float[1,2,4,4] a, float[1,3,4,4] b) => (float[1,5,4,4] y) {
  [cat] y = Concat <axis = 1> (a, b)
}
"""
SHARED = QParams(0.03, 128, "uint8")
VARIANTS = {
    "channels": CONCAT,
    "last-axis-three-inputs": """
        g (float[2,3] a, float[2,5] b, float[2,1] c) => (float[2,9] y) { [cat] y = Concat <axis = -1> (a, b, c) }""",
}


def test_golden_input_with_output_parameters_is_not_requantized():
    m = qdq(CONCAT, overrides={"a": SHARED, "y": SHARED})
    assert IntegerizeConcatPass()(m).modified is True
    assert sorted(op_types(m)) == sorted(
        ["QuantizeLinear", "QuantizeLinear", "Cast", "Sub", "qc.Requantize", "Concat", "DequantizeLinear"]
    )
    concat = only(m, "Concat")
    assert concat.attributes["axis"].value == 1 and concat.outputs[0].dtype == ir.DataType.UINT8
    assert concat.inputs[0].producer().op_type == "QuantizeLinear"  # a already on the output grid
    assert concat.inputs[1].producer().op_type == "Requantize"
    assert output_names(m) == ["y"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeConcatPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True and only(m, "Concat").outputs[0].dtype != ir.DataType.FLOAT


def test_numerical_shared_parameters_are_bit_exact():
    shared = {"a": SHARED, "b": SHARED, "y": SHARED}
    _, m = integerize(IntegerizeConcatPass(), qdq(CONCAT, overrides=shared), steps=0)
    assert op_types(m) == ["QuantizeLinear", "QuantizeLinear", "Concat", "DequantizeLinear"]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_numerical_constant_input_is_quantized_on_the_output_grid(dtype):
    """A class token: a float constant concatenated with an activation."""
    graph = "g (float[1,2,4,4] a) => (float[1,5,4,4] y) { [cat] y = Concat <axis = 1> (k, a) }"
    result, m = integerize(IntegerizeConcatPass(), qdq(graph, dtype=dtype, k=weights(1, 3, 4, 4, seed=1)), steps=1,
                           equal_fraction=0.9)
    assert result.modified is True and only(m, "Concat").outputs[0].dtype != ir.DataType.FLOAT


def test_no_match_on_a_float_model():
    assert_no_match(IntegerizeConcatPass(), model(CONCAT))
