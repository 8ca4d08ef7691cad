"""Tests for examples/fashion_mnist/data.py (Fashion-MNIST loading, preprocessing, npz writers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

DATA_PY = Path(__file__).resolve().parents[2] / "examples" / "fashion_mnist" / "data.py"


def _load_data_module() -> ModuleType:
    """Import examples/fashion_mnist/data.py by path (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location("fashion_mnist_data", DATA_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


data = _load_data_module()

pytestmark = pytest.mark.skipif(
    not data.DATA_DIR.is_dir(),
    reason=f"Fashion-MNIST not found at {data.DATA_DIR} (apt-get install dataset-fashion-mnist, "
    "or set QC_FASHION_MNIST_DIR)",
)


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The 10k-image test split, loaded once."""
    return data.load_split("test")


@pytest.mark.parametrize(("split", "count"), [("train", 60_000), ("test", 10_000)])
def test_load_split_shapes_dtypes_labels(split: str, count: int) -> None:
    images, labels = data.load_split(split)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert set(np.unique(labels)) == set(range(10))


def test_load_split_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split("validation")


def test_missing_file_error_names_file_and_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as excinfo:
        data.load_split("test")
    assert "t10k-images-idx3-ubyte.gz" in str(excinfo.value)


def test_preprocess_range_and_dtype(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images = test_split[0][:64]
    x = data.preprocess(images)
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[:, 0], (images / 255.0 - 0.5) / 0.5, rtol=0, atol=1e-6)
    extremes = data.preprocess(np.array([[[0, 255]]], dtype=np.uint8))
    np.testing.assert_array_equal(extremes.ravel(), [-1.0, 1.0])


def test_write_calibration_npz(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    data.write_calibration_npz(path, n=32, seed=3)
    with np.load(path) as npz:
        assert set(npz.files) == {"input"}
        x = npz["input"]
    assert x.shape == (32, 1, 28, 28) and x.dtype == np.float32
    assert len(np.unique(x.reshape(32, -1), axis=0)) == 32
    again = tmp_path / "again.npz"
    data.write_calibration_npz(again, n=32, seed=3)
    with np.load(again) as npz:
        np.testing.assert_array_equal(npz["input"], x)


def test_write_calibration_npz_default_size(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    data.write_calibration_npz(path)
    with np.load(path) as npz:
        assert npz["input"].shape == (512, 1, 28, 28)


def test_write_eval_npz_full_test_set(tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    path = tmp_path / "eval.npz"
    data.write_eval_npz(path)
    with np.load(path) as npz:
        assert set(npz.files) == {"input", "labels"}
        x, labels = npz["input"], npz["labels"]
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.float32
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, test_split[1])
    np.testing.assert_array_equal(x[:5], data.preprocess(test_split[0][:5]))


def test_cli_writes_calibration(tmp_path: Path) -> None:
    path = tmp_path / "cli.npz"
    data.main(["calib", str(path), "--n", "8"])
    with np.load(path) as npz:
        assert npz["input"].shape == (8, 1, 28, 28)
