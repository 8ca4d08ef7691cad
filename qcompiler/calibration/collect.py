"""Run the float model over calibration data in onnxruntime and compute a clipping range per tensor.

Only one observer per tensor survives between batches, so memory is bounded by the model, one batch and the
observers, whatever the size of the calibration set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from qcompiler.calibration.ranges import compute_range, minmax_range, observer_for
from qcompiler.calibration.sources import InputSpecs, calibration_batches
from qcompiler.errors import CalibrationError, ModelError

__all__ = ["collect_ranges", "collect_channel_ranges", "collect_samples", "model_input_specs"]

#: exceptions onnxruntime raises for a model or feed it rejects (its own types derive from Exception only).
_ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
)
#: characters kept from the start and the end of an onnxruntime message (the end states the cause).
_MESSAGE_HEAD, _MESSAGE_TAIL = 160, 240
#: onnxruntime's own log shows fatal errors only: every failure reaches the user in qc's exception instead.
_LOG_FATAL_ONLY = 4


def collect_ranges(
    model: onnx.ModelProto,
    tensor_names: list[str],
    source: Any,
    method: str = "minmax",
    progress: Callable[[int, int], None] | None = None,
    dtype: str = "uint8",
    percentile: float = 99.999,
    unclipped: frozenset[str] = frozenset(),
) -> dict[str, tuple[float, float]]:
    """Clipping range ``(rmin, rmax)`` of each float32 tensor in ``tensor_names``, observed over ``source``.

    A copy of ``model`` whose graph outputs are exactly those tensors (graph inputs or intermediate values)
    runs in onnxruntime on the CPU, graph optimizations off so that every value is the float model's own,
    once per batch of :func:`~qcompiler.calibration.sources.calibration_batches`. Each batch updates one
    observer per tensor and is then dropped.

    Args:
        model: the float model; initializers listed among the graph inputs are not fed.
        tensor_names: tensors to calibrate; duplicates are calibrated once.
        source: calibration data, as :func:`~qcompiler.calibration.sources.calibration_batches` accepts.
        method: ``minmax``, ``entropy``, ``percentile`` or ``mse``, case-insensitive.
        progress: called as ``progress(done_batches, total_batches)`` after each batch; total is -1 for a
            CalibrationDataReader, whose length is unknown.
        dtype: quantized dtype of the tensors (the ``mse`` method weighs rounding error on its grid).
        percentile: the percentile of ``|x|`` kept by the ``percentile`` method.
        unclipped: tensors whose range is their exact min/max whatever the method (the driver passes the
            model outputs: clipping class scores ties the top classes and destroys the ranking).

    Raises:
        ModelError: a graph input is not a static-shape tensor, a requested tensor is not in the graph or not
            float32, or onnxruntime cannot load the model.
        CalibrationError: bad calibration data, an unknown method, NaN/Inf in a tensor, or a feed that
            onnxruntime rejects.
    """
    observers = {name: observer_for(method, name) for name in dict.fromkeys(tensor_names)}
    for values in _batches_of(model, list(observers), source, progress):
        for observer, value in zip(observers.values(), values, strict=True):
            observer.update(value)
    return {
        name: minmax_range(obs) if name in unclipped else compute_range(method, obs, dtype, percentile)
        for name, obs in observers.items()
    }


def collect_channel_ranges(model: onnx.ModelProto, tensor_names: list[str],
                           source: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (last axis) minimum and maximum of each float32 tensor over ``source``.

    Raises as :func:`collect_ranges`, and :class:`CalibrationError` on NaN/Inf.
    """
    names = list(dict.fromkeys(tensor_names))
    lows: dict[str, np.ndarray] = {}
    highs: dict[str, np.ndarray] = {}
    for values in _batches_of(model, names, source):
        for name, value in zip(names, values, strict=True):
            if not np.all(np.isfinite(value)):
                raise CalibrationError(f"tensor '{name}' has NaN or Inf values on the calibration data")
            rows = value.reshape(-1, value.shape[-1])
            low, high = rows.min(axis=0), rows.max(axis=0)
            lows[name] = np.minimum(lows[name], low) if name in lows else low
            highs[name] = np.maximum(highs[name], high) if name in highs else high
    return {name: (lows[name], highs[name]) for name in names}


def collect_samples(model: onnx.ModelProto, tensor_names: list[str], source: Any,
                    max_rows: int = 512) -> dict[str, np.ndarray]:
    """Up to ``max_rows`` rows (last axis kept whole) of each float32 tensor, from the first batches.

    Used to fit the per-layer constants of integer approximations (Softmax, GELU) to real inputs.
    """
    names = list(dict.fromkeys(tensor_names))
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for values in _batches_of(model, names, source):
        for name, value in zip(names, values, strict=True):
            rows[name].append(value.reshape(-1, value.shape[-1]))
        if all(sum(len(r) for r in parts) >= max_rows for parts in rows.values()):
            break
    return {name: np.concatenate(parts)[:max_rows] for name, parts in rows.items()}


def _batches_of(model: onnx.ModelProto, names: list[str], source: Any,
                progress: Callable[[int, int], None] | None = None):
    """The values of tensors ``names`` on each calibration batch, one list per batch."""
    batches = calibration_batches(source, model_input_specs(model))
    session = _session(_with_outputs(model, names))
    for done, feed in enumerate(batches, start=1):
        yield _run(session, feed, done - 1)
        if progress is not None:
            progress(done, batches.total)


def model_input_specs(model: onnx.ModelProto) -> InputSpecs:
    """Static shape and numpy dtype of each graph input that is not an initializer.

    Raises:
        ModelError: listing every input that is not a tensor, has an unknown element type, has rank 0, or has
            a dim that is not a static positive size.
    """
    initializers = {t.name for t in model.graph.initializer}
    specs: InputSpecs = {}
    problems = []
    for value in (v for v in model.graph.input if v.name not in initializers):
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
            problems.append(f"input '{value.name}' is not a tensor of known rank")
            continue
        dims = tensor.shape.dim
        dynamic = [
            f"dim {k}" + (f" ('{d.dim_param}')" if d.dim_param else "")
            for k, d in enumerate(dims)
            if not d.HasField("dim_value") or d.dim_value < 1
        ]
        if dynamic:
            problems.append(f"input '{value.name}' has dynamic {', '.join(dynamic)}")
        if not dims:
            problems.append(f"input '{value.name}' has rank 0; qc needs a leading batch axis")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except KeyError:
            problems.append(f"input '{value.name}' has unknown element type {tensor.elem_type}")
            continue
        specs[value.name] = (tuple(d.dim_value for d in dims), dtype)
    if problems:
        raise ModelError(
            "calibration needs every model input to have a static shape:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix the shapes first, e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed "
            "--dim_param batch --dim_value 1 in.onnx out.onnx"
        )
    return specs


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names``, untyped (onnxruntime infers them)."""
    graph = model.graph
    known = {v.name for v in graph.input} | {out for node in graph.node for out in node.output}
    missing = [n for n in names if n not in known]
    if missing:
        raise ModelError(
            f"cannot calibrate tensor(s) the graph does not compute: {', '.join(map(repr, missing))}"
        )
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.graph.output[:]
    for name in names:
        augmented.graph.output.add().name = name
    return augmented


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session of ``model`` with graph optimizations off, whose outputs must all be float32."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = _LOG_FATAL_ONLY
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as err:
        raise ModelError(f"onnxruntime cannot load the model for calibration: {_short(err)}") from err
    not_float = [f"'{o.name}' ({o.type})" for o in session.get_outputs() if o.type != "tensor(float)"]
    if not_float:
        raise ModelError(f"only float32 tensors can be calibrated; not float32: {', '.join(not_float)}")
    return session


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray], index: int) -> list[np.ndarray]:
    """The session's outputs on ``feed`` (calibration batch ``index``)."""
    try:
        return session.run(None, feed)
    except _ORT_ERRORS as err:
        raise CalibrationError(f"onnxruntime rejected calibration batch {index}: {_short(err)}") from err


def _short(err: BaseException) -> str:
    """``err``'s message on one line; a long one keeps its start and its end, where the cause is stated."""
    text = " ".join(str(err).split())
    if len(text) <= _MESSAGE_HEAD + _MESSAGE_TAIL:
        return text
    return f"{text[:_MESSAGE_HEAD]} ... {text[-_MESSAGE_TAIL:]}"
