"""Observers accumulate exact counts and extremes in bounded memory and refuse NaN/Inf."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompiler.calibration.observers import HistogramObserver, MinMaxObserver
from qcompiler.errors import CalibrationError

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
batches = st.lists(hnp.arrays(np.float32, st.integers(0, 40), elements=finite), min_size=1, max_size=6)


def test_minmax_observer_tracks_extremes_and_count():
    obs = MinMaxObserver("t")
    assert obs.count == 0
    obs.update(np.array([[1.0, -2.0], [0.5, 3.0]], np.float32))
    obs.update(np.array([], np.float32))
    obs.update(np.array([7.0]))
    assert (obs.min, obs.max, obs.count) == (-2.0, 7.0, 5)


@pytest.mark.parametrize("observer", [MinMaxObserver("act/relu"), HistogramObserver("act/relu")])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_raise_naming_the_tensor(observer, bad):
    with pytest.raises(CalibrationError, match=r"tensor 'act/relu' holds 1 NaN/Inf value\(s\) of 3"):
        observer.update(np.array([0.0, bad, 1.0], np.float32))


@settings(max_examples=60, deadline=None)
@given(batches)
def test_histogram_counts_every_value_and_keeps_exact_extremes(arrays):
    hist, minmax = HistogramObserver("t", bins=64), MinMaxObserver("t")
    for values in arrays:
        hist.update(values)
        minmax.update(values)
    total = sum(a.size for a in arrays)
    assert hist.counts.sum() == hist.count == minmax.count == total
    assert hist.counts.size == 64
    if total:
        everything = np.concatenate(arrays)
        assert (hist.min, hist.max) == (float(everything.min()), float(everything.max()))
        assert (minmax.min, minmax.max) == (hist.min, hist.max)
        assert hist.edges[0] <= hist.min and hist.max <= hist.edges[-1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-0.999, 0.999), max_size=30),
    st.lists(st.floats(-40.0, 40.0), min_size=1, max_size=30),
)
def test_rebinning_equals_histogramming_all_values_with_the_final_edges(first, second):
    """Re-binning moves whole counts: the result is what binning every value at the final range gives."""
    first = np.array([-1.0, *first])  # pins the first radius to 1; nothing sits on its +1 edge
    second = np.array(second)
    hist = HistogramObserver("t", bins=16)
    hist.update(first)
    hist.update(second)
    assert hist.radius == 2.0 ** np.ceil(np.log2(max(1.0, np.abs(second).max())))
    expected, _ = np.histogram(np.concatenate([first, second]), bins=hist.edges)
    np.testing.assert_array_equal(hist.counts, expected)


def test_zeros_before_the_first_nonzero_batch_stay_in_the_zero_bin():
    hist = HistogramObserver("t", bins=8)
    hist.update(np.zeros(5))
    assert hist.radius == 0.0 and hist.counts[4] == 5
    hist.update(np.array([-2.0, 1.0]))
    assert hist.radius == 2.0
    np.testing.assert_array_equal(hist.counts, [1, 0, 0, 0, 5, 0, 1, 0])


def test_memory_stays_bounded_as_the_range_grows():
    hist = HistogramObserver("t", bins=32)
    for exponent in range(0, 60, 3):
        hist.update(np.array([2.0**exponent, -(2.0**exponent) / 3]))
    assert hist.counts.size == 32 and hist.count == 40 and hist.counts.sum() == 40
    assert hist.radius == 2.0**57


def test_edges_are_symmetric_and_evenly_spaced():
    hist = HistogramObserver("t", bins=8)
    hist.update(np.array([-3.0, 1.0]))
    np.testing.assert_allclose(hist.edges, np.linspace(-3.0, 3.0, 9))


@pytest.mark.parametrize("bins", [0, 6, 2050])
def test_bins_must_be_a_multiple_of_four(bins):
    with pytest.raises(ValueError, match="multiple of 4"):
        HistogramObserver("t", bins=bins)
