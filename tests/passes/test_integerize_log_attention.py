"""IntegerizeLogAttentionPass: Softmax -> log2 / log-sqrt2 codes -> shift-and-add A·V -> one qc.Requantize."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, const, copy, op_types, output_codes, qdq, random_feeds

from qcompiler.intmath import softmax as sm
from qcompiler.model_io import integer_region
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.integerize_log_attention import KMAX_CAP, SQRT2_BITS, IntegerizeLogAttentionPass
from qcompiler.qmath import dyadic, quantize, requantize

sys.path.insert(0, str(Path(__file__).parents[1] / "targets"))
from targets_testkit import assert_bit_exact, compile_region  # noqa: E402

ATTENTION = """g (float[1,2,8,8] s, float[1,2,8,4] v) => (float[1,2,8,4] y) {
  a = Softmax (s)
  [av] y = MatMul (a, v)
}"""
MASKED = """g (float[1,2,8,8] s, float[1,2,8,4] v, int64[1,1,1,8] mask) => (float[1,2,8,4] y) {
  keep = Greater (mask, zero)
  w = Where (keep, s, fill)
  [a] p = Softmax (w)
  [av] y = MatMul (p, v)
}"""
INITS = {"zero": np.array(0, np.int64), "fill": np.array(-1e9, np.float32)}
QUANTIZERS = ["log2", "log-sqrt2"]


def _params(m: ir.Model, name: str):
    quant = next(v for v in m.graph.inputs if v.name == name).consumers()[0]
    return float(const(quant.inputs[1])), int(const(quant.inputs[2]))


def _out_params(m: ir.Model):
    dq = m.graph.outputs[0].producer()
    return float(const(dq.inputs[1])), int(const(dq.inputs[2]))


def _reference(m: ir.Model, feeds: dict, quantizer: str, bits: int, method: str, keep=None):
    """Integer output codes by qcompiler.intmath.softmax, and the float attention of the quantized inputs."""
    (s_s, zp_s), (s_v, zp_v), (s_y, zp_y) = _params(m, "s"), _params(m, "v"), _out_params(m)
    x = quantize(feeds["s"], s_s, zp_s, "uint8").astype(np.int32)
    vc = quantize(feeds["v"], s_v, zp_v, "uint8").astype(np.int32) - zp_v
    c = sm.default_constants(method, s_s, 256, x.shape[-1])
    a = sm.probabilities(x, c, keep, 256)
    codes = (sm.log2_codes if quantizer == "log2" else sm.log_sqrt2_codes)(a, bits)
    kmax = IntegerizeLogAttentionPass(quantizer, bits).kmax()
    parts = sm.log_attention(codes, vc, quantizer, bits, kmax)
    if quantizer == "log2":
        acc, extra = parts[0].astype(np.int64), 0
    else:
        root = round(math.sqrt(2) * 2**SQRT2_BITS)
        acc, extra = parts[0].astype(np.int64) * 2**SQRT2_BITS + parts[1].astype(np.int64) * root, SQRT2_BITS
    bound = 2 * 2**0.5 * max(zp_v, 255 - zp_v) * 2 ** (kmax + extra)
    mult, shift = dyadic(s_v / (2.0 ** (kmax + extra) * s_y), min(31, 62 - math.ceil(math.log2(bound + 1))))
    y = requantize(acc, mult[0], shift[0], zp_y, 0, 255, "uint8")
    prob = a / 2.0**sm.RECIPROCAL_BITS
    return y, prob, s_v * vc, s_y, zp_y


@pytest.mark.parametrize(("quantizer", "counts"), [
    ("log2", {"Less": 2, "ReduceSum": 3, "qc.ShiftLeft": 1, "Where": 1, "Unsqueeze": 4}),
    ("log-sqrt2", {"Less": 2, "ReduceSum": 4, "qc.ShiftLeft": 1, "qc.ShiftRight": 1, "Where": 2, "Unsqueeze": 5,
                   "Mod": 1, "Equal": 1, "And": 2, "Not": 1}),
])
def test_golden_shift_and_add_kernel(quantizer, counts):
    m = qdq(ATTENTION)
    assert IntegerizeLogAttentionPass(quantizer)(m).modified is True
    ops = Counter(op_types(m))
    assert "MatMul" not in ops and "Softmax" not in ops and ops["qc.Requantize"] == 1
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 1 and ops["Div"] == 1
    assert {k: ops[k] for k in counts} == counts
    shifted = next(n for n in m.graph if n.op_type == "ShiftLeft")
    assert shifted.outputs[0].dtype == ir.DataType.INT32
    thresholds = const(next(n for n in m.graph if n.op_type == "Less").inputs[1])
    assert thresholds.shape == (15,)
    (record,) = [json.loads(v) for k, v in m.metadata_props.items() if k.startswith("qc.nonlinear/")]
    assert record["constants"]["quantizer"] == quantizer and record["constants"]["bits"] == 4


def test_kmax_is_capped():
    assert IntegerizeLogAttentionPass("log2", 4).kmax() == 14
    assert IntegerizeLogAttentionPass("log-sqrt2", 4).kmax() == 7
    assert IntegerizeLogAttentionPass("log2", 8).kmax() == KMAX_CAP


@pytest.mark.parametrize("method", sm.METHODS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_numerical_bit_exact_and_close_to_float(quantizer, bits, method):
    m = qdq(ATTENTION)
    feeds = random_feeds(m, seed=4)
    out = copy(m)
    IntegerizeLogAttentionPass(quantizer, bits, method)(out)
    (got,) = output_codes(out, feeds).values()
    y, prob, v, s_y, zp_y = _reference(m, feeds, quantizer, bits, method)
    np.testing.assert_array_equal(got, y)
    # log rounding misstates each kept probability by at most 2**(1/2) (log2) or 2**(1/4) (log-sqrt2);
    # codes past kmax drop probabilities below 2**-kmax; one output step for rounding (and the clamp margin)
    factor = 2**0.5 - 1 if quantizer == "log2" else 2**0.25 - 1
    kmax = IntegerizeLogAttentionPass(quantizer, bits).kmax()
    bound = factor * (prob @ np.abs(v)) + 8 * 2.0**-kmax * np.abs(v).max() + s_y
    err = np.abs((got.astype(np.float64) - zp_y) * s_y - prob @ v)
    assert np.all(err <= bound + 1e-9)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_masked_rows(quantizer):
    m = qdq(MASKED, **INITS)
    feeds = random_feeds(m, seed=1)
    feeds["mask"] = np.array([[[[1, 1, 0, 1, 0, 1, 1, 0]]]], np.int64)
    out = copy(m)
    assert IntegerizeLogAttentionPass(quantizer)(out).modified is True
    (got,) = output_codes(out, feeds).values()
    y, *_ = _reference(m, feeds, quantizer, 4, "table", feeds["mask"] > 0)
    np.testing.assert_array_equal(got, y)
    feeds["v"][..., [2, 4, 7], :] = 100.0  # masked keys cannot contribute
    (moved,) = output_codes(out, feeds).values()
    np.testing.assert_array_equal(moved, got)
    feeds["mask"][:] = 0  # fully masked: every probability is 0, so the output is real 0
    (empty,) = output_codes(out, feeds).values()
    assert np.all(empty == _out_params(m)[1])


def test_no_match_when_softmax_output_has_other_consumers():
    graph = """g (float[1,2,8,8] s, float[1,2,8,4] v) => (float[1,2,8,4] y, float[1,2,8,8] a) {
      a = Softmax (s)
      [av] y = MatMul (a, v)
    }"""
    assert_no_match(IntegerizeLogAttentionPass(), qdq(graph))


def test_no_match_on_plain_softmax_and_on_weight_matmul():
    assert_no_match(IntegerizeLogAttentionPass(), qdq("g (float[4,10] x) => (float[4,10] y) { y = Softmax (x) }"))
    graph = "g (float[2,8] x) => (float[2,4] y) { a = Softmax (x)\n y = MatMul (a, w) }"
    m = qdq(graph, w=np.ones((8, 4), np.float32))
    assert_no_match(IntegerizeLogAttentionPass(), m)


def test_runs_in_onnxruntime_without_float(tmp_path):
    """Verified float-free by the staged verifier, then x86-compiled and bit-exact with onnxruntime."""
    m = qdq(MASKED, **INITS)
    Pipeline([IntegerizeLogAttentionPass("log-sqrt2", 4, "shift"), FinalizeIntegerModelPass()])(m)
    assert all(not (n.outputs[0].dtype and n.outputs[0].dtype.is_floating_point())
               for n in m.graph if n.op_type != "DequantizeLinear")
    region = integer_region(ir.serde.serialize_model(m))
    module = compile_region(region, tmp_path)
    rng = np.random.default_rng(0)
    for trial in range(2):
        feeds = {"s_q": rng.integers(0, 256, (1, 2, 8, 8)).astype(np.uint8),
                 "v_q": rng.integers(0, 256, (1, 2, 8, 4)).astype(np.uint8),
                 "mask": rng.integers(0, 2, (1, 1, 1, 8)).astype(np.int64) | (trial == 0)}
        assert_bit_exact(region, module, feeds)
