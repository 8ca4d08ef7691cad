"""Properties of qc's quantization arithmetic (:mod:`qcompiler.qmath`), checked against exact references.

The references use Python ints and :class:`fractions.Fraction`, so they cannot overflow or round: each
property states what the int64/float code must compute, exactly.
"""

from __future__ import annotations

import doctest
import functools
import math
from fractions import Fraction

import numpy as np
import pytest
from core_testkit import PROPERTY, onnx_model, session
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import qcompiler.qmath
from qcompiler.errors import OverflowRiskError
from qcompiler.qmath import (
    DTYPE_RANGES,
    MAX_SHIFT,
    affine_qparams,
    dequantize,
    dyadic,
    dyadic_common_shift,
    quantize,
    requantize,
    round_shift,
)

#: activation dtypes (and int16, whose grid float32 still holds exactly).
GRID_DTYPES = ("uint8", "int8", "int16")
SCALES = st.floats(min_value=1e-6, max_value=1e3)
SHAPES = array_shapes(min_dims=1, max_dims=2, max_side=6)


def exact_round_shift(value: int, shift: int) -> int:
    """``floor(value / 2**shift + 1/2)``: round half up, in exact arithmetic."""
    return math.floor(Fraction(value, 2**shift) + Fraction(1, 2))


def exact_requantize(acc: int, multiplier: int, shift: int, zero_point: int, qmin: int, qmax: int) -> int:
    """The Requantize semantics in exact arithmetic."""
    return min(max(exact_round_shift(acc * multiplier, shift) + zero_point, qmin), qmax)


def onnx_quantize(x: float, scale: float, zero_point: int, dtype: str) -> int:
    """ONNX QuantizeLinear on one value: float32 division, round half to even, saturate."""
    qmin, qmax = DTYPE_RANGES[dtype]
    scaled = float(np.float32(x) / np.float32(scale))
    rounded = round(scaled) if math.isfinite(scaled) else (qmax if scaled > 0 else qmin)
    return min(max(rounded + zero_point, qmin), qmax)


@st.composite
def grid_values(draw, dtypes=GRID_DTYPES):
    """``(dtype, q, scale, zero_point)``: integers on the quantization grid of ``dtype``."""
    dtype = draw(st.sampled_from(dtypes))
    qmin, qmax = DTYPE_RANGES[dtype]
    q = draw(arrays(np.int64, SHAPES, elements=st.integers(qmin, qmax))).astype(dtype)
    return dtype, q, draw(SCALES), draw(st.integers(qmin, qmax))


@st.composite
def signed_ratio(draw, bits: int, low_exp: int = -40):
    """A ratio with ``2**low_exp <= |ratio| < 2**(bits-1)`` (the range ``dyadic`` accepts), either sign."""
    exponent = draw(st.integers(low_exp, bits - 2))
    mantissa = draw(st.floats(min_value=1.0, max_value=1.99))
    return draw(st.sampled_from([1.0, -1.0])) * mantissa * 2.0**exponent


# -- quantize / dequantize ---------------------------------------------------------------------------------


@PROPERTY
@given(grid_values())
def test_integer_grid_round_trips_exactly(case):
    dtype, q, scale, zero_point = case
    real = dequantize(q, scale, zero_point)
    assert real.dtype == np.float32
    back = quantize(real, scale, zero_point, dtype)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, q)


@PROPERTY
@given(grid_values())
def test_dequantize_is_float32_affine(case):
    _, q, scale, zero_point = case
    expected = (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    np.testing.assert_array_equal(dequantize(q, scale, zero_point), expected)


@PROPERTY
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # the xfail below
@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")
@given(
    st.sampled_from(GRID_DTYPES),
    arrays(np.float32, SHAPES, elements=st.floats(width=32, allow_nan=False)),
    SCALES,
    st.data(),
)
def test_quantize_stays_within_clamp_bounds(dtype, x, scale, data):
    qmin, qmax = DTYPE_RANGES[dtype]
    out = quantize(x, scale, data.draw(st.integers(qmin, qmax)), dtype)
    assert out.dtype == np.dtype(dtype)
    assert out.shape == x.shape
    assert np.all(out >= qmin) and np.all(out <= qmax)


@PROPERTY
@given(
    st.sampled_from(GRID_DTYPES),
    arrays(np.float32, SHAPES, elements=st.floats(-1e6, 1e6, width=32)),
    SCALES,
    st.data(),
)
def test_quantize_rounds_half_to_even_and_saturates(dtype, x, scale, data):
    qmin, qmax = DTYPE_RANGES[dtype]
    zero_point = data.draw(st.integers(qmin, qmax))
    expected = [onnx_quantize(v, scale, zero_point, dtype) for v in x.ravel()]
    assert quantize(x, scale, zero_point, dtype).ravel().tolist() == expected


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_saturates_huge_values_to_qmax(dtype):
    huge = np.array([1e19, 1e30, np.finfo(np.float32).max, np.inf], dtype=np.float32)
    out = quantize(huge, 1.0, 0, dtype)
    assert out.tolist() == [DTYPE_RANGES[dtype][1]] * len(huge)


@functools.cache
def _qdq_session(dtype: str):
    onnx_type = {"uint8": "uint8", "int8": "int8"}[dtype]
    return session(
        onnx_model(
            f"""
            agraph (float[N] x, float s, {onnx_type} z, {onnx_type}[M] q) => ({onnx_type}[N] y, float[M] d) {{
                y = QuantizeLinear(x, s, z)
                d = DequantizeLinear(q, s, z)
            }}
            """
        )
    )


@PROPERTY
@given(st.sampled_from(["uint8", "int8"]), arrays(np.float32, 16, elements=st.floats(-1e4, 1e4, width=32)),
       st.floats(2.0**-13, 2.0**7, width=32), st.data())
def test_quantize_and_dequantize_agree_with_onnxruntime(dtype, x, scale, data):
    qmin, qmax = DTYPE_RANGES[dtype]
    zero_point = np.array(data.draw(st.integers(qmin, qmax)), dtype)
    q = data.draw(arrays(np.dtype(dtype), 8, elements=st.integers(qmin, qmax)))
    y, d = _qdq_session(dtype).run(None, {"x": x, "s": np.array(scale, np.float32), "z": zero_point, "q": q})
    np.testing.assert_array_equal(quantize(x, scale, zero_point, dtype), y)
    np.testing.assert_array_equal(dequantize(q, scale, zero_point), d)


# -- affine_qparams --------------------------------------------------------------------------------------

#: reals of magnitude 2**-61 .. 2**20 (or 0), so that every scale is a normal float32 as qc stores it.
REALS = st.just(0.0) | st.builds(lambda m, e: m * 2.0**e, st.floats(0.5, 1.0) | st.floats(-1.0, -0.5), st.integers(-60, 20))


@PROPERTY
@given(st.sampled_from(GRID_DTYPES), REALS, REALS)
def test_affine_qparams_represents_zero_and_covers_the_range(dtype, a, b):
    rmin, rmax = min(a, b), max(a, b)
    qmin, qmax = DTYPE_RANGES[dtype]
    scale, zero_point = affine_qparams(rmin, rmax, dtype)
    assert isinstance(zero_point, int) and qmin <= zero_point <= qmax
    assert scale > 0
    # real 0 is on the grid: it quantizes to the zero point, which dequantizes back to exactly 0
    assert quantize(np.array(0.0), scale, zero_point, dtype) == zero_point
    assert dequantize(np.array(zero_point), scale, zero_point) == 0.0
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    if hi > lo:
        assert scale == pytest.approx((hi - lo) / (qmax - qmin), rel=1e-12)
        # the grid ends are the range ends moved by the same rounding of the zero point: under one step
        step = scale * (1 + 1e-9)
        assert abs((qmin - zero_point) * scale - lo) <= step
        assert abs((qmax - zero_point) * scale - hi) <= step


@pytest.mark.parametrize(
    ("rmin", "rmax", "dtype", "expected"),
    [
        (0.0, 0.0, "int8", (1.0, 0)),
        (0.0, 0.0, "uint8", (1.0, 0)),
        (2.0, 4.0, "uint8", (4.0 / 255, 0)),  # widened to hold 0
        (-4.0, -2.0, "uint8", (4.0 / 255, 255)),
        (-1.0, 3.0, "uint8", (4.0 / 255, 64)),
    ],
)
def test_affine_qparams_examples(rmin, rmax, dtype, expected):
    assert affine_qparams(rmin, rmax, dtype) == pytest.approx(expected)


# -- dyadic ----------------------------------------------------------------------------------------------


def _dyadic_error(multiplier, shift, ratio) -> Fraction:
    return abs(Fraction(int(multiplier), 2 ** int(shift)) - Fraction(ratio))


@PROPERTY
@given(st.integers(8, 31).flatmap(lambda bits: st.tuples(st.just(bits), signed_ratio(bits))))
def test_dyadic_approximates_within_its_precision(case):
    bits, ratio = case
    multiplier, shift = dyadic(ratio, mantissa_bits=bits)
    assert multiplier.shape == shift.shape == (1,)
    m, s = int(multiplier[0]), int(shift[0])
    assert 1 <= s <= MAX_SHIFT
    assert 0 < abs(m) < 2**bits
    assert math.copysign(1, m) == math.copysign(1, ratio)
    if abs(ratio) >= 2.0 ** (bits - MAX_SHIFT):
        assert _dyadic_error(m, s, ratio) <= abs(Fraction(ratio)) / 2**bits
    else:  # documented: the shift is capped, the mantissa shortened; still within one unit of 2**-MAX_SHIFT
        assert s == MAX_SHIFT
        assert _dyadic_error(m, s, ratio) <= Fraction(1, 2**MAX_SHIFT)


@PROPERTY
@given(st.lists(signed_ratio(31), min_size=1, max_size=8))
def test_dyadic_is_elementwise(ratios):
    multipliers, shifts = dyadic(np.array(ratios))
    for ratio, m, s in zip(ratios, multipliers, shifts, strict=True):
        assert dyadic(ratio) == ([m], [s])


def test_dyadic_of_zero_and_tiny_ratios():
    assert dyadic(0.0) == ([0], [1])
    multiplier, shift = dyadic(2.0**-100)
    assert (int(multiplier[0]), int(shift[0])) == (0, 1)


@pytest.mark.parametrize("ratio", [2.0**30, 1e10, -(2.0**31)])
def test_dyadic_refuses_ratios_needing_a_left_shift(ratio):
    with pytest.raises(OverflowRiskError, match="too large"):
        dyadic(ratio)


@pytest.mark.parametrize("ratio", [np.nan, np.inf, -np.inf])
def test_dyadic_refuses_non_finite_ratios(ratio):
    with pytest.raises(OverflowRiskError, match="not finite"):
        dyadic(np.array([0.5, ratio]))


@st.composite
def ratio_sets(draw):
    """``(bits, ratios)``: ratios sharing one rescale, the largest in ``[2**-40, 2**(bits-1))``."""
    bits = draw(st.integers(8, 31))
    exponent = draw(st.integers(-41, bits - 2))
    mantissas = draw(st.lists(st.floats(-1.99, 1.99), min_size=1, max_size=6).filter(lambda v: max(map(abs, v)) >= 0.5))
    return bits, np.array(mantissas) * 2.0**exponent


@PROPERTY
@given(ratio_sets())
def test_dyadic_common_shift_rounds_every_ratio_on_one_shift(case):
    bits, ratios = case
    multipliers, shift = dyadic_common_shift(ratios, mantissa_bits=bits)
    assert isinstance(shift, int) and 1 <= shift <= MAX_SHIFT
    assert multipliers.shape == ratios.shape
    assert np.all(np.abs(multipliers) <= 2**bits)  # strictly below: see the xfail test below
    for ratio, m in zip(ratios, multipliers, strict=True):
        assert _dyadic_error(m, shift, ratio) <= Fraction(1, 2 ** (shift + 1))
    largest = float(np.max(np.abs(ratios)))
    if shift < MAX_SHIFT:  # the largest shift: one more would push the largest multiplier past 2**bits
        assert largest * 2.0 ** (shift + 1) >= 2**bits
        assert _dyadic_error(np.max(np.abs(multipliers)), shift, largest) <= Fraction(largest) / 2**bits


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_dyadic_common_shift_keeps_multipliers_below_two_to_the_mantissa_bits(sign):
    multipliers, _ = dyadic_common_shift(np.array([sign * (1 - 2.0**-40), 0.25]), mantissa_bits=31)
    assert np.all(np.abs(multipliers) < 2**31)


@pytest.mark.parametrize("ratios", [[0.0, 0.0], [np.nan, 1.0], [2.0**31]])
def test_dyadic_common_shift_refuses_impossible_rescales(ratios):
    with pytest.raises(OverflowRiskError):
        dyadic_common_shift(np.array(ratios))


# -- round_shift / requantize ----------------------------------------------------------------------------

INT62 = st.integers(-(2**62) + 1, 2**62 - 1)
SHIFTS = st.integers(1, MAX_SHIFT)


@PROPERTY
@given(st.lists(st.tuples(INT62, SHIFTS), min_size=1, max_size=12))
def test_round_shift_rounds_half_up_exactly(pairs):
    values, shifts = (np.array(column, dtype=np.int64) for column in zip(*pairs, strict=True))
    out = round_shift(values, shifts)
    assert out.dtype == np.int64
    assert out.tolist() == [exact_round_shift(v, s) for v, s in pairs]


@PROPERTY
@given(arrays(np.int64, SHAPES, elements=INT62), SHIFTS)
def test_round_shift_broadcasts_a_scalar_shift(values, shift):
    assert round_shift(values, shift).ravel().tolist() == [exact_round_shift(int(v), shift) for v in values.ravel()]


def test_round_shift_ties_go_towards_plus_infinity():
    values = np.array([-5, -3, -1, 1, 3, 5, -6, 6])
    assert round_shift(values, 1).tolist() == [-2, -1, 0, 1, 2, 3, -3, 3]
    assert round_shift(np.array([-(2**61), 2**61]), 62).tolist() == [0, 1]


@st.composite
def requantize_cases(draw):
    """An int32 accumulator ``[N, C]`` with per-channel multipliers and shifts, a zero point and a clamp."""
    dtype = draw(st.sampled_from(["uint8", "int8", "int32"]))
    channels = draw(st.integers(1, 4))
    acc = draw(arrays(np.int32, (draw(st.integers(1, 4)), channels)))
    multiplier = draw(arrays(np.int64, channels, elements=st.integers(-(2**31) + 1, 2**31 - 1)))
    shift = draw(arrays(np.int64, channels, elements=SHIFTS))
    lo, hi = DTYPE_RANGES[dtype]
    qmin, qmax = sorted(draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2)))
    return dtype, acc, multiplier, shift, draw(st.integers(lo, hi)), qmin, qmax


@PROPERTY
@given(requantize_cases())
def test_requantize_matches_exact_reference(case):
    dtype, acc, multiplier, shift, zero_point, qmin, qmax = case
    out = requantize(acc, multiplier, shift, zero_point, qmin, qmax, dtype)
    assert out.dtype == np.dtype(dtype)
    expected = [
        [exact_requantize(int(a), int(m), int(s), zero_point, qmin, qmax) for a, m, s in zip(row, multiplier, shift, strict=True)]
        for row in acc
    ]
    assert out.tolist() == expected


def test_module_doctests_pass():
    result = doctest.testmod(qcompiler.qmath)
    assert result.failed == 0
    assert result.attempted >= 8
