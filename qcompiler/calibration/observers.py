"""Observers: accumulate statistics of one tensor across calibration batches, in bounded memory.

Observers only collect. Turning their statistics into a clipping range is the job of the pure functions in
:mod:`qcompiler.calibration.ranges`, and turning a range into scale and zero point that of
:func:`qcompiler.qmath.affine_qparams`. Neither observer skips anything silently: a NaN or Inf raises a
:class:`~qcompiler.errors.CalibrationError` naming the tensor.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.errors import CalibrationError

__all__ = ["MinMaxObserver", "HistogramObserver"]

#: smallest radius (the smallest normal float32): subnormal data still get bins of finite width.
_MIN_RADIUS = float(np.finfo(np.float32).tiny)


def _finite(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as an array, after checking that it holds no NaN or Inf."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise CalibrationError(
            f"tensor '{name}' holds {bad} NaN/Inf value(s) of {values.size} during calibration: the float "
            "model produces non-finite values on this data. Check the calibration data (scaling, dtype) and "
            "run the float model on it in onnxruntime to find the node that overflows."
        )
    return values


class MinMaxObserver:
    """Running minimum and maximum of one tensor, and the number of values seen.

    Before any value arrives ``min`` is +inf, ``max`` is -inf and ``count`` is 0.
    """

    def __init__(self, name: str):
        """An empty observer of the tensor ``name`` (used in error messages)."""
        self.name = name
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        """Fold one batch of the tensor into the running ``min``, ``max`` and ``count``."""
        values = _finite(self.name, values)
        if values.size:
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))
            self.count += values.size


class HistogramObserver:
    """Streaming histogram of one tensor over ``[-radius, radius]`` with a fixed number of bins.

    Memory is ``bins`` counters whatever the data. The range is symmetric about 0, as onnxruntime's
    histogram calibrators keep it: bin ``bins // 2`` starts at 0, and folding the histogram gives that of
    ``|x|`` exactly. The first batch with a nonzero value sets ``radius = max |x|`` (at least the smallest
    normal float32; until then every value was 0 and sits in bin ``bins // 2``, which holds 0 for any
    radius). When a later batch exceeds the
    radius, the radius doubles until it covers the batch.

    Re-binning on doubling: old bins ``2k`` and ``2k + 1`` (width ``w``) merge into one bin of width ``2w``,
    and these ``bins / 2`` merged bins fill the middle half of ``[-2 radius, 2 radius]``. ``bins`` is a
    multiple of 4, so every new edge is an old edge and counts are moved whole, never split: the merged counts
    are those that histogramming every earlier value with the new edges would give (except that a value
    equal to the old ``+radius`` stays in the bin left of that edge). No count is lost. The only error is
    resolution: earlier values are then known to within the new bin width, just as later ones are.
    ``min`` and ``max`` are kept exactly.
    """

    def __init__(self, name: str, bins: int = 2048):
        """An empty histogram of the tensor ``name`` with ``bins`` bins (a positive multiple of 4)."""
        if bins < 4 or bins % 4:
            raise ValueError(f"HistogramObserver needs a positive multiple of 4 bins, got {bins}")
        self.name = name
        self.radius = 0.0
        self.counts = np.zeros(bins, dtype=np.int64)
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges, evenly spaced over ``[-radius, radius]``."""
        return np.linspace(-self.radius, self.radius, self.counts.size + 1)

    def update(self, values: np.ndarray) -> None:
        """Add one batch of the tensor to the histogram, doubling the radius first if the batch exceeds it."""
        values = _finite(self.name, values)
        if not values.size:
            return
        low, high = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += values.size
        self._cover(max(-low, high))
        if self.radius > 0.0:
            # numpy scalars, not floats: the edges are then float64 even for float32 data
            limits = (np.float64(-self.radius), np.float64(self.radius))
            self.counts += np.histogram(values, bins=self.counts.size, range=limits)[0]
        else:
            self.counts[self.counts.size // 2] += values.size

    def _cover(self, absmax: float) -> None:
        """Grow the radius to at least ``absmax``: set it on the first nonzero data, else double it."""
        if self.radius == 0.0 and absmax > 0.0:
            self.radius = max(absmax, _MIN_RADIUS)
        while self.radius < absmax:
            self.counts = _merge_pairs(self.counts)
            self.radius *= 2.0


def _merge_pairs(counts: np.ndarray) -> np.ndarray:
    """Counts re-binned onto a range twice as wide: adjacent pairs summed into the middle half.

    >>> _merge_pairs(np.array([1, 2, 3, 4, 5, 6, 7, 8]))
    array([ 0,  0,  3,  7, 11, 15,  0,  0])
    """
    merged = np.zeros_like(counts)
    quarter = counts.size // 4
    merged[quarter : 3 * quarter] = counts.reshape(-1, 2).sum(axis=1)
    return merged
