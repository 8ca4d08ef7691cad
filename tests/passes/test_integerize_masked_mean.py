"""IntegerizeMaskedMeanPass: sum(x * mask) / max(sum(mask), eps) in integers, within one step of the QDQ."""

from __future__ import annotations

import numpy as np
import pytest
from integer_inputs_testkit import codes, masks, qdq_with
from passes_testkit import assert_no_match, copy, model, op_types, weights

from qcompiler.errors import QcError
from qcompiler.passes.integerize_masked_mean import IntegerizeMaskedMeanPass, multiplier_table
from qcompiler.quant_plan import activation_points, masked_mean, unsupported_nodes
from qcompiler.verify import integer_region_problems

MEAN = """g (float[1,6,4] h, int64[1,6] m) => (float[1,4] y) {
    m3 = Unsqueeze (m, last)
    mf = Cast <to = 1> (m3)
    p = Mul (h, mf)
    s = ReduceSum <keepdims = 0> (p, seq)
    c = ReduceSum <keepdims = 0> (mf, seq)
    cc = Clip (c, eps)
    y = Div (s, cc)
}"""
# sentence-transformers: the float mask is expanded to the hidden size before both uses
EXPANDED = MEAN.replace("mf = Cast <to = 1> (m3)", "me = Expand (m3, full)\n mf = Cast <to = 1> (me)")
POOL = {"last": np.array([-1], np.int64), "seq": np.array([1], np.int64), "eps": np.array(1e-9, np.float32),
        "full": np.array([1, 6, 4], np.int64), "big": np.array(2.0, np.float32)}


def feeds(batch, seed=0):
    return {"h": weights(batch, 6, 4, seed=seed, scale=1.0), "m": masks(batch, 6, seed)}


@pytest.mark.parametrize("graph", [MEAN, EXPANDED], ids=["mean", "expanded-mask"])
def test_plan_has_one_point_and_no_unsupported_op(graph):
    m = model(graph, **POOL)
    assert masked_mean(next(n for n in m.graph if n.op_type == "Div")) is not None
    assert [v.name for v in activation_points(m.graph)] == ["h", "y"]
    assert unsupported_nodes(m.graph) == []


@pytest.mark.parametrize("graph", [MEAN, EXPANDED], ids=["mean", "expanded-mask"])
def test_golden_integer_ops_only(graph):
    m = qdq_with(graph, feeds(16), **POOL)
    assert IntegerizeMaskedMeanPass()(m).modified is True
    assert "qc.Requantize" in op_types(m) and "Div" not in op_types(m)
    assert op_types(m).count("DequantizeLinear") == 1 and op_types(m).count("QuantizeLinear") == 1
    assert integer_region_problems(m) == []


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", [MEAN, EXPANDED], ids=["mean", "expanded-mask"])
def test_numerical_within_one_step(graph, dtype):
    qdq_model = qdq_with(graph, feeds(16), dtype=dtype, **POOL)
    integer = copy(qdq_model)
    IntegerizeMaskedMeanPass()(integer)
    for seed in range(8):
        feed = feeds(1, seed + 100)
        if seed == 7:
            feed["m"] = np.zeros_like(feed["m"])  # all masked: 0 / eps = 0 in float, acc 0 in integers
        want, got = codes(qdq_model, feed)["y_q"], codes(integer, feed)["y_q"]
        assert np.abs(want.astype(int) - got.astype(int)).max() <= 1


def test_multiplier_table_shares_one_shift():
    table, shift = multiplier_table(0.37, 128, 31)
    assert table[0] == table[1] < 2**31
    np.testing.assert_allclose(table[1:] / 2.0**shift, 0.37 / np.arange(1, 129), rtol=2**-23)


@pytest.mark.parametrize(
    "build",
    [
        lambda: qdq_with(MEAN.replace("cc = Clip (c, eps)", "cc = Clip (c, big)"), feeds(16), **POOL),
        lambda: qdq_with(MEAN.replace("y = Div (s, cc)", "y = Div (s, c)"), feeds(16), **POOL),
        lambda: model(MEAN, **POOL),
    ],
    ids=["eps-not-small", "no-clip", "not-quantized"],
)
def test_no_match(build):
    try:
        m = build()
    except QcError:  # the plan refuses unrecognized forms before quantization: they never reach this pass
        return
    assert_no_match(IntegerizeMaskedMeanPass(), m)
