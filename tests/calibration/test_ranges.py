"""Range methods: known distributions, agreement with literal reference implementations, and invariants."""

from __future__ import annotations

import doctest
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompiler.calibration import observers, ranges
from qcompiler.calibration.observers import HistogramObserver, MinMaxObserver
from qcompiler.calibration.ranges import (
    METHODS,
    compute_range,
    entropy_range,
    mse_range,
    observer_for,
    percentile_range,
)
from qcompiler.errors import CalibrationError


def _observed(values: np.ndarray, method: str = "entropy", bins: int = 2048):
    """An observer for ``method`` that has seen ``values`` in one batch."""
    obs = observer_for(method, "t") if bins == 2048 else HistogramObserver("t", bins=bins)
    obs.update(values)
    return obs


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> HistogramObserver:
    values = np.random.default_rng(0).normal(size=200_000)
    values[:2] = [50.0, -40.0]
    return _observed(values)


@pytest.mark.parametrize("module", [ranges, observers])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_minmax_keeps_the_outliers(gaussian_with_outliers):
    assert compute_range("minmax", gaussian_with_outliers) == (-40.0, 50.0)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_the_outliers_to_the_bulk(gaussian_with_outliers, method):
    rmin, rmax = compute_range(method, gaussian_with_outliers)
    assert -7.0 < rmin < -3.5 and 3.5 < rmax < 7.0


def test_mse_clips_rare_outliers(gaussian_with_outliers):
    """Squared error weighs far outliers heavily, so MSE clips them less than the others but still clips."""
    rmin, rmax = compute_range("mse", gaussian_with_outliers)
    assert -40.0 < rmin < -4.0 and 4.0 < rmax < 0.75 * 50.0


@pytest.mark.parametrize("method", METHODS)
def test_uniform_data_give_nearly_the_true_range(method):
    obs = _observed(np.random.default_rng(1).uniform(-1.0, 3.0, size=100_000), method)
    rmin, rmax = compute_range(method, obs)
    assert rmin == pytest.approx(-1.0, abs=0.02) and rmax == pytest.approx(3.0, abs=0.02)


@pytest.mark.parametrize("method", METHODS)
def test_nonnegative_data_keep_their_minimum(method):
    values = np.maximum(np.random.default_rng(2).normal(size=50_000), 0.0) + 0.5
    rmin, rmax = compute_range(method, _observed(values, method))
    assert rmin == values.min() and 1.5 < rmax <= values.max()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.0, 2.5, -3.0])
def test_constant_data_give_the_constant(method, value):
    assert compute_range(method, _observed(np.full(10, value), method)) == (value, value)


values_strategy = hnp.arrays(
    np.float32,
    st.integers(1, 300),
    elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(values_strategy, min_size=1, max_size=3), st.sampled_from(["uint8", "int8", "int16"]))
def test_every_method_gives_a_finite_ordered_range_inside_the_data(batches, dtype):
    hist = HistogramObserver("t")
    for values in batches:
        hist.update(values)
    for method in METHODS:
        rmin, rmax = compute_range(method, hist, dtype)
        assert np.isfinite(rmin) and np.isfinite(rmax)
        assert hist.min <= rmin <= rmax <= hist.max


@settings(max_examples=40, deadline=None)
@given(values_strategy, st.floats(50.0, 100.0))
def test_percentile_keeps_at_least_that_share_of_values(values, percentile):
    rmin, rmax = percentile_range(_observed(values), percentile)
    inside = np.count_nonzero((values >= rmin) & (values <= rmax))
    assert inside >= percentile / 100.0 * values.size * (1 - 1e-12)


def _reference_divergences(counts: np.ndarray, groups: int) -> np.ndarray:
    """KL(P || Q) per half-width, a literal transcription of the entropy_range docstring."""
    half = counts.size // 2
    result = []
    for i in range(-(-groups // 2), half + 1):
        sliced = counts[half - i : half + i].astype(np.float64)
        p = sliced.copy()
        p[0] += counts[: half - i].sum()
        p[-1] += counts[half + i :].sum()
        group = np.arange(2 * i) * groups // (2 * i)
        q = np.zeros(2 * i)
        for g in range(groups):
            where = (group == g) & (p > 0)
            if where.any():
                q[where] = sliced[group == g].sum() / where.sum()
        q[(p > 0) & (q == 0)] = 1e-4
        if sliced.sum() == 0:
            result.append(np.inf)
            continue
        big_p, big_q = p / p.sum(), q / sliced.sum()
        kept = p > 0
        result.append(np.sum(big_p[kept] * np.log(big_p[kept] / big_q[kept])))
    return np.array(result)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int64, st.sampled_from([8, 16, 64]), elements=st.integers(0, 50)),
    st.integers(2, 64),
)
def test_entropy_divergences_match_the_literal_definition(counts, groups):
    if counts.sum() == 0 or groups > counts.size:
        return
    widths = np.arange(-(-groups // 2), counts.size // 2 + 1)
    fast = ranges._kl_divergences(counts.astype(np.float64), widths, groups)
    np.testing.assert_allclose(fast, _reference_divergences(counts, groups), rtol=1e-9, atol=1e-9)


def _reference_mse_errors(hist: HistogramObserver, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds and E(T), a literal transcription of the mse_range docstring."""
    half = hist.counts.size // 2
    width = hist.radius / half
    folded = [hist.counts[half + j] + hist.counts[half - 1 - j] for j in range(half)]
    thresholds, errors = [], []
    for j in range(half):
        t = (j + 1) * width
        a, b = max(hist.min, -t), min(hist.max, t)
        step = (max(b, 0.0) - min(a, 0.0)) / (qmax - qmin)
        error = sum(folded[: j + 1]) * step**2 / 12
        error += sum(folded[k] * ((k + 0.5) * width - t) ** 2 for k in range(j + 1, half))
        thresholds.append(t)
        errors.append(error)
    return np.array(thresholds), np.array(errors)


@settings(max_examples=40, deadline=None)
@given(values_strategy, st.sampled_from([(0, 255), (-128, 127), (0, 15)]))
def test_mse_minimises_the_literal_error(values, grid):
    hist = _observed(values, bins=32)
    rmin, rmax = mse_range(hist, *grid)
    if hist.radius == 0.0:
        return
    thresholds, errors = _reference_mse_errors(hist, *grid)
    chosen = [k for k, t in enumerate(thresholds) if (max(hist.min, -t), min(hist.max, t)) == (rmin, rmax)]
    assert chosen and errors[chosen].min() <= errors.min() * (1 + 1e-9) + 1e-12


def test_entropy_is_fast_enough_for_2048_bins(gaussian_with_outliers):
    entropy_range(gaussian_with_outliers)
    best = min(_seconds(lambda: entropy_range(gaussian_with_outliers)) for _ in range(5))
    assert best < 0.05


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@pytest.mark.parametrize("name", ["minmax", "MinMax", "ENTROPY", "Percentile", "mse", "MSE"])
def test_method_names_are_case_insensitive(name):
    obs = observer_for(name, "t")
    obs.update(np.array([-1.0, 2.0]))
    rmin, rmax = compute_range(name, obs)
    assert rmin <= rmax


def test_observer_for_picks_the_statistics_the_method_needs():
    assert isinstance(observer_for("MinMax", "t"), MinMaxObserver)
    for method in ["entropy", "percentile", "mse"]:
        assert isinstance(observer_for(method, "t"), HistogramObserver)


@pytest.mark.parametrize("name", ["distribution", "Distribution", "kl", ""])
def test_unknown_methods_list_the_valid_ones(name):
    for call in (lambda: observer_for(name, "t"), lambda: compute_range(name, _observed(np.ones(3)))):
        with pytest.raises(CalibrationError, match="valid methods.*minmax, entropy, percentile, mse"):
            call()


def test_distribution_is_explained():
    with pytest.raises(CalibrationError, match="'distribution' is onnxruntime's float8 method"):
        observer_for("distribution", "t")


def test_unknown_dtype():
    with pytest.raises(CalibrationError, match="unknown quantized dtype 'qint8'.*uint8, int8"):
        compute_range("mse", _observed(np.ones(3)), "qint8")


def test_histogram_method_on_a_minmax_observer():
    obs = MinMaxObserver("t")
    obs.update(np.ones(3))
    with pytest.raises(CalibrationError, match="needs a HistogramObserver for tensor 't'"):
        compute_range("entropy", obs)


@pytest.mark.parametrize("method", METHODS)
def test_a_tensor_that_saw_no_values(method):
    obs = observer_for(method, "empty_out")
    obs.update(np.zeros((2, 0), np.float32))
    with pytest.raises(CalibrationError, match="tensor 'empty_out' received no values"):
        compute_range(method, obs)


def test_percentile_parameter_is_used_and_checked():
    obs = _observed(np.arange(1.0, 101.0))
    assert compute_range("percentile", obs, percentile=50.0)[1] < compute_range("percentile", obs)[1]
    with pytest.raises(ValueError, match="percentile"):
        percentile_range(obs, 0.0)


def test_entropy_needs_enough_bins():
    with pytest.raises(ValueError, match="num_quantized_bins"):
        entropy_range(_observed(np.ones(3), bins=8), num_quantized_bins=255)
