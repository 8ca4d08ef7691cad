"""IntegerizePoolingPass: average pools as integer window sums and one qc.Requantize by 1/count."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, const, integerize, model, only, op_types, output_names, qdq

from qcompiler.passes.integerize_pooling import IntegerizePoolingPass

GLOBAL = "g (float[1,4,6,6] x) => (float[1,4,1,1] y) { [gap] y = GlobalAveragePool (x) }"
PADDED = """
g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
  [pool] y = AveragePool <kernel_shape = [3,3], pads = [1,1,1,1]> (x)
}
"""
VARIANTS = {
    "global": GLOBAL,
    "padded-exclude-pad": PADDED,
    "padded-include-pad": PADDED.replace("<kernel_shape", "<count_include_pad = 1, kernel_shape"),
    "strided": """g (float[1,4,6,6] x) => (float[1,4,3,3] y) {
                    [pool] y = AveragePool <kernel_shape = [2,2], strides = [2,2]> (x) }""",
    "strided-padded": """g (float[1,4,6,6] x) => (float[1,4,3,3] y) {
                    [pool] y = AveragePool <kernel_shape = [3,3], strides = [2,2], pads = [1,1,1,1]> (x) }""",
}


def test_golden_global_average_pool_is_reduce_sum():
    m = qdq(GLOBAL)
    assert IntegerizePoolingPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "Cast", "Sub", "ReduceSum", "qc.Requantize", "DequantizeLinear"]
    total = only(m, "ReduceSum")
    np.testing.assert_array_equal(const(total.inputs[1]), [2, 3])
    assert total.outputs[0].dtype == ir.DataType.INT32
    assert only(m, "Requantize").outputs[0].dtype == ir.DataType.UINT8
    assert output_names(m) == ["y"]


def test_golden_padded_average_pool_counts_only_real_elements():
    m = qdq(PADDED)
    assert IntegerizePoolingPass()(m).modified is True
    assert op_types(m) == ["QuantizeLinear", "Pad", "ConvInteger", "Sub", "qc.Requantize", "DequantizeLinear"]
    conv = only(m, "ConvInteger")
    assert conv.attributes["group"].value == 4
    np.testing.assert_array_equal(const(conv.inputs[1]), np.ones((4, 1, 3, 3), np.int8))
    multiplier = const(only(m, "Requantize").inputs[1]).reshape(6, 6)
    # corners average 4 elements, edges 6, the interior 9: the multiplier scales with 1/count
    assert multiplier[0, 0] / multiplier[2, 2] == pytest.approx(9 / 4, rel=1e-6)
    assert multiplier[0, 2] / multiplier[2, 2] == pytest.approx(9 / 6, rel=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizePoolingPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True
    assert not {"GlobalAveragePool", "AveragePool"} & set(op_types(m))


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq(
            PADDED.replace("float[1,4,6,6] y", "float[1,4,4,4] y").replace(
                "pads = [1,1,1,1]", "pads = [1,1,1,1], strides = [2,2], ceil_mode = 1"
            )
        ),
        lambda: qdq(PADDED.replace("pads = [1,1,1,1]", 'auto_pad = "SAME_UPPER"')),
        lambda: model(GLOBAL),
    ],
    ids=["ceil-mode", "auto-pad", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizePoolingPass(), build())


def test_numerical_dilated_average_pool():
    graph = """g (float[1,4,8,8] x) => (float[1,4,6,6] y) {
                 [pool] y = AveragePool <kernel_shape = [2,2], dilations = [2,2]> (x) }"""
    integerize(IntegerizePoolingPass(), qdq(graph), steps=1, equal_fraction=0.9)
