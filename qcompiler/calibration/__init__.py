"""Calibration: stream user data through the float model and choose a clipping range per tensor.

Three stages, kept apart (house style principle 9): :mod:`~qcompiler.calibration.sources` turns user input
into feed dicts, :mod:`~qcompiler.calibration.observers` accumulate statistics in bounded memory, and the
pure functions of :mod:`~qcompiler.calibration.ranges` turn statistics into ``(rmin, rmax)``.
:func:`collect_ranges` runs all three over a model.
"""

from __future__ import annotations

from qcompiler.calibration.collect import (
    collect_channel_ranges,
    collect_ranges,
    collect_samples,
    model_input_specs,
)
from qcompiler.calibration.observers import HistogramObserver, MinMaxObserver
from qcompiler.calibration.ranges import (
    METHODS,
    compute_range,
    entropy_range,
    minmax_range,
    mse_range,
    observer_for,
    percentile_range,
)
from qcompiler.calibration.sources import (
    HOW_TO_CALIBRATE,
    CalibrationBatches,
    calibration_batches,
    load_samples,
)

__all__ = [
    "HOW_TO_CALIBRATE",
    "METHODS",
    "CalibrationBatches",
    "HistogramObserver",
    "MinMaxObserver",
    "calibration_batches",
    "collect_channel_ranges",
    "collect_ranges",
    "collect_samples",
    "compute_range",
    "entropy_range",
    "load_samples",
    "minmax_range",
    "model_input_specs",
    "mse_range",
    "observer_for",
    "percentile_range",
]
