"""Turning user calibration input into a stream of onnxruntime feed dicts.

qc never invents calibration data. It accepts three sources:

* a path to an ``.npz`` keyed by ONNX input name, each array sample-major: ``(num_samples, *sample_shape)``
  where ``sample_shape`` is the model input's shape without its leading batch axis;
* a mapping of input name to array with the same layout;
* an onnxruntime ``CalibrationDataReader``: ``get_next()`` returns a feed dict or None, ``rewind()`` is
  optional. Its dicts already hold full batches of the model's input shape (or, when the batch size is 1,
  single samples, to which the batch axis is added).

Sample-major data are grouped ``B`` samples at a time, ``B`` being the model's static batch size. A remainder
that does not fill a batch is dropped with a warning, never padded. Every problem with a sample-major source
is found before the first batch and reported in one :class:`~qcompiler.errors.CalibrationError`; a reader is
checked batch by batch as it yields.

Memory stays bounded: uncompressed ``.npz`` members are memory-mapped (``np.savez`` writes them so),
compressed ones (``np.savez_compressed``) are read fully once, and each batch is copied out only when it
is fed.
"""

from __future__ import annotations

import os
import struct
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qcompiler.errors import CalibrationError, ModelError, QcWarning

__all__ = ["HOW_TO_CALIBRATE", "CalibrationBatches", "InputSpecs", "calibration_batches", "load_samples"]

#: ONNX input name -> (static shape with the batch size first, numpy dtype).
InputSpecs = dict[str, tuple[tuple[int, ...], np.dtype]]
Feed = dict[str, np.ndarray]

HOW_TO_CALIBRATE = (
    "Provide calibration data with --calib FILE.npz: an .npz keyed by ONNX input name whose arrays have "
    "shape (num_samples, *sample_shape), e.g. np.savez('calib.npz', input=samples). From Python, pass a "
    "dict of such arrays or an onnxruntime CalibrationDataReader."
)

#: how many offending sample indices a NaN/Inf message lists before eliding the rest.
_SHOWN = 5
#: bytes of one input scanned at a time when looking for NaN/Inf in memory-mapped data.
_SCAN_BYTES = 64 * 2**20
_LOCAL_HEADER = 30  # fixed part of a zip local file header; name and extra field lengths at bytes 26..29


class CalibrationBatches(Iterator[Feed]):
    """Validated feed dicts, one model batch each; ``total`` is the number of batches, or -1 if unknown."""

    def __init__(self, batches: Iterator[Feed], total: int):
        """Wrap ``batches``, which yields ``total`` feed dicts (-1: a reader, whose length is unknown)."""
        self._batches = batches
        self.total = total

    def __next__(self) -> Feed:
        """The next feed dict."""
        return next(self._batches)


def calibration_batches(source: Any, model_inputs: InputSpecs) -> CalibrationBatches:
    """Feed dicts of full batches of ``model_inputs`` drawn from ``source`` (see the module docstring).

    A sample-major source is validated here, before the first batch; a reader as it yields. Float64 data are
    cast to float32 when the model wants float32; every other dtype must match exactly.

    Args:
        source: an ``.npz`` path, a mapping of input name to sample-major array, or a CalibrationDataReader.
        model_inputs: each graph input's static shape (batch size first) and numpy dtype.

    Raises:
        CalibrationError: ``source`` is None or of an unknown kind, or its data do not fit the model; the
            message lists every problem found.
    """
    if source is None:
        raise CalibrationError(f"calibration data is required: qc never invents inputs. {HOW_TO_CALIBRATE}")
    if callable(getattr(source, "get_next", None)):
        return CalibrationBatches(_reader_batches(source, model_inputs), -1)
    samples = load_samples(source, model_inputs)
    batch = _batch_size(model_inputs)
    count = len(next(iter(samples.values())))
    if count % batch:
        warnings.warn(
            f"{count % batch} calibration sample(s) dropped: {count} samples do not fill whole batches of "
            f"{batch} (the model's static batch size), and qc does not pad with invented data",
            QcWarning,
            stacklevel=2,
        )
    total = count // batch
    return CalibrationBatches(_sample_batches(samples, model_inputs, batch, total), total)


def load_samples(
    source: str | os.PathLike | Mapping[str, Any], model_inputs: InputSpecs
) -> dict[str, np.ndarray]:
    """The sample-major arrays of ``source`` by input name, checked against ``model_inputs``.

    Arrays may be memory-mapped and keep their stored dtype (float64 is cast per batch).

    Raises:
        CalibrationError: the file is missing or unreadable, or the data do not fit the model; one error lists
            every problem: missing or unexpected names, sample shapes, dtypes, disagreeing or too few sample
            counts, and the samples holding NaN/Inf.
    """
    if isinstance(source, str | os.PathLike):
        arrays, where = _open_npz(Path(source)), f"calibration file '{source}'"
    elif isinstance(source, Mapping):
        arrays, where = {str(k): np.asarray(v) for k, v in source.items()}, "calibration dict"
    else:
        raise CalibrationError(f"cannot calibrate from a {type(source).__name__}. {HOW_TO_CALIBRATE}")
    problems = _name_problems(arrays, model_inputs)
    known = {name: arr for name, arr in arrays.items() if name in model_inputs}
    for name, arr in known.items():
        problems += _sample_layout_problems(name, arr, *model_inputs[name])
    counted = {name: arr for name, arr in known.items() if arr.ndim > 0}
    if counted:
        problems += _count_problems(counted, _batch_size(model_inputs))
    nonfinite = (_nonfinite_problem(name, arr, "sample") for name, arr in known.items())
    problems += [problem for problem in nonfinite if problem]
    if problems:
        raise CalibrationError(
            _report(f"{where} does not match the model's inputs", problems, model_inputs, True)
        )
    return known


def _batch_size(model_inputs: InputSpecs) -> int:
    """The one static batch size (first dim) that all model inputs share."""
    sizes = {name: shape[0] for name, (shape, _) in model_inputs.items()}
    if not sizes:
        raise ModelError("the model has no graph inputs (besides initializers) to feed calibration data to")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{n}: {b}" for n, b in sizes.items())
        raise ModelError(f"model inputs disagree on the batch size (first dim): {listed}; qc needs one")
    return next(iter(sizes.values()))


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` by key: stored members memory-mapped, compressed ones read once."""
    if not path.is_file():
        raise CalibrationError(
            f"calibration file '{path}' does not exist or is not a file. {HOW_TO_CALIBRATE}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            return {info.filename[:-4]: _npz_member(path, archive, info) for info in members}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CalibrationError(
            f"cannot read calibration file '{path}': {err}. It must be an uncorrupted .npz written by "
            f"np.savez or np.savez_compressed, without pickled objects. {HOW_TO_CALIBRATE}"
        ) from err


def _npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member: memory-mapped in place when stored uncompressed, else decompressed fully."""
    mapped = _mapped_member(path, info) if info.compress_type == zipfile.ZIP_STORED else None
    if mapped is not None:
        return mapped
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _mapped_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A stored member memory-mapped where its data start in the file; None for an unusual header version."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(_LOCAL_HEADER)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename} has a corrupt zip header")
        f.seek(info.header_offset + _LOCAL_HEADER + sum(struct.unpack("<HH", local[26:30])))
        version = np.lib.format.read_magic(f)
        if version not in readers:
            return None
        shape, fortran, dtype = readers[version](f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects (pickles are not loaded)")
    if 0 in shape:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _name_problems(arrays: Mapping[str, Any], model_inputs: InputSpecs) -> list[str]:
    """Messages for model inputs the data lack and data names the model lacks."""
    missing = [n for n in model_inputs if n not in arrays]
    unexpected = [n for n in arrays if n not in model_inputs]
    problems = [f"missing input(s): {', '.join(map(repr, missing))}"] if missing else []
    if unexpected:
        problems.append(f"unexpected input(s), not inputs of the model: {', '.join(map(repr, unexpected))}")
    return problems


def _sample_layout_problems(name: str, arr: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> list[str]:
    """Messages for a sample-major array whose samples are not of shape ``shape[1:]`` or dtype ``dtype``."""
    problems = []
    if arr.shape[1:] != shape[1:] or arr.ndim == 0:
        hint = " (a single sample? add the sample axis: arr[None])" if arr.shape == shape[1:] else ""
        problems.append(
            f"input '{name}': each sample must have shape {shape[1:]} (model input {shape}), but the array "
            f"of shape {arr.shape} holds samples of shape {arr.shape[1:]}{hint}"
        )
    dtype_problem = _dtype_problem(name, arr.dtype, dtype)
    return problems + ([dtype_problem] if dtype_problem else [])


def _dtype_problem(name: str, got: np.dtype, want: np.dtype) -> str | None:
    """A message when ``got`` is neither ``want`` nor float64 standing in for float32."""
    if got == want or (got == np.float64 and want == np.float32):
        return None
    return f"input '{name}': dtype must be {want}, got {got} (convert it with arr.astype(np.{want}))"


def _count_problems(arrays: Mapping[str, np.ndarray], batch: int) -> list[str]:
    """Messages for inputs with different sample counts, an empty set, or too few samples for one batch."""
    counts = {name: len(arr) for name, arr in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        return [
            f"inputs disagree on the number of samples (first axis): {listed}; "
            "every input needs one array row per sample"
        ]
    count = next(iter(counts.values()))
    if count == 0:
        return ["the calibration set is empty (0 samples)"]
    if count < batch:
        return [f"only {count} sample(s), but one batch of the model needs {batch}; provide at least {batch}"]
    return []


def _nonfinite_samples(arr: np.ndarray) -> np.ndarray:
    """Indices along the first axis of the samples holding NaN or Inf, scanned about 64 MiB at a time."""
    step = max(1, _SCAN_BYTES // max(1, arr[:1].nbytes))
    sample_axes = tuple(range(1, arr.ndim))
    bad = [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(arr), step):
        finite = np.isfinite(arr[start : start + step]).all(axis=sample_axes)
        bad.append(start + np.flatnonzero(~finite))
    return np.concatenate(bad)


def _nonfinite_problem(name: str, arr: np.ndarray, unit: str) -> str | None:
    """A message naming ``name`` and the first ``unit`` indices holding NaN or Inf; None if there are none."""
    if arr.ndim == 0 or not np.issubdtype(arr.dtype, np.floating):
        return None
    bad = _nonfinite_samples(arr)
    if not len(bad):
        return None
    shown = ", ".join(str(int(i)) for i in bad[:_SHOWN]) + (", ..." if len(bad) > _SHOWN else "")
    return (
        f"input '{name}' holds NaN/Inf in {unit}(s) {shown} ({len(bad)} in all); remove or fix those samples"
    )


def _report(headline: str, problems: list[str], model_inputs: InputSpecs, sample_major: bool) -> str:
    """One error message: the headline, every problem, what the model expects, and how to fix it."""
    if sample_major:
        expected = ", ".join(f"'{n}': {d} samples of shape {s[1:]}" for n, (s, d) in model_inputs.items())
        batch = _batch_size(model_inputs)
        expected = f"The model expects (first axis = samples, grouped {batch} per batch): {expected}."
    else:
        expected = ", ".join(f"'{n}': {d} batches of shape {s}" for n, (s, d) in model_inputs.items())
        expected = f"The model expects: {expected}."
    lines = [f"{headline}:", *(f"  - {p}" for p in problems), expected, HOW_TO_CALIBRATE]
    return "\n".join(lines)


def _sample_batches(
    samples: Mapping[str, np.ndarray], model_inputs: InputSpecs, batch: int, total: int
) -> Iterator[Feed]:
    """Consecutive groups of ``batch`` samples, each copied out and cast to the model's dtype."""
    for k in range(total):
        rows = slice(k * batch, (k + 1) * batch)
        yield {name: np.array(samples[name][rows], dtype=dtype) for name, (_, dtype) in model_inputs.items()}


def _reader_batches(reader: Any, model_inputs: InputSpecs) -> Iterator[Feed]:
    """The reader's feed dicts, rewound first when it can be, each checked against ``model_inputs``."""
    if callable(getattr(reader, "rewind", None)):
        reader.rewind()
    index = 0
    while (feed := reader.get_next()) is not None:
        yield _checked_feed(feed, model_inputs, index)
        index += 1
    if index == 0:
        raise CalibrationError(
            f"the calibration set is empty: the reader's first get_next() returned None. {HOW_TO_CALIBRATE}"
        )


def _checked_feed(feed: Any, model_inputs: InputSpecs, index: int) -> Feed:
    """Reader batch ``index`` cast to the model's dtypes, or one error listing all its problems."""
    headline = f"calibration reader batch {index} does not match the model's inputs"
    if not isinstance(feed, Mapping):
        problem = f"get_next() returned a {type(feed).__name__}, not a dict of input name to array"
        raise CalibrationError(_report(headline, [problem], model_inputs, False))
    arrays = {str(k): np.asarray(v) for k, v in feed.items()}
    problems = _name_problems(arrays, model_inputs)
    checked = {}
    for name in (n for n in model_inputs if n in arrays):
        shape, dtype = model_inputs[name]
        arr = arrays[name]
        if arr.shape == shape[1:] and shape[0] == 1:
            arr = arr[None]
        if arr.shape != shape:
            single = (
                " or, as the batch size is 1, one sample of shape " + str(shape[1:]) if shape[0] == 1 else ""
            )
            problems.append(
                f"input '{name}': expected a batch of shape {shape}{single}, got shape {arr.shape}"
            )
        dtype_problem = _dtype_problem(name, arr.dtype, dtype)
        value_problem = dtype_problem or _nonfinite_problem(name, arr, f"batch {index} sample")
        if value_problem:
            problems.append(value_problem)
        checked[name] = arr.astype(dtype, copy=False)
    if problems:
        raise CalibrationError(_report(headline, problems, model_inputs, False))
    return checked
