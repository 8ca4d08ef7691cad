"""Calibration sources: npz files, dicts and readers become validated feed dicts, or one clear error."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from qcompiler.calibration.sources import calibration_batches, load_samples
from qcompiler.errors import CalibrationError

SPECS = {"x": ((2, 3), np.dtype(np.float32)), "ids": ((2, 4), np.dtype(np.int64))}


def _samples(count: int = 6) -> dict[str, np.ndarray]:
    """``count`` samples for SPECS, each value telling its sample index apart."""
    x = np.arange(count * 3, dtype=np.float32).reshape(count, 3)
    ids = np.arange(count * 4, dtype=np.int64).reshape(count, 4)
    return {"x": x, "ids": ids}


def _error(source, specs=SPECS) -> str:
    """The message of the CalibrationError that ``source`` raises, the batches drained."""
    with pytest.raises(CalibrationError) as info:
        list(calibration_batches(source, specs))
    return str(info.value)


class ListReader:
    """An onnxruntime-style CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.position = 0
        self.rewinds = 0

    def get_next(self):
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.rewinds += 1
        self.position = 0


# --- accepted sources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_npz_groups_samples_into_batches(tmp_path, writer):
    data = _samples(6)
    path = tmp_path / "calib.npz"
    writer(path, **data)
    batches = calibration_batches(path, SPECS)
    assert batches.total == 3
    feeds = list(batches)
    assert len(feeds) == 3
    for k, feed in enumerate(feeds):
        assert list(feed) == ["x", "ids"]
        np.testing.assert_array_equal(feed["x"], data["x"][2 * k : 2 * k + 2])
        np.testing.assert_array_equal(feed["ids"], data["ids"][2 * k : 2 * k + 2])
        assert feed["x"].dtype == np.float32 and feed["ids"].dtype == np.int64
        assert type(feed["x"]) is np.ndarray


def test_uncompressed_npz_is_memory_mapped_and_compressed_is_loaded(tmp_path):
    np.savez(tmp_path / "plain.npz", **_samples())
    np.savez_compressed(tmp_path / "packed.npz", **_samples())
    assert isinstance(load_samples(tmp_path / "plain.npz", SPECS)["x"], np.memmap)
    assert not isinstance(load_samples(str(tmp_path / "packed.npz"), SPECS)["x"], np.memmap)


def test_fortran_ordered_npz_member_reads_correctly(tmp_path):
    data = _samples()
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(data["x"]), ids=data["ids"])
    feeds = list(calibration_batches(tmp_path / "f.npz", SPECS))
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), data["x"])


def test_dict_source_and_silent_float64_cast():
    data = _samples(4)
    data["x"] = data["x"].astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feeds = list(calibration_batches(data, SPECS))
    assert len(feeds) == 2
    assert feeds[1]["x"].dtype == np.float32
    np.testing.assert_array_equal(feeds[1]["x"], data["x"][2:4])


def test_remainder_is_dropped_with_a_warning():
    with pytest.warns(UserWarning, match=r"1 calibration sample\(s\) dropped.*7 samples.*batches of 2"):
        batches = calibration_batches(_samples(7), SPECS)
    assert batches.total == 3
    assert len(list(batches)) == 3


def test_reader_full_batches_pass_through_and_rewind_first():
    data = _samples(4)
    feeds = [{"x": data["x"][:2], "ids": data["ids"][:2]}, {"x": data["x"][2:], "ids": data["ids"][2:]}]
    reader = ListReader(feeds)
    reader.position = 1  # partly consumed: calibration starts from the beginning anyway
    batches = calibration_batches(reader, SPECS)
    assert batches.total == -1
    out = list(batches)
    assert reader.rewinds == 1
    assert len(out) == 2
    np.testing.assert_array_equal(out[1]["x"], data["x"][2:])


def test_reader_single_samples_get_a_batch_axis_when_batch_is_one():
    specs = {"x": ((1, 3), np.dtype(np.float32))}
    reader = ListReader([{"x": np.ones(3, np.float64)}, {"x": np.zeros((1, 3), np.float32)}])
    out = list(calibration_batches(reader, specs))
    assert [f["x"].shape for f in out] == [(1, 3), (1, 3)]
    assert out[0]["x"].dtype == np.float32


def test_reader_without_rewind_is_accepted():
    class Plain:
        def __init__(self):
            self.left = [{"x": np.ones((1, 3), np.float32)}]

        def get_next(self):
            return self.left.pop() if self.left else None

    assert len(list(calibration_batches(Plain(), {"x": ((1, 3), np.dtype(np.float32))}))) == 1


# --- errors -------------------------------------------------------------------------------------------------


def test_none_source_says_data_is_required_and_how():
    message = _error(None)
    assert "calibration data is required" in message
    assert "--calib" in message and ".npz keyed by ONNX input name" in message


def test_unsupported_source_type():
    assert "cannot calibrate from a list" in _error([1, 2, 3])


def test_missing_inputs_list_the_model_inputs():
    message = _error({"x": _samples()["x"]})
    assert "missing input(s): 'ids'" in message
    assert "'x': float32 samples of shape (3,)" in message
    assert "'ids': int64 samples of shape (4,)" in message


def test_unexpected_inputs():
    message = _error({**_samples(), "mask": np.zeros((6, 4))})
    assert "unexpected input(s), not inputs of the model: 'mask'" in message


def test_shape_mismatch_shows_expected_and_got():
    data = _samples()
    data["x"] = np.zeros((6, 5), np.float32)
    message = _error(data)
    assert "input 'x': each sample must have shape (3,)" in message
    assert "shape (6, 5) holds samples of shape (5,)" in message


def test_single_sample_without_sample_axis_gets_a_hint():
    specs = {"x": ((1, 3), np.dtype(np.float32))}
    assert "add the sample axis: arr[None]" in _error({"x": np.zeros(3, np.float32)}, specs)


def test_dtype_mismatch_is_an_error_except_float64_for_float32():
    data = _samples()
    data["x"] = data["x"].astype(np.int32)
    data["ids"] = data["ids"].astype(np.float64)
    message = _error(data)
    assert "input 'x': dtype must be float32, got int32" in message
    assert "input 'ids': dtype must be int64, got float64" in message


def test_empty_set():
    assert "calibration set is empty (0 samples)" in _error(_samples(0))


def test_fewer_samples_than_one_batch():
    assert "only 1 sample(s), but one batch of the model needs 2" in _error(_samples(1))


def test_sample_counts_must_agree():
    data = _samples()
    data["ids"] = data["ids"][:5]
    assert "inputs disagree on the number of samples (first axis): x: 6, ids: 5" in _error(data)


def test_nan_and_inf_name_the_input_and_samples():
    data = _samples(8)
    data["x"][4, 1] = np.nan
    data["x"][6, 0] = np.inf
    assert "input 'x' holds NaN/Inf in sample(s) 4, 6 (2 in all)" in _error(data)


def test_every_problem_is_reported_at_once():
    data = {"x": np.full((6, 5), np.nan, np.float32), "extra": np.zeros(6)}
    message = _error(data)
    for part in [
        "missing input(s): 'ids'",
        "unexpected input(s)",
        "each sample must have shape (3,)",
        "NaN/Inf",
    ]:
        assert part in message
    assert message.count("\n  - ") == 4


def test_missing_file(tmp_path):
    message = _error(tmp_path / "nope.npz")
    assert re.search(r"calibration file '.*nope\.npz' does not exist", message)
    assert "--calib" in message


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip archive")
    assert "cannot read calibration file" in _error(path)


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_truncated_file(tmp_path, writer):
    path = tmp_path / "cut.npz"
    writer(path, **_samples(64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cannot read calibration file" in _error(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([object()] * 6), ids=_samples()["ids"])
    assert "cannot read calibration file" in _error(path)


def test_npz_errors_name_the_file(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_samples()["x"])
    assert f"calibration file '{path}' does not match the model's inputs" in _error(path)


def test_reader_batch_with_wrong_shape_dtype_and_names():
    reader = ListReader([{"x": np.zeros((3, 3), np.float16), "other": np.zeros(1)}])
    message = _error(reader)
    assert "calibration reader batch 0 does not match" in message
    assert "input 'x': expected a batch of shape (2, 3), got shape (3, 3)" in message
    assert "dtype must be float32, got float16" in message
    assert "missing input(s): 'ids'" in message and "unexpected input(s)" in message
    assert "'ids': int64 batches of shape (2, 4)" in message


def test_reader_nan_names_the_batch_and_sample():
    good = {"x": np.zeros((2, 3), np.float32), "ids": np.zeros((2, 4), np.int64)}
    bad = {"x": np.array([[0, 0, 0], [0, np.nan, 0]], np.float32), "ids": good["ids"]}
    assert "input 'x' holds NaN/Inf in batch 1 sample(s) 1" in _error(ListReader([good, bad]))


def test_reader_returning_a_non_dict():
    assert "get_next() returned a list" in _error(ListReader([[1, 2]]))


def test_empty_reader():
    assert "calibration set is empty" in _error(ListReader([]))
