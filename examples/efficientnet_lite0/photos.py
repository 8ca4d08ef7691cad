"""Real photos and ImageNet-style crops for evaluating EfficientNet-Lite0 offline (numpy + PIL only).

No labelled ImageNet image ships in any package, so quantized models are judged by how well they agree
with the float model on crops of real photos that do ship in packages:

* scikit-image ``skimage/data``: chelsea.png, coffee.png, rocket.jpg, astronaut.png, motorcycle_left.png,
  camera.png (grayscale, converted to RGB);
* scikit-learn ``sklearn/datasets/images``: china.jpg, flower.jpg;
* matplotlib ``mpl-data/sample_data``: grace_hopper.jpg;
* Debian package ``darknet`` (``/usr/share/darknet/data``): dog.jpg, eagle.jpg, giraffe.jpg, horses.jpg,
  kite.jpg, person.jpg. Fetched without a system install (``apt-get download darknet`` + ``dpkg-deb -x``)
  into the cache directory by ``ensure_darknet_photos``. The package holds 7 .jpg files; the 7th,
  scream.jpg, is a reproduction of Munch's painting "The Scream", not a photo, and is left out unless
  ``include_non_photos=True``.

That is 15 photos (16 with scream.jpg), not the 17 that shared/reference/models-data.md counts.

The Python packages are found with ``importlib.util.find_spec`` and never imported. The cache directory is
``$QC_CACHE_DIR`` if set, else ``<repo>/.cache`` (git-ignored).

Preprocessing (EfficientNet-Lite): RGB, resize so the short side is S, crop 224x224, optional horizontal
flip, ``x = (pixel - 127) / 128`` as float32 in [-0.9921875, 1], NCHW. The canonical evaluation crop is
S = 256 with a centre crop; the other crops use random S and random positions.

Calibration / evaluation split (disjoint by construction): evaluation crops (``make_eval_crops``, seed 0)
are the canonical centre crop of every photo plus random crops at short sides 224, 256, 288, 320;
calibration crops (``make_calibration_crops``, seed 1) are random crops at short sides 240, 272, 304 and
no centre crop. Since the two sets never share a resize scale, no calibration crop is an evaluation crop;
``calibration_and_eval_split`` builds both and checks it.

CLI::

    python examples/efficientnet_lite0/photos.py list
    python examples/efficientnet_lite0/photos.py eval OUT.npz [--n 160] [--seed 0]
    python examples/efficientnet_lite0/photos.py calib OUT.npz [--n 64] [--seed 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]

CROP = 224
CANONICAL_SHORT_SIDE = 256
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0
EVAL_SHORT_SIDES = (224, 256, 288, 320)
CALIB_SHORT_SIDES = (240, 272, 304)
"""Resize scales of random crops. The two sets are disjoint, which keeps calibration and eval crops apart."""

SKIMAGE_PHOTOS = (
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "motorcycle_left.png",
    "camera.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)
DARKNET_PHOTOS = ("dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg")
DARKNET_NON_PHOTOS = ("scream.jpg",)
"""Images of the darknet package that are not photos (scream.jpg: Munch's painting)."""

DARKNET_PACKAGE = "darknet"
DARKNET_DATA = Path("usr/share/darknet/data")
SYSTEM_DARKNET_DIR = Path("/") / DARKNET_DATA
"""Where ``apt-get install darknet`` puts the photos; used as is when present."""


class CropSpec(NamedTuple):
    """One crop: photo index, resize short side, top-left corner in the resized image, horizontal flip."""

    photo: int
    short_side: int
    top: int
    left: int
    flip: bool


def default_cache_dir() -> Path:
    """Return the cache directory: ``$QC_CACHE_DIR`` if set, else ``<repo>/.cache``."""
    return Path(os.environ.get("QC_CACHE_DIR", REPO_ROOT / ".cache"))


def _package_dir(name: str) -> Path | None:
    """Return the install directory of top-level package ``name`` without importing it (None if absent)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def python_package_photos() -> list[Path]:
    """Paths of the 9 photos shipped by scikit-image, scikit-learn and matplotlib; raise if any is missing."""
    sources = [
        ("skimage", "scikit-image", Path("data"), SKIMAGE_PHOTOS),
        ("sklearn", "scikit-learn", Path("datasets/images"), SKLEARN_PHOTOS),
        ("matplotlib", "matplotlib", Path("mpl-data/sample_data"), MATPLOTLIB_PHOTOS),
    ]
    paths: list[Path] = []
    for module, dist, subdir, names in sources:
        root = _package_dir(module)
        if root is None:
            raise FileNotFoundError(
                f"package {dist} is not installed; `pip install {dist}` to get its photos"
            )
        for name in names:
            path = root / subdir / name
            if not path.is_file():
                raise FileNotFoundError(f"{dist} does not ship {path}")
            paths.append(path)
    return paths


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd``, capturing its output (no exception on failure)."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _download_deb(package: str, folder: Path, update_lists: bool) -> Path:
    """``apt-get download package`` into ``folder``; on failure optionally ``apt-get update``, retry once."""
    result = _run(["apt-get", "download", package], folder)
    if result.returncode != 0 and update_lists:
        _run(["apt-get", "update"], folder)
        result = _run(["apt-get", "download", package], folder)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(
            f"`apt-get download {package}` failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\n"
            "Run `apt-get update` first, or install the package (`apt-get install darknet`)."
        )
    return debs[0]


def ensure_darknet_photos(cache_dir: str | Path | None = None, update_lists: bool = True) -> Path:
    """Return a directory holding the darknet package's .jpg files, fetching them once if missing.

    Returns ``<cache_dir>/darknet`` or, if the package is installed system-wide, ``/usr/share/darknet/data``.
    Otherwise uses ``apt-get download darknet`` and ``dpkg-deb -x`` in a temporary folder (no system
    install) and copies ``usr/share/darknet/data/*.jpg`` into ``<cache_dir>/darknet``. If the download
    fails and ``update_lists`` is set, runs ``apt-get update`` (package lists only) and tries once more.
    Raises RuntimeError when apt-get or dpkg-deb is unavailable, the download fails or the package lacks
    an expected photo.
    """
    target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "darknet"
    wanted = DARKNET_PHOTOS + DARKNET_NON_PHOTOS
    for folder in (target, SYSTEM_DARKNET_DIR):
        if all((folder / name).is_file() for name in wanted):
            return folder
    missing_tools = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing_tools:
        raise RuntimeError(
            f"cannot fetch the darknet photos: {', '.join(missing_tools)} not found (needs a Debian-like "
            f"system); alternatively put {', '.join(wanted)} into {target}"
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        deb = _download_deb(DARKNET_PACKAGE, tmp_dir, update_lists)
        extracted = tmp_dir / "root"
        result = _run(["dpkg-deb", "-x", str(deb), str(extracted)], tmp_dir)
        if result.returncode != 0:
            raise RuntimeError(f"`dpkg-deb -x {deb.name}` failed: {result.stderr.strip()[-500:]}")
        for jpg in sorted((extracted / DARKNET_DATA).glob("*.jpg")):
            staged = tmp_dir / jpg.name
            shutil.copyfile(jpg, staged)
            os.replace(staged, target / jpg.name)  # atomic per file: safe with concurrent callers
    missing = [name for name in wanted if not (target / name).is_file()]
    if missing:
        raise RuntimeError(f"the {DARKNET_PACKAGE} package no longer ships {', '.join(missing)}")
    return target


def photo_paths(cache_dir: str | Path | None = None, include_non_photos: bool = False) -> list[Path]:
    """Return the 15 real photos (16 with ``include_non_photos``), fetching the darknet ones if needed.

    Order: scikit-image, scikit-learn, matplotlib, darknet, as listed in the module docstring.
    """
    darknet_dir = ensure_darknet_photos(cache_dir)
    darknet_names = DARKNET_PHOTOS + (DARKNET_NON_PHOTOS if include_non_photos else ())
    return python_package_photos() + [darknet_dir / name for name in darknet_names]


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as 8-bit RGB (grayscale, palette and RGBA images are converted)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Return (width, height) after scaling so that the shorter side equals ``short_side``."""
    if width <= height:
        return short_side, max(short_side, round(height * short_side / width))
    return max(short_side, round(width * short_side / height)), short_side


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize ``image`` (bicubic, antialiased) so that its shorter side is ``short_side``."""
    return image.resize(resized_size(*image.size, short_side), Image.Resampling.BICUBIC)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Map uint8 HWC RGB pixels to the model input layout: float32 CHW, ``(x - 127) / 128``."""
    x = (pixels.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_SCALE)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def centre_spec(photo: int, size: tuple[int, int]) -> CropSpec:
    """The canonical crop of a photo of ``size`` (w, h): short side 256, centre 224x224, no flip."""
    width, height = resized_size(*size, CANONICAL_SHORT_SIDE)
    return CropSpec(photo, CANONICAL_SHORT_SIDE, (height - CROP) // 2, (width - CROP) // 2, False)


def random_spec(
    photo: int, size: tuple[int, int], short_sides: tuple[int, ...], rng: np.random.Generator
) -> CropSpec:
    """A random crop of a photo of ``size`` (w, h): random short side, position and flip."""
    short_side = int(rng.choice(short_sides))
    width, height = resized_size(*size, short_side)
    top = int(rng.integers(0, height - CROP + 1))
    left = int(rng.integers(0, width - CROP + 1))
    return CropSpec(photo, short_side, top, left, bool(rng.random() < 0.5))


def crop_specs(
    sizes: list[tuple[int, int]],
    n_crops: int,
    seed: int,
    short_sides: tuple[int, ...] = EVAL_SHORT_SIDES,
    centre: bool = True,
) -> list[CropSpec]:
    """Plan ``n_crops`` distinct crops spread round-robin over photos of the given (w, h) ``sizes``.

    Crop k belongs to photo ``k % len(sizes)``. With ``centre`` the first crop of every photo is the
    canonical centre crop; all other crops are random (``seed``), redrawn when they repeat an earlier one.
    """
    rng = np.random.default_rng(seed)
    specs: list[CropSpec] = []
    seen: set[CropSpec] = set()
    for k in range(n_crops):
        photo = k % len(sizes)
        spec = centre_spec(photo, sizes[photo]) if centre and k < len(sizes) else None
        for _ in range(100):
            if spec is not None and spec not in seen:
                break
            spec = random_spec(photo, sizes[photo], short_sides, rng)
        if spec is None or spec in seen:
            raise RuntimeError(f"could not find {n_crops} distinct crops; lower n_crops")
        seen.add(spec)
        specs.append(spec)
    return specs


def render_crop(image: Image.Image, spec: CropSpec) -> np.ndarray:
    """Cut ``spec`` out of the already resized ``image`` and return it preprocessed (float32 CHW)."""
    pixels = np.asarray(image)[spec.top : spec.top + CROP, spec.left : spec.left + CROP]
    if spec.flip:
        pixels = pixels[:, ::-1]
    return normalize(pixels)


def make_crops(
    paths: list[Path],
    n_crops: int = 160,
    seed: int = 0,
    short_sides: tuple[int, ...] = EVAL_SHORT_SIDES,
    centre: bool = True,
) -> np.ndarray:
    """Deterministic preprocessed crops of ``paths``: float32 [n_crops, 3, 224, 224] in [-0.9921875, 1].

    See ``crop_specs`` for how crops are planned; the same arguments always give the same array.
    """
    images = [load_rgb(path) for path in paths]
    specs = crop_specs([image.size for image in images], n_crops, seed, short_sides, centre)
    resized: dict[tuple[int, int], Image.Image] = {}
    out = np.empty((n_crops, 3, CROP, CROP), np.float32)
    for i, spec in enumerate(specs):
        key = (spec.photo, spec.short_side)
        if key not in resized:
            resized[key] = resize_short_side(images[spec.photo], spec.short_side)
        out[i] = render_crop(resized[key], spec)
    return out


def make_eval_crops(n: int = 160, seed: int = 0, cache_dir: str | Path | None = None) -> np.ndarray:
    """Evaluation crops: every photo's canonical centre crop, then random crops at ``EVAL_SHORT_SIDES``."""
    return make_crops(photo_paths(cache_dir), n, seed, EVAL_SHORT_SIDES, centre=True)


def make_calibration_crops(n: int = 64, seed: int = 1, cache_dir: str | Path | None = None) -> np.ndarray:
    """Calibration crops: random crops at ``CALIB_SHORT_SIDES`` only (disjoint from the evaluation crops)."""
    return make_crops(photo_paths(cache_dir), n, seed, CALIB_SHORT_SIDES, centre=False)


def _row_keys(crops: np.ndarray) -> set[bytes]:
    """Hashable fingerprints of the crops (their raw bytes)."""
    return {crop.tobytes() for crop in crops}


def calibration_and_eval_split(
    n_calib: int = 64, n_eval: int = 160, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(calibration, evaluation)`` crops, checked to share no crop.

    Calibration: ``make_calibration_crops(n_calib, seed=1)``; evaluation: ``make_eval_crops(n_eval, seed=0)``.
    """
    calib = make_calibration_crops(n_calib, cache_dir=cache_dir)
    evaluation = make_eval_crops(n_eval, cache_dir=cache_dir)
    if _row_keys(calib) & _row_keys(evaluation):
        raise RuntimeError("calibration and evaluation crops overlap")
    return calib, evaluation


def write_npz(path: str | Path, crops: np.ndarray) -> None:
    """Save ``crops`` to ``path`` under key ``"input"``."""
    np.savez(path, input=crops)


def main(argv: list[str] | None = None) -> None:
    """CLI: list the photos, or write evaluation / calibration crops to an .npz file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["list", "eval", "calib"])
    parser.add_argument("out", type=Path, nargs="?", help="output .npz (eval / calib)")
    parser.add_argument("--n", type=int, default=None, help="number of crops (default 160 eval, 64 calib)")
    parser.add_argument("--seed", type=int, default=None, help="crop seed (default 0 eval, 1 calib)")
    args = parser.parse_args(argv)
    if args.what == "list":
        paths = photo_paths()
        print("\n".join(str(path) for path in paths))
        print(f"{len(paths)} photos")
        return
    if args.out is None:
        parser.error("an output .npz path is required")
    if args.what == "eval":
        crops = make_eval_crops(args.n or 160, 0 if args.seed is None else args.seed)
    else:
        crops = make_calibration_crops(args.n or 64, 1 if args.seed is None else args.seed)
    write_npz(args.out, crops)
    print(f"wrote {crops.shape} float32 crops to {args.out}")


if __name__ == "__main__":
    main()
