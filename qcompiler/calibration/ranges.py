"""Pure functions from collected statistics to a clipping range ``(rmin, rmax)``.

Each method reads an observer's state and returns finite floats with ``rmin <= rmax``, inside the observed
``[min, max]``. Widening the range to hold 0 and deriving scale and zero point is left to
:func:`qcompiler.qmath.affine_qparams`. Method names follow onnxruntime's ``CalibrationMethod``
(case-insensitive), plus ``mse``.

The histogram methods work on a :class:`~qcompiler.calibration.observers.HistogramObserver`, whose ``bins``
bins of width ``w = 2 radius / bins`` span ``[-radius, radius]``. Folding it gives the histogram of ``|x|``:
``bins / 2`` bins of the same width over ``[0, radius]``. A threshold ``T`` on ``|x|`` becomes the range
``clip(T) = (max(min, -T), min(max, T))``, so a tensor that is never negative keeps ``rmin = min``.
"""

from __future__ import annotations

import numpy as np

from qcompiler.calibration.observers import HistogramObserver, MinMaxObserver
from qcompiler.errors import CalibrationError
from qcompiler.qmath import DTYPE_RANGES

__all__ = [
    "METHODS",
    "compute_range",
    "entropy_range",
    "minmax_range",
    "mse_range",
    "observer_for",
    "percentile_range",
]

#: calibration methods qc supports, by their lower-cased onnxruntime names.
METHODS = ("minmax", "entropy", "percentile", "mse")

#: count that stands in for an empty candidate bin in the KL divergence, as onnxruntime's smoothing does.
_KL_EPS = 1e-4

Observer = MinMaxObserver | HistogramObserver


def minmax_range(obs: Observer) -> tuple[float, float]:
    """The exact ``(min x, max x)`` over every value observed.

    >>> obs = MinMaxObserver("x")
    >>> obs.update(np.array([-1.5, 0.25, 3.0]))
    >>> minmax_range(obs)
    (-1.5, 3.0)
    """
    _require_values(obs)
    return obs.min, obs.max


def percentile_range(hist: HistogramObserver, percentile: float = 99.999) -> tuple[float, float]:
    """``clip(T)`` with ``T`` the ``percentile``-th percentile of ``|x|``, read from the histogram.

    ``T = (j + 1) w`` where ``j`` is the first ``|x|`` bin at which the cumulative count reaches
    ``percentile / 100 * n``, so at least ``percentile`` % of the values lie inside the range. This is
    onnxruntime's Percentile calibrator with ``symmetric=True`` (absolute-value histogram, threshold ``±T``
    clamped to the observed ``[min, max]``), except that onnxruntime takes the lower edge of bin ``j`` and
    qc the upper one. For data that are never negative it is the plain upper tail: ``(min, T)``.

    >>> hist = HistogramObserver("x", bins=8)
    >>> hist.update(np.array([-0.5, 0.25, 0.5, 0.5, 1.0, 1.5, 1.5, 2.5, 3.0, 4.0]))
    >>> percentile_range(hist, 80.0)
    (-0.5, 3.0)
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    _require_values(hist)
    folded = _folded(hist.counts)
    j = int(np.searchsorted(np.cumsum(folded), percentile / 100.0 * hist.count))
    return _clip(hist, min(j + 1, folded.size) * _width(hist))


def entropy_range(hist: HistogramObserver, num_quantized_bins: int = 255) -> tuple[float, float]:
    """``clip(i w)`` for the half-width ``i`` (in bins) minimising the KL divergence (TensorRT's method).

    As onnxruntime's Entropy calibrator: for each ``i`` from ``ceil(nq / 2)`` to ``bins / 2``, with
    ``nq = num_quantized_bins``, the reference ``P`` is the slice of ``2i`` bins around 0 with the counts
    outside it added to its end bins. The candidate ``Q`` merges the slice (without those outliers) into
    ``nq`` groups, slice bin ``k`` going to group ``floor(k nq / 2i)``, and spreads each group's count
    evenly over its bins where ``P`` is nonzero. Both normalised, ``KL(P || Q) = sum_k P_k log(P_k / Q_k)``
    over ``P_k > 0``, ``Q_k`` floored at ``1e-4`` counts. Unlike onnxruntime, the slice is symmetric (``2i``
    bins, not ``2i + 1``) and a slice that does not split evenly spreads its remainder over all groups.

    >>> hist = HistogramObserver("x", bins=8)
    >>> hist.update(np.array([-1.0, -0.5, 0.5, 1.0, 1.5, 8.0]))
    >>> entropy_range(hist, num_quantized_bins=2)
    (-1.0, 2.0)
    """
    _require_values(hist)
    half = hist.counts.size // 2
    first = -(-num_quantized_bins // 2)
    if num_quantized_bins < 2 or first > half:
        raise ValueError(f"entropy needs 2 <= num_quantized_bins <= {2 * half}, got {num_quantized_bins}")
    if hist.radius == 0.0:
        return hist.min, hist.max
    widths = np.arange(first, half + 1)
    divergence = _kl_divergences(hist.counts.astype(np.float64), widths, num_quantized_bins)
    return _clip(hist, widths[np.argmin(divergence)] * _width(hist))


def _kl_divergences(counts: np.ndarray, widths: np.ndarray, groups: int) -> np.ndarray:
    """``KL(P || Q)`` for each half-width in ``widths`` (see :func:`entropy_range`), from prefix sums.

    With ``n`` values in all, ``S`` in the slice, ``P_g`` and ``G_g`` group ``g``'s counts with and without
    the outliers and ``z_g`` its bins where ``P`` is nonzero, the KL divergence expands to

        ``KL = (sum_k p_k log p_k - sum_g P_g log(G_g / z_g)) / n - log n + log S``,

    and only the two end bins differ from the raw counts, so every term is a difference of prefix sums:
    O(candidates x groups) work instead of O(candidates x bins).
    """
    half, n = counts.size // 2, counts.sum()
    total, nonzero, entropy = (_prefix(v) for v in (counts, counts > 0, _xlogx(counts)))
    start, stop = half - widths, half + widths
    edges = start[:, None] - (-np.arange(groups + 1) * 2 * widths[:, None] // groups)
    group_sum = np.diff(total[edges], axis=1)
    group_p, group_nonzero = group_sum.copy(), np.diff(nonzero[edges], axis=1)
    ends = np.stack([start, stop - 1])
    outliers = np.stack([total[start], n - total[stop]])
    group_p[:, [0, -1]] += outliers.T
    group_nonzero[:, [0, -1]] += ((counts[ends] == 0) & (outliers > 0)).T
    p_log_p = (
        entropy[stop]
        - entropy[start]
        + np.sum(_xlogx(counts[ends] + outliers) - _xlogx(counts[ends]), axis=0)
    )
    q = np.where(group_sum > 0, group_sum / np.maximum(group_nonzero, 1), _KL_EPS)
    cross = np.sum(np.where(group_p > 0, group_p * np.log(q), 0.0), axis=1)
    inside = total[stop] - total[start]
    divergence = (p_log_p - cross) / n - np.log(n) + np.log(np.maximum(inside, 1.0))
    return np.where(inside > 0, divergence, np.inf)


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading 0: ``sum(values[a:b]) == _prefix(values)[b] - _prefix(values)[a]``."""
    return np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))


def _xlogx(values: np.ndarray) -> np.ndarray:
    """``x log x`` elementwise, 0 where ``x == 0``."""
    return values * np.log(np.where(values > 0, values, 1.0))


def mse_range(hist: HistogramObserver, qmin: int, qmax: int) -> tuple[float, float]:
    """``clip(T)`` minimising the expected squared quantization error onto ``qmin..qmax``.

    Candidates are the ``|x|`` bin upper edges ``T_j = (j + 1) w`` that leave ``clip(T)`` nonempty. For
    ``clip(T) = (a, b)`` the step is ``s = (max(b, 0) - min(a, 0)) / (qmax - qmin)`` (the range widened to
    hold 0, as the qparams will be) and

        ``E(T) = n_in s^2 / 12 + sum_{|x| bins c beyond T} n_c (x_c - T)^2``,

    uniform rounding error for the ``n_in`` values inside plus clipping error for those outside, ``x_c``
    being the bin centre. Outside sums use suffix sums of ``n_c``, ``n_c x_c`` and ``n_c x_c^2``.

    >>> hist = HistogramObserver("x", bins=8)
    >>> hist.update(np.array([-1.0, -0.5, 0.5, 1.0, 1.5, 8.0]))
    >>> mse_range(hist, 0, 3)
    (-1.0, 6.0)
    """
    _require_values(hist)
    if hist.radius == 0.0:
        return hist.min, hist.max
    counts = _folded(hist.counts).astype(np.float64)
    upper = _width(hist) * np.arange(1, counts.size + 1)
    centre = upper - _width(hist) / 2
    beyond = [np.sum(counts * centre**k) - np.cumsum(counts * centre**k) for k in range(3)]
    clipping = beyond[2] - 2 * upper * beyond[1] + upper**2 * beyond[0]
    low, high = np.maximum(hist.min, -upper), np.minimum(hist.max, upper)
    step = (np.maximum(high, 0.0) - np.minimum(low, 0.0)) / (qmax - qmin)
    error = np.where(low <= high, np.cumsum(counts) * step**2 / 12 + clipping, np.inf)
    return _clip(hist, upper[np.argmin(error)])


def compute_range(
    method: str, observer: Observer, dtype: str = "uint8", percentile: float = 99.999
) -> tuple[float, float]:
    """The clipping range of ``observer``'s tensor by ``method`` (one of :data:`METHODS`) for ``dtype``.

    ``dtype`` (a key of :data:`qcompiler.qmath.DTYPE_RANGES`) sets the grid of ``mse``; ``percentile`` is
    that of the ``percentile`` method.

    Raises:
        CalibrationError: unknown method or dtype, the tensor received no values, or a histogram method was
            given a MinMaxObserver.
    """
    key = _method_key(method)
    if dtype not in DTYPE_RANGES:
        raise CalibrationError(f"unknown quantized dtype '{dtype}'; valid dtypes: {', '.join(DTYPE_RANGES)}")
    if key == "minmax":
        return minmax_range(observer)
    if not isinstance(observer, HistogramObserver):
        raise CalibrationError(
            f"calibration method '{method}' needs a HistogramObserver for tensor '{observer.name}'"
        )
    if key == "percentile":
        return percentile_range(observer, percentile)
    if key == "entropy":
        return entropy_range(observer, _entropy_groups(observer, dtype))
    return mse_range(observer, *DTYPE_RANGES[dtype])


def _entropy_groups(hist: HistogramObserver, dtype: str) -> int:
    """Quantized bins spanning the symmetric slice so that the side holding data gets the dtype's levels.

    The histogram is symmetric around 0, but a one-signed tensor (ReLU, ReLU6 outputs) is quantized
    asymmetrically with all ``qmax - qmin`` steps on its own side: model that by twice the groups, so the
    KL search does not assume half the resolution and clip far too hard (ReLU6 layers of EfficientNet-Lite
    were clipped to 1.3 of 6 with the plain 255 groups).
    """
    qmin, qmax = DTYPE_RANGES[dtype]
    steps = qmax - qmin
    one_signed = hist.min >= 0.0 or hist.max <= 0.0
    return min(2 * steps + 1 if one_signed else steps, hist.counts.size)


def observer_for(method: str, name: str) -> Observer:
    """A fresh observer of tensor ``name`` collecting what ``method`` needs.

    >>> type(observer_for("MinMax", "x")).__name__, type(observer_for("entropy", "x")).__name__
    ('MinMaxObserver', 'HistogramObserver')
    """
    return MinMaxObserver(name) if _method_key(method) == "minmax" else HistogramObserver(name)


def _method_key(method: str) -> str:
    """``method`` lower-cased, once checked to be one of :data:`METHODS`."""
    key = str(method).lower()
    if key not in METHODS:
        extra = (
            " ('distribution' is onnxruntime's float8 method; qc does not support it)"
            if key == "distribution"
            else ""
        )
        raise CalibrationError(
            f"unknown calibration method '{method}'{extra}; "
            f"valid methods (case-insensitive): {', '.join(METHODS)}"
        )
    return key


def _require_values(obs: Observer) -> None:
    """Raise unless ``obs`` has seen at least one value."""
    if obs.count == 0:
        raise CalibrationError(
            f"tensor '{obs.name}' received no values during calibration (it was empty in every batch), "
            "so qc cannot choose its range"
        )


def _folded(counts: np.ndarray) -> np.ndarray:
    """Histogram of ``|x|`` from the signed one: bin ``j`` sums signed bins ``half + j`` and ``half - 1 - j``.

    >>> _folded(np.array([1, 2, 3, 4, 5, 6]))
    array([7, 7, 7])
    """
    half = counts.size // 2
    return counts[half:] + counts[:half][::-1]


def _width(hist: HistogramObserver) -> float:
    """Bin width ``w = 2 radius / bins``."""
    return 2.0 * hist.radius / hist.counts.size


def _clip(hist: HistogramObserver, threshold: float) -> tuple[float, float]:
    """``(max(min, -T), min(max, T))``: the threshold on ``|x|`` clamped to the observed values.

    ``T`` is first raised to ``max(min, -max)`` (0 unless all values have one sign) so that the range is
    never empty, even where rounding of bin edges puts ``T`` a hair below every ``|x|``.
    """
    threshold = max(float(threshold), hist.min, -hist.max)
    return max(hist.min, -threshold), min(hist.max, threshold)
