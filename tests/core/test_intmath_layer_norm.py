"""The integer references of LayerNorm and L2 normalization (:mod:`qcompiler.intmath.layer_norm`).

``isqrt`` is checked exhaustively below 2**20 and by property up to its domain limit against
:func:`math.isqrt`; the norms against float64 LayerNorm / L2 normalization on random codes.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from core_testkit import PROPERTY
from hypothesis import given
from hypothesis import strategies as st

import qcompiler.intmath.layer_norm
from qcompiler.errors import OverflowRiskError
from qcompiler.intmath.layer_norm import (
    ISQRT_LIMIT,
    ISQRT_STEPS,
    isqrt,
    isqrt_start,
    l2_normalize,
    l2_normalize_constants,
    layer_norm,
    layer_norm_constants,
)


def test_module_doctests_pass():
    result = doctest.testmod(qcompiler.intmath.layer_norm)
    assert result.failed == 0 and result.attempted >= 6


def test_isqrt_is_exact_for_every_n_below_2_to_the_20():
    n = np.arange(1, 2**20, dtype=np.int64)
    expected = np.array([math.isqrt(int(v)) for v in n], dtype=np.int64)
    np.testing.assert_array_equal(isqrt(n), expected)


def test_isqrt_start_is_between_sqrt_n_and_twice_sqrt_n():
    n = np.concatenate([np.arange(1, 5000), (np.int64(1) << np.arange(62)), (np.int64(1) << np.arange(1, 63)) - 1])
    start = isqrt_start(n).astype(np.float64)
    root = np.sqrt(n.astype(np.float64))
    assert np.all(start * start >= n.astype(np.float64)) and np.all(start <= 2 * root * (1 + 1e-12))


@PROPERTY
@given(st.integers(1, 2**53 - 1))
def test_isqrt_matches_math_isqrt_below_2_to_the_53(n):
    assert int(isqrt(np.array([n]))[0]) == math.isqrt(n)


@PROPERTY
@given(st.integers(1, ISQRT_LIMIT - 1))
def test_isqrt_matches_math_isqrt_on_its_whole_domain(n):
    assert int(isqrt(np.array([n]))[0]) == math.isqrt(n)


@pytest.mark.parametrize("n", [2**k + d for k in range(1, 62) for d in (-1, 0, 1)] + [(r + 1) ** 2 - 1 for r in
                                                                                       (3, 2**20, 2**26, 2**31 - 2)])
def test_isqrt_edge_values(n):
    """Powers of two (worst start, e0 = 1) and n = (r+1)**2 - 1 (where Newton without min oscillates)."""
    assert int(isqrt(np.array([n]))[0]) == math.isqrt(n)


def test_fewer_steps_are_not_enough():
    """K is not larger than needed: four steps leave some large n wrong; the proof needs six for n < 2**62."""
    n = np.array([2**k for k in range(40, 62, 2)] + [2**k + 1 for k in range(41, 62, 2)], dtype=np.int64)
    exact = np.array([math.isqrt(int(v)) for v in n])
    assert ISQRT_STEPS == 6
    assert np.any(isqrt(n, steps=4) != exact)
    np.testing.assert_array_equal(isqrt(n), exact)


def _float_layer_norm(c, s_x, eps, gamma, beta):
    x = c.astype(np.float64) * s_x
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("length", [2, 16, 768, 4096])
def test_layer_norm_is_within_one_step_of_float(length):
    """Against float64 LayerNorm rounded to the output grid: max 1 step, nearly all equal (measured)."""
    rng = np.random.default_rng(length)
    s_x, s_y, eps = 0.05, 0.03, 1e-5
    gamma = rng.uniform(0.5, 1.5, length)
    beta = rng.uniform(-0.5, 0.5, length)
    k = layer_norm_constants(length, s_x, 255, eps, gamma, beta, s_y)
    c = np.clip(np.rint(rng.standard_normal((64, length)) * rng.uniform(0.5, 60, (64, 1))), -128, 127)
    c[0] = 5  # a constant row: exactly beta
    c[1, :] = 0
    c[1, 0] = 1  # the smallest non-zero variance
    got = layer_norm(c.astype(np.int64), k, 3, -128, 127)
    exact = _float_layer_norm(c, s_x, eps, gamma, beta) / s_y + 3
    diff = np.abs(got - np.clip(np.floor(exact + 0.5), -128, 127))
    assert diff.max() <= 1 and np.mean(diff == 0) >= 0.999
    inside = (exact > -127.5) & (exact < 126.5)
    assert np.max(np.abs(got - exact)[inside]) < 0.5 + 1e-3  # the integer error itself is < 1e-3 step


def test_layer_norm_rows_of_equal_codes_give_beta():
    k = layer_norm_constants(8, 0.1, 255, 1e-5, np.ones(8), np.linspace(-1, 1, 8), 0.02)
    got = layer_norm(np.full((2, 8), 7), k, 0, -128, 127)
    np.testing.assert_array_equal(got, np.floor(np.linspace(-1, 1, 8) / 0.02 + 0.5)[None].repeat(2, 0))


def test_layer_norm_refuses_rows_whose_square_sum_could_reach_2_to_the_53():
    layer_norm_constants(8213, 0.1, 255, 1e-5, np.ones(1), np.zeros(1), 0.02)
    with pytest.raises(OverflowRiskError, match="LayerNormalization 'ln'.*at most 8213 elements"):
        layer_norm_constants(8214, 0.1, 255, 1e-5, np.ones(1), np.zeros(1), 0.02, what="LayerNormalization 'ln'")


def test_layer_norm_constants_keep_products_inside_int64():
    for length, s_x, eps in [(2, 1.0, 0.0), (4096, 1e-4, 1e-2), (8213, 0.5, 1e-12)]:
        k = layer_norm_constants(length, s_x, 255, eps, np.full(length, 3.0), np.full(length, 100.0), 0.01)
        assert 1 <= k.normalize_shift and k.eps_int >= 1
        assert length**3 * 255**2 / 4 * 4**k.prescale_bits + k.eps_int < 2**61
        assert 2**k.fraction_bits * np.abs(k.multipliers).max() + np.abs(k.biases).max() < 2**62


@pytest.mark.parametrize("length", [1, 3, 64, 1024])
def test_l2_normalize_is_within_one_step_of_float(length):
    rng = np.random.default_rng(length)
    s_y = 1 / 127
    k = l2_normalize_constants(length, 128, s_y)
    c = np.clip(np.rint(rng.standard_normal((64, length)) * rng.uniform(0.5, 60, (64, 1))), -128, 127)
    c[0] = 0
    got = l2_normalize(c.astype(np.int64), k, 0, -127, 127)
    norm = np.sqrt((c.astype(np.float64) ** 2).sum(axis=-1, keepdims=True))
    exact = np.divide(c, norm, out=np.zeros_like(c, dtype=np.float64), where=norm > 0) / s_y
    assert np.max(np.abs(got - exact)) < 0.5 + 1e-3
    np.testing.assert_array_equal(got[0], 0)
