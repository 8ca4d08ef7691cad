"""qcompiler.intmath.softmax: integer Softmax references (table / shift / poly), log codes, the log A·V kernel."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompiler.intmath import softmax as sm

K = sm.RECIPROCAL_BITS
#: max |A - p| against the float Softmax (probability units), measured max with margin (see the pass docs).
BOUNDS = {"table": 1e-3, "poly": 4e-3, "shift": 3e-2}


def test_doctests():
    assert doctest.testmod(sm).failed == 0


@st.composite
def rows(draw, masked: bool = False):
    scale = draw(st.floats(0.004, 0.25))
    row = draw(st.integers(1, 48))
    count = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, row))
    keep = rng.random((count, row)) < 0.7 if masked else None
    return scale, x, keep


@pytest.mark.parametrize("method", sm.METHODS)
@settings(max_examples=60, deadline=None)
@given(case=rows(masked=True))
def test_probabilities_close_to_float_softmax(method, case):
    scale, x, keep = case
    c = sm.default_constants(method, scale, 256, x.shape[-1])
    a = sm.probabilities(x, c, keep, 256)
    p = sm.softmax_float(scale * x, keep)
    assert a.dtype == np.int64 and np.all(a >= 0) and np.all(a.sum(axis=-1) <= 2**K)
    assert np.all(a[~keep] == 0), "masked positions are exactly 0"
    full = keep.any(axis=-1)
    assert np.all(a[~full] == 0), "a fully masked row is all 0"
    assert np.max(np.abs(a / 2.0**K - p)) <= BOUNDS[method]
    y = sm.uniform_codes(a, 255, 0, 0, 255)
    assert np.max(np.abs(y - 255 * p)) <= 0.5 + 255 * BOUNDS[method] + 1e-9


@pytest.mark.parametrize("method", sm.METHODS)
@settings(max_examples=20, deadline=None)
@given(case=rows())
def test_calibrated_constants_are_admissible_and_no_worse_than_default(method, case):
    scale, x, _ = case
    row = x.shape[-1]
    c, error = sm.choose(method, scale, 256, row, x, None)
    assert c.e0 <= sm.EXP_LIMIT and c.e0 * row <= sm.SUM_LIMIT
    assert error == pytest.approx(sm.mse(x, None, scale, c, 256))
    assert error <= sm.mse(x, None, scale, sm.default_constants(method, scale, 256, row), 256) + 1e-18


def test_row_limits():
    assert sm.candidates("table", 0.1, 256, 2**24) and not sm.candidates("table", 0.1, 256, 2**24 + 1)
    for method in ("shift", "poly"):
        for c in sm.candidates(method, 0.05, 256, 4096):
            assert c.e0 * 4096 <= 2**40 and c.e0 <= 2**30


def test_log2_thresholds_are_exact():
    for bits in (2, 4, 8):
        for j, t in enumerate(sm.log2_thresholds(bits).tolist()):
            e = 2 * K - 2 * j - 1  # A < 2**(e/2) <=> A <= t - 1
            assert (t - 1) ** 2 < 2**e < t**2
        for j, t in enumerate(sm.log_sqrt2_thresholds(bits).tolist()):
            e = 4 * K - 2 * j - 1
            assert (t - 1) ** 4 < 2**e < t**4


@settings(max_examples=200, deadline=None)
@given(exponent=st.floats(0.0, 20.0), bits=st.sampled_from([3, 4, 8]))
def test_log_codes_round_in_the_log_domain(exponent, bits):
    a = np.array([int(2.0 ** (K - exponent))])
    value = -math.log2(int(a[0]) / 2**K)
    zero = 2**bits - 1
    if abs(value - math.floor(value) - 0.5) > 1e-9:
        assert sm.log2_codes(a, bits)[0] == min(round(value), zero)
    if abs(2 * value - math.floor(2 * value) - 0.5) > 1e-9:
        assert sm.log_sqrt2_codes(a, bits)[0] == min(round(2 * value), zero)


@pytest.mark.parametrize("quantizer", ["log2", "log-sqrt2"])
def test_log_attention_is_the_exact_sum_of_shifted_values(quantizer):
    rng = np.random.default_rng(0)
    bits, kmax = 4, 5
    codes = rng.integers(0, 16, size=(2, 3, 7))
    v = rng.integers(-128, 128, size=(2, 7, 5))
    exponent = codes / (1.0 if quantizer == "log2" else 2.0)
    live = (codes < 15) & (np.ceil(exponent) <= kmax)
    weight = np.where(live, 2.0**-exponent, 0.0)
    expected = weight @ v * 2.0**kmax
    parts = sm.log_attention(codes, v, quantizer, bits, kmax)
    got = parts[0] if quantizer == "log2" else parts[0] + math.sqrt(2) * parts[1]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("quantizer", ["log2", "log-sqrt2"])
@settings(max_examples=40, deadline=None)
@given(case=rows(masked=True))
def test_log_coded_probabilities_within_half_a_code(quantizer, case):
    """A code never misstates a kept probability by more than 2**(1/2) (log2) or 2**(1/4) (log-sqrt2)."""
    scale, x, keep = case
    a = sm.probabilities(x, sm.default_constants("table", scale, 256, x.shape[-1]), keep, 256)
    bits = 8
    codes = (sm.log2_codes if quantizer == "log2" else sm.log_sqrt2_codes)(a, bits)
    value = 2.0 ** -(codes / (1.0 if quantizer == "log2" else 2.0))
    coded = codes < 2**bits - 1
    ratio = value[coded] / (a[coded] / 2.0**K)
    half = 2 ** (0.5 if quantizer == "log2" else 0.25)
    assert np.all(ratio <= half * (1 + 1e-12)) and np.all(ratio >= 1 / half / (1 + 1e-12))
    assert np.all(codes[~keep] == 2**bits - 1)
