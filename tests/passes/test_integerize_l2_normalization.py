"""IntegerizeL2NormalizationPass: ``LpNormalization(p=2)`` on the last axis with an integer Newton square root."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import assert_no_match, const, copy, integerize, model, op_types, output_names, qdq, run

from qcompiler.intmath.layer_norm import ISQRT_STEPS, l2_normalize, l2_normalize_constants
from qcompiler.model_io import integer_region
from qcompiler.nonlinear import recorded
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.integerize_l2_normalization import IntegerizeL2NormalizationPass
from qcompiler.reference import integer_session

L2 = "g (float[4,8,48] x) => (float[4,8,48] y) {{ [l2] y = LpNormalization <{attrs}> (x) }}"


def graph(attrs: str = "axis = -1, p = 2") -> str:
    return L2.format(attrs=attrs)


def integer_pass() -> Pipeline:
    """The pass inside a pipeline, so the staged integer-region verifier checks it (tests/conftest.py)."""
    return Pipeline([IntegerizeL2NormalizationPass()])


def params(m: ir.Model, name: str):
    quant = next(n for n in m.graph if n.op_type == "QuantizeLinear" and n.outputs[0].name == name)
    return float(const(quant.inputs[1])), int(const(quant.inputs[2]))


def test_golden_integer_l2_normalization():
    m = qdq(graph())
    assert IntegerizeL2NormalizationPass()(m).modified is True
    assert Counter(op_types(m)) == {
        "QuantizeLinear": 1,
        "Cast": 3,  # x, c to int64, Less mask
        "Sub": 1,  # x - zp
        "Mul": 2,  # c*c, 4**G * n
        "ReduceSum": 2,  # sum(c**2), bit length
        "Max": 1 + ISQRT_STEPS,  # a zero row gives n = 1; each Newton step proven >= 1
        "Less": 1,
        "Gather": 1,
        "Add": ISQRT_STEPS,
        "Div": 2 * ISQRT_STEPS + 1,
        "Min": ISQRT_STEPS,
        "qc.Requantize": 2,
        "DequantizeLinear": 1,
    }
    assert all(not n.outputs[0].dtype.is_floating_point() for n in m.graph if n.op_type != "DequantizeLinear")
    assert output_names(m) == ["y"]
    entry = recorded(ir.serde.serialize_model(m))["l2"]
    assert entry["op"] == "LpNormalization" and entry["method"] == "isqrt" and entry["constants"]["K"] == 6


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("text", [graph(), graph("p = 2")], ids=["explicit", "default-axis"])
def test_numerical_within_one_step_of_float_l2_normalization(text, dtype):
    for seed in range(3):
        result, _ = integerize(integer_pass(), qdq(text, dtype=dtype), seed=seed, steps=1, equal_fraction=0.995)
        assert result.modified is True


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_integer_model_equals_the_numpy_reference_bit_for_bit(dtype):
    m = qdq(graph(), dtype=dtype)
    _, zp_x = params(m, "x_q")
    s_y, zp_y = params(m, "y_q")
    feeds = {"x": np.random.default_rng(5).standard_normal((4, 8, 48)).astype(np.float32)}
    feeds["x"][0, 0] = 0.0  # a zero row: zp_y
    codes = run(m, feeds, ["x_q"])["x_q"]
    integer = copy(m)
    integer_pass()(integer)
    got = run(integer, feeds, ["y_q"])["y_q"]
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    k = l2_normalize_constants(48, max(abs(qmin - zp_x), abs(qmax - zp_x)), s_y)
    want = l2_normalize(codes.astype(np.int64) - zp_x, k, zp_y, qmin, qmax)
    np.testing.assert_array_equal(got.astype(np.int64), want)
    assert np.all(got[0, 0] == zp_y)


@pytest.mark.parametrize(
    "build",
    [lambda: model(graph()), lambda: qdq(graph("axis = 1, p = 2")), lambda: qdq(graph("axis = -1, p = 1"))],
    ids=["not-quantized", "middle-axis", "p1"],
)
def test_no_match(build):
    assert_no_match(IntegerizeL2NormalizationPass(), build())


def test_x86_build_is_bit_exact_with_onnxruntime(tmp_path):
    from qcompiler.targets import get_target

    m = qdq("g (float[2,3,24] x) => (float[2,3,24] y) { [l2] y = LpNormalization (x) }")
    Pipeline([IntegerizeL2NormalizationPass(), FinalizeIntegerModelPass()])(m)
    region = integer_region(ir.serde.serialize_model(m))
    target = get_target("x86")
    module = target.load(tmp_path, target.compile(region, tmp_path))
    session = integer_session(region)
    value = region.graph.input[0]
    _, zp_x = params(m, "x_q")
    rng = np.random.default_rng(0)
    for _ in range(3):
        codes = rng.integers(0, 256, (2, 3, 24), dtype=np.uint8)
        codes[0, 0] = zp_x  # a zero row
        codes[1, 2, :2] = [0, 255]
        feeds = {value.name: codes}
        for want, got in zip(session.run(None, feeds), module.run(feeds), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
