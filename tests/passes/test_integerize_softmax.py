"""IntegerizeSoftmaxPass: last-axis Softmax (masked or not) as an integer exponential (table / shift / poly),
an int64 sum, one division per row and one qc.Requantize; bit-exact with qcompiler.intmath.softmax."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    copy,
    integerize,
    model,
    only,
    op_types,
    output_codes,
    output_names,
    qdq,
    random_feeds,
)

from qcompiler.errors import OverflowRiskError
from qcompiler.intmath import softmax as sm
from qcompiler.model_io import integer_region
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.integerize_softmax import EXP_BITS, IntegerizeSoftmaxPass
from qcompiler.qmath import quantize
from qcompiler.quant_plan import QParams

sys.path.insert(0, str(Path(__file__).parents[1] / "targets"))
from targets_testkit import assert_bit_exact, compile_region  # noqa: E402

SOFTMAX = "g (float[4,10] x) => (float[4,10] y) { [softmax] y = Softmax (x) }"
VARIANTS = {
    "default-axis": SOFTMAX,
    "explicit-last-axis": SOFTMAX.replace("Softmax (x)", "Softmax <axis = 1> (x)"),
    "rank-3": "g (float[2,3,16] x) => (float[2,3,16] y) { [softmax] y = Softmax <axis = -1> (x) }",
}
MASKED = """g (float[2,4,8] x, int64[2,1,8] mask) => (float[2,4,8] y) {
  keep = Greater (mask, zero)
  w = Where (keep, x, fill)
  [softmax] y = Softmax (w)
}"""
MASK_INITS = {"zero": np.array(0, np.int64), "fill": np.array(-1e4, np.float32)}
#: measured max error against the float Softmax, in output steps (docstring of the pass), with margin.
STEPS_FROM_FLOAT = {"table": 0.52, "poly": 0.8, "shift": 5.0}


def _input(m: ir.Model):
    quant = m.graph.inputs[0].consumers()[0]
    return float(const(quant.inputs[1])), int(const(quant.inputs[2])), str(const(quant.inputs[2]).dtype)


def _reference(qdq_model: ir.Model, method: str, feeds: dict, keep=None) -> np.ndarray:
    """The numpy reference on the quantized input, with the constants the pass recorded."""
    scale, zp, dtype = _input(qdq_model)
    x = quantize(feeds["x"], scale, zp, dtype).astype(np.int32)
    c = sm.default_constants(method, scale, 256, x.shape[-1])
    return sm.uniform_codes(sm.probabilities(x, c, keep, 256), 255, 0, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("method", "counts"),
    [
        ("table", {"qc.LookupTable": 1, "Sub": 1, "Mul": 1}),
        ("shift", {"qc.ShiftRight": 4, "Sub": 4, "Mul": 2, "Div": 1, "Add": 1, "Min": 1}),
        ("poly", {"qc.ShiftRight": 1, "Sub": 3, "Mul": 3, "Div": 1, "Add": 1, "Min": 1}),
    ],
)
def test_golden_integer_softmax(method, counts):
    m = qdq(SOFTMAX)
    assert IntegerizeSoftmaxPass(method)(m).modified is True
    common = {"QuantizeLinear": 1, "Cast": 2, "ReduceMax": 1, "ReduceSum": 1, "Max": 1, "Div": 1,
              "qc.Requantize": 1, "DequantizeLinear": 1}
    got = Counter(op_types(m))
    got.pop("qc.ShiftLeft", None)  # the up-scaling shift m (and I-ViT's n) are left out when 0
    assert got == Counter(common) + Counter(counts)
    requant = only(m, "Requantize")
    assert [int(const(v)) for v in requant.inputs[1:]] == [255, sm.RECIPROCAL_BITS, 0, 0, 255]
    assert all(n.outputs[0].dtype != ir.DataType.FLOAT for n in m.graph if n.op_type != "DequantizeLinear")
    assert m.graph.outputs[0].producer().inputs[0].dtype == ir.DataType.UINT8
    assert output_names(m) == ["y"]
    record = json.loads(m.metadata_props["qc.nonlinear/softmax"])
    assert record["method"] == method and record["error"] is None


def test_golden_table_entries():
    m = qdq(SOFTMAX)
    scale, _, _ = _input(m)
    IntegerizeSoftmaxPass()(m)
    table = const(only(m, "LookupTable").inputs[1])
    assert table.dtype == np.int32 and table.shape == (256,) and table[0] == 2**EXP_BITS
    np.testing.assert_array_equal(table, np.rint(2.0**EXP_BITS * np.exp(-scale * np.arange(256))))


@pytest.mark.parametrize("method", sm.METHODS)
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_numerical_bit_exact_with_reference_and_close_to_float(graph, method):
    m = qdq(graph)
    feeds = random_feeds(m, seed=5)
    feeds["x"] *= 3
    out = copy(m)
    IntegerizeSoftmaxPass(method)(out)
    (got,) = output_codes(out, feeds).values()
    np.testing.assert_array_equal(got, _reference(m, method, feeds))
    scale, zp, dtype = _input(m)
    x = quantize(feeds["x"], scale, zp, dtype).astype(np.float64) * scale
    assert np.max(np.abs(got - 255 * sm.softmax_float(x))) <= STEPS_FROM_FLOAT[method]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("graph", VARIANTS.values(), ids=VARIANTS.keys())
def test_table_within_one_step_of_qdq(graph, dtype):
    result, m = integerize(IntegerizeSoftmaxPass(), qdq(graph, dtype=dtype), steps=1, equal_fraction=0.9)
    assert result.modified is True and "Softmax" not in op_types(m)


@pytest.mark.parametrize("method", sm.METHODS)
def test_masked_rows(method):
    """Masked probabilities are exactly 0; a fully masked row is all 0 (float Softmax: uniform)."""
    m = qdq(MASKED, **MASK_INITS)
    feeds = random_feeds(m, seed=2)
    feeds["mask"] = (np.arange(16).reshape(2, 1, 8) % 3 != 0).astype(np.int64)
    feeds["mask"][1] = 0  # the second batch is fully masked
    out = copy(m)
    assert IntegerizeSoftmaxPass(method)(out).modified is True
    assert "Where" in op_types(out) and "Softmax" not in op_types(out)
    (got,) = output_codes(out, feeds).values()
    keep = feeds["mask"] > 0
    np.testing.assert_array_equal(got, _reference(m, method, feeds, keep))
    assert np.all(got[np.broadcast_to(~keep, got.shape)] == 0) and np.all(got[1] == 0)
    scale, zp, dtype = _input(m)
    x = quantize(feeds["x"], scale, zp, dtype).astype(np.float64) * scale
    assert np.max(np.abs(got[0] - 255 * sm.softmax_float(x, keep)[0])) <= STEPS_FROM_FLOAT[method]


@pytest.mark.parametrize("method", ["shift", "poly"])
def test_samples_choose_and_record_the_constants(method):
    m = qdq(SOFTMAX)
    scale, zp, dtype = _input(m)
    samples = {"softmax": np.random.default_rng(3).standard_normal((64, 4, 10)).astype(np.float32) * 2}
    IntegerizeSoftmaxPass(method, samples=samples)(m)
    record = json.loads(m.metadata_props["qc.nonlinear/softmax"])
    codes = quantize(samples["softmax"], scale, zp, dtype).astype(np.int32).reshape(-1, 10)
    best, error = sm.choose(method, scale, 256, 10, codes, None)
    assert record["error"] == pytest.approx(error) and error < 1e-4
    assert {k: record["constants"][k] for k in best.record()} == best.record()


def test_overlong_row_raises_naming_the_node():
    row = 2**24 + 1
    graph = f"""g (float[1,{row}] x) => (float[1,{row}] y) {{
      q = QuantizeLinear (x, s, z)
      d = DequantizeLinear (q, s, z)
      [long_softmax] p = Softmax (d)
      pq = QuantizeLinear (p, ps, z)
      y = DequantizeLinear (pq, ps, z)
    }}"""
    m = model(graph, s=np.array(0.1, np.float32), ps=np.array(1 / 255, np.float32), z=np.array(0, np.uint8))
    with pytest.raises(OverflowRiskError, match="long_softmax"):
        IntegerizeSoftmaxPass()(m)


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


def test_narrow_output_clamps_to_its_bits():
    m = qdq(SOFTMAX, overrides={"y": QParams(1 / 15, 0, "uint8", bits=4)})
    IntegerizeSoftmaxPass()(m)
    requant = only(m, "Requantize")
    assert [int(const(v)) for v in requant.inputs[1:]] == [15, sm.RECIPROCAL_BITS, 0, 0, 15]


@pytest.mark.parametrize("method", sm.METHODS)
def test_x86_compile_bit_exact(method, tmp_path):
    """The masked integer Softmax, verified float-free, compiles for x86 and matches onnxruntime bit for bit."""
    m = qdq(MASKED, **MASK_INITS)
    Pipeline([IntegerizeSoftmaxPass(method), FinalizeIntegerModelPass()])(m)
    region = integer_region(ir.serde.serialize_model(m))
    module = compile_region(region, tmp_path)
    rng = np.random.default_rng(0)
    for seed in range(2):
        feeds = {"x_q": rng.integers(0, 256, (2, 4, 8)).astype(np.uint8),
                 "mask": rng.integers(0, 2, (2, 1, 8)).astype(np.int64)}
        feeds["mask"][seed] = 0
        assert_bit_exact(region, module, feeds)
