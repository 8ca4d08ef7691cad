"""Fashion-MNIST loading and preprocessing for the bundled example model (numpy only).

The raw IDX files come from the Debian package ``dataset-fashion-mnist``, which installs them under
``/usr/share/datasets/fashion-mnist``. Set ``QC_FASHION_MNIST_DIR`` to read them from elsewhere.

Preprocessing (shared by training, calibration and evaluation)::

    x = (image_uint8 / 255 - 0.5) / 0.5        # float32 in [-1, 1], layout [N, 1, 28, 28]

CLI::

    python examples/fashion_mnist/data.py calib OUT.npz [--n 512] [--seed 0]
    python examples/fashion_mnist/data.py eval OUT.npz
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("QC_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
"""Directory holding the four ``*-ubyte.gz`` files (override with ``QC_FASHION_MNIST_DIR``)."""

_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_SIDE = 28


def _split_files(split: str) -> tuple[Path, Path]:
    """Return the (images, labels) file paths of ``split`` ("train" or "test")."""
    if split not in _PREFIX:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_PREFIX)}")
    prefix = _PREFIX[split]
    return DATA_DIR / f"{prefix}-images-idx3-ubyte.gz", DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz"


def _read_idx(path: Path, header_bytes: int) -> np.ndarray:
    """Read a gzipped IDX file as a flat uint8 array, skipping its header."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install it with `apt-get install dataset-fashion-mnist` "
            "or point QC_FASHION_MNIST_DIR at a directory holding the IDX files."
        )
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header_bytes)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a split: images uint8 [N, 28, 28] and labels int64 [N] in 0..9."""
    image_path, label_path = _split_files(split)
    images = _read_idx(image_path, header_bytes=16).reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE)
    labels = _read_idx(label_path, header_bytes=8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def preprocess(images: np.ndarray) -> np.ndarray:
    """Map uint8 images [N, 28, 28] to the model input: float32 [N, 1, 28, 28], ``(x/255 - 0.5)/0.5``."""
    x = images.astype(np.float32) / np.float32(255.0)
    return ((x - np.float32(0.5)) / np.float32(0.5))[:, None, :, :]


def write_calibration_npz(path: str | Path, n: int = 512, seed: int = 0) -> None:
    """Write ``n`` random preprocessed TRAIN images (without replacement) to ``path`` under key "input"."""
    images, _ = load_split("train")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(images), size=n, replace=False))
    np.savez(path, input=preprocess(images[index]))


def write_eval_npz(path: str | Path) -> None:
    """Write all preprocessed TEST images ("input", float32) and their labels ("labels", int64) to ``path``."""
    images, labels = load_split("test")
    np.savez(path, input=preprocess(images), labels=labels)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write a calibration or evaluation ``.npz``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "kind", choices=["calib", "eval"], help="calibration (train subset) or eval (full test)"
    )
    parser.add_argument("out", type=Path, help="output .npz path")
    parser.add_argument("--n", type=int, default=512, help="calibration images (calib only)")
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed (calib only)")
    args = parser.parse_args(argv)
    if args.kind == "calib":
        write_calibration_npz(args.out, n=args.n, seed=args.seed)
    else:
        write_eval_npz(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
