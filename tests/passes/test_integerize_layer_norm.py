"""IntegerizeLayerNormPass: last-axis LayerNorm with an exact integer variance and an integer Newton square root."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    const,
    copy,
    integerize,
    model,
    op_types,
    output_names,
    qdq,
    run,
    weights,
)

from qcompiler.errors import OverflowRiskError
from qcompiler.intmath.layer_norm import ISQRT_STEPS, layer_norm, layer_norm_constants
from qcompiler.model_io import integer_region
from qcompiler.nonlinear import recorded
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.integerize_layer_norm import IntegerizeLayerNormPass
from qcompiler.reference import integer_session

LN = "g (float[4,8,64] x) => (float[4,8,64] y) {{ [ln] y = LayerNormalization <{attrs}> (x, gamma{beta}) }}"
POOL = {"gamma": weights(64) + 1.0, "beta": weights(64, seed=1), "gamma_scalar": np.array([0.7], np.float32)}


def graph(attrs: str = "axis = -1, epsilon = 1e-5", beta: str = ", beta") -> str:
    return LN.format(attrs=attrs, beta=beta)


def integer_pass() -> Pipeline:
    """The pass inside a pipeline, so the staged integer-region verifier checks it (tests/conftest.py)."""
    return Pipeline([IntegerizeLayerNormPass()])


def params(m: ir.Model, name: str):
    quant = next(n for n in m.graph if n.op_type == "QuantizeLinear" and n.outputs[0].name == name)
    return float(const(quant.inputs[1])), int(const(quant.inputs[2]))


def test_golden_integer_layer_norm():
    m = qdq(graph(), **POOL)
    assert IntegerizeLayerNormPass()(m).modified is True
    newton = ISQRT_STEPS
    assert Counter(op_types(m)) == {
        "QuantizeLinear": 1,
        "Cast": 4,  # x, y, Less mask, z to int32/int64
        "Sub": 2,  # x - zp, N*c - sum
        "ReduceSum": 3,  # sum(c), sum(y**2), bit length
        "Mul": 4,  # N*c, y*y, 4**G * v, z*M
        "Add": 2 + newton,  # + eps, + B, Newton x + n/x
        "Less": 1,
        "Gather": 1,
        "Div": 2 * newton + 1,  # Newton n/x and /2, one reciprocal per row
        "Min": newton,
        "Max": newton,  # each Newton step proven >= 1 (a divisor without a zero guard)
        "qc.Requantize": 2,
        "DequantizeLinear": 1,
    }
    assert "LayerNormalization" not in op_types(m)
    assert all(not n.outputs[0].dtype.is_floating_point() for n in m.graph if n.op_type != "DequantizeLinear")
    assert output_names(m) == ["y"]
    entry = recorded(ir.serde.serialize_model(m))["ln"]
    assert entry["op"] == "LayerNormalization" and entry["method"] == "isqrt"
    assert {"P", "F", "K", "G", "shift", "eps_int"} <= entry["constants"].keys() and entry["constants"]["K"] == 6


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize(
    "text", [graph(), graph("epsilon = 1e-3", beta=""), graph().replace("gamma, beta", "gamma_scalar, beta")],
    ids=["gamma-beta", "no-beta-default-axis", "scalar-gamma"],
)
def test_numerical_within_one_step_of_float_layer_norm(text, dtype):
    """The QDQ model runs the float LayerNorm: codes differ by at most 1 step, at rounding ties only."""
    for seed in range(3):
        result, _ = integerize(integer_pass(), qdq(text, dtype=dtype, **POOL), seed=seed, steps=1,
                               equal_fraction=0.995)
        assert result.modified is True


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_integer_model_equals_the_numpy_reference_bit_for_bit(dtype):
    m = qdq(graph(), dtype=dtype, **POOL)
    s_x, zp_x = params(m, "x_q")
    s_y, zp_y = params(m, "y_q")
    feeds = {"x": (np.random.default_rng(5).standard_normal((4, 8, 64)) * np.linspace(0.01, 3, 8)[None, :, None])
             .astype(np.float32)}
    feeds["x"][0, 0] = 0.25  # a constant row
    codes = run(m, feeds, ["x_q"])["x_q"]
    integer = copy(m)
    integer_pass()(integer)
    got = run(integer, feeds, ["y_q"])["y_q"]
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    k = layer_norm_constants(64, s_x, 255, 1e-5, POOL["gamma"], POOL["beta"], s_y)
    want = layer_norm(codes.astype(np.int64) - zp_x, k, zp_y, qmin, qmax)
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_refuses_rows_too_long_for_an_exact_square_sum_by_name():
    text = "g (float[1,8214] x) => (float[1,8214] y) { [wide_ln] y = LayerNormalization (x, gamma) }"
    m = qdq(text, gamma=np.ones(8214, np.float32))
    with pytest.raises(OverflowRiskError, match="LayerNormalization 'wide_ln'.*8213"):
        IntegerizeLayerNormPass()(m)


@pytest.mark.parametrize(
    "build",
    [
        lambda: model(graph(), **POOL),  # not quantized
        lambda: qdq(graph("axis = 1"), **POOL),  # normalizes the last two axes
        lambda: qdq(graph("axis = 0"), gamma=np.ones((4, 8, 64), np.float32), beta=np.zeros((4, 8, 64), np.float32)),
    ],
    ids=["not-quantized", "two-axes", "all-axes"],
)
def test_no_match(build):
    assert_no_match(IntegerizeLayerNormPass(), build())


def test_x86_build_is_bit_exact_with_onnxruntime(tmp_path):
    """model.int.onnx's integer region, compiled for x86 by TVM, equals onnxruntime bit for bit."""
    text = "g (float[2,3,32] x) => (float[2,3,32] y) { [ln] y = LayerNormalization (x, gamma, beta) }"
    m = qdq(text, gamma=weights(32) + 1.0, beta=weights(32, seed=1))
    Pipeline([IntegerizeLayerNormPass(), FinalizeIntegerModelPass()])(m)
    region = integer_region(ir.serde.serialize_model(m))
    assert_x86_bit_exact(region, tmp_path)


def assert_x86_bit_exact(region, out_dir) -> None:
    """Compile ``region`` (one uint8 input) for x86 and compare with onnxruntime on random and edge codes."""
    from qcompiler.targets import get_target

    target = get_target("x86")
    module = target.load(out_dir, target.compile(region, out_dir))
    session = integer_session(region)
    value = region.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    for _ in range(3):
        codes = rng.integers(0, 256, shape, dtype=np.uint8)
        codes[0, 0] = 17  # a constant row
        codes[-1, -1, :2] = [0, 255]  # extremes
        feeds = {value.name: codes}
        for want, got in zip(session.run(None, feeds), module.run(feeds), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
