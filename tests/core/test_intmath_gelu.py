"""Integer GELU references (:mod:`qcompiler.intmath.gelu`): error bounds against float GELU, budgets, doctests."""

from __future__ import annotations

import doctest
import math

import numpy as np
from core_testkit import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

import qcompiler.intmath.gelu
from qcompiler.intmath.gelu import (
    gelu,
    poly_acc_scale,
    poly_constants,
    poly_gelu,
    shift_acc_scale,
    shift_constants,
    shift_exp,
    shift_gelu,
)

CODES = np.arange(-255, 256, dtype=np.int32)  # every centered code of an 8-bit input
#: input scales of 8-bit GELU inputs: ranges from about +-0.25 to +-25.
scales = st.floats(0.002, 0.2)

#: max |integer - float GELU| in real units: the approximations' own error (x*sigmoid(1.702x): 0.0207;
#: I-BERT's erf polynomial: 0.0180) plus the integer arithmetic's.
SHIFT_BOUND = 0.025
POLY_BOUND = 0.02


def test_doctests():
    assert doctest.testmod(qcompiler.intmath.gelu, raise_on_error=True).attempted > 0


@PROPERTY
@given(scale=scales, alpha=st.floats(1.5, 1.8), n=st.integers(8, 23))
def test_shift_constants_stay_within_the_int32_budget(scale, alpha, n):
    c = shift_constants(scale, alpha=alpha, n=n)
    if c is None:
        return
    assert c["x0"] <= -1 and abs(c["x0"]) * 2 ** (c["n"] + 1) < 2**31
    acc = shift_gelu(CODES, **c)
    assert acc.dtype == np.int32
    exact = np.asarray(CODES, np.int64) * (2**16)  # |acc| <= |x| * 2**16: sigmoid in [0, 1]
    assert np.all(np.abs(acc.astype(np.int64)) <= np.abs(exact))


@PROPERTY
@given(scale=scales)
def test_shift_gelu_error_against_float_gelu_is_bounded(scale):
    c = shift_constants(scale)
    approx = shift_gelu(CODES, **c) * shift_acc_scale(scale)
    real = CODES * np.float64(scale)
    assert np.max(np.abs(approx - gelu(real))) <= SHIFT_BOUND
    # against its own float formula x*sigmoid(1.702x): ShiftExp's 2**r ~ 1 + r/2 costs at most 1.2% of
    # the input range
    formula = real / (1 + np.exp(-1.702 * real))
    assert np.max(np.abs(approx - formula)) <= 0.012 * 255 * scale


@PROPERTY
@given(scale=scales)
def test_poly_gelu_error_against_float_gelu_is_bounded(scale):
    c = poly_constants(scale)
    assert c is not None and 2 * c["one_int"] * 255 < 2**31
    acc = poly_gelu(CODES, **c)
    assert acc.dtype == np.int32
    real = CODES * np.float64(scale)
    approx = acc * poly_acc_scale(scale, c)
    assert np.max(np.abs(approx - gelu(real))) <= POLY_BOUND
    # against I-BERT's float erf polynomial the integer form is exact to 1e-5 of the input range
    z = real / math.sqrt(2)
    erf = np.sign(z) * (1 - 0.2888 * (np.minimum(np.abs(z), 1.769) - 1.769) ** 2)
    assert np.max(np.abs(approx - real * (1 + erf) / 2)) <= 1e-5 * 255 * scale


@PROPERTY
@given(scale=scales, u=st.integers(0, 12))
def test_poly_gelu_is_odd_around_its_linear_part(scale, u):
    # GELU(x) - GELU(-x) = x: the integer erf is odd, so acc(x) - acc(-x) = 2 * one_int * x exactly
    c = poly_constants(scale, u=u)
    if c is None:
        return
    acc = poly_gelu(CODES, **c).astype(np.int64)
    np.testing.assert_array_equal(acc - acc[::-1], 2 * c["one_int"] * CODES.astype(np.int64))


@PROPERTY
@given(x0=st.integers(-5000, -2), n=st.integers(1, 20), t=st.integers(-(2**20), 0))
def test_shift_exp_approximates_the_exponential(x0, n, t):
    if abs(x0) * 2 ** (n + 1) >= 2**31:
        return
    got = int(shift_exp(np.array([t], np.int32), x0, n)[0])
    # 2**(1.4375 t / -x0) scaled by |x0| 2**n, clamped below at 2**-n; 1 + r/2 is within 6.1% of 2**r,
    # the floors cost a few units of the result
    exponent = max((t + (t >> 1) - (t >> 4)) / -x0, -n)
    want = -x0 * 2**n * 2.0**exponent
    assert abs(got - want) <= 0.062 * want + 2 ** (n - math.floor(-exponent)) + 1


def test_shift_constants_refuse_what_cannot_fit():
    assert shift_constants(1e-4, n=23) is None  # |x0| >= 2**8 even without up-scaling
    assert shift_constants(0.05, n=20, u=9) is None
