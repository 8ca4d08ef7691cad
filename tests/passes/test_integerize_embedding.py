"""IntegerizeEmbeddingPass: Gather(constant table, ids) -> Q becomes a Gather from the quantized table."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from integer_inputs_testkit import qdq_with
from passes_testkit import assert_no_match, const, integerize, model, only, op_types, qdq, weights

from qcompiler.passes.integerize_embedding import IntegerizeEmbeddingPass
from qcompiler.qmath import quantize
from qcompiler.quant_plan import calibration_points

EMBED = """g (int64[1,6] ids) => (float[1,6,4] y) {
    e = Gather (table, ids)
    y = Add (e, pos)
}"""
POOL = {"table": weights(10, 4), "pos": weights(1, 6, 4, seed=1)}


def ids(batch, seed=0):
    return {"ids": np.random.default_rng(seed).integers(0, 10, (batch, 6)).astype(np.int64)}


def test_golden_gather_from_quantized_table():
    m = qdq_with(EMBED, ids(16), **POOL)
    assert "e" in [v.name for v in calibration_points(m.graph)]
    quant = next(n for n in m.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "e")
    scale, zero = const(quant.inputs[1]), const(quant.inputs[2])
    assert IntegerizeEmbeddingPass()(m).modified is True
    gather = only(m, "Gather")
    assert gather.outputs[0].dtype == ir.DataType.UINT8 and gather.inputs[1].name == "ids"
    np.testing.assert_array_equal(const(gather.inputs[0]), quantize(POOL["table"], scale, zero, "uint8"))
    assert op_types(m)[0] == "Gather"


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_numerical_bit_exact_against_qdq(dtype):
    qdq_model = qdq_with(EMBED, ids(16), dtype=dtype, **POOL)
    for seed in range(3):
        result, _ = integerize(IntegerizeEmbeddingPass(), qdq_model, feeds=ids(1, seed + 5), steps=0)
        assert result.modified is True


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq("g (float[1,6,4] x) => (float[1,2,4] y) { y = Gather <axis = 1> (x, idx) }",
                    idx=np.array([0, 3], np.int64)),  # a Gather of an activation: data movement, not a table
        lambda: model(EMBED, **POOL),  # not quantized
    ],
    ids=["gather-of-activation", "not-quantized"],
)
def test_no_match(build):
    assert_no_match(IntegerizeEmbeddingPass(), build())
