"""Export a ResNet-18-shaped CNN (random init, fully offline) to ONNX for speed measurements.

The topology is torchvision's ResNet-18 written out here: a 7x7/2 stem with 3x3/2 max pooling, four stages
of two BasicBlocks (64, 128, 256, 512 channels; the first block of stages 2-4 strides by 2 and projects its
shortcut with a 1x1 convolution + BatchNorm), global average pooling and a 1000-class linear layer.

Weights are random (``torch.manual_seed(SEED)``, PyTorch's default initialization). The BatchNorm statistics
are then re-estimated on ``BN_BATCHES`` batches of standard-normal images (train mode, ``momentum=None``,
i.e. a cumulative average), so every layer sees normalized activations as in a trained network; the model is
for speed and op coverage, never for accuracy.

The exported graph (TorchScript exporter, opset 17, ``dynamo=False``) has one static input ``"input"``
float ``[1, 3, 224, 224]`` and one output ``"logits"`` ``[1, 1000]``. It lives in the cache directory
(``QC_CACHE_DIR``, default ``<repo>/.cache``), managed by ``ensure_model``.

CLI::

    python -m examples.resnet18.export OUT.onnx
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
from torch import nn

SEED = 0
OPSET = 17
IMAGE_SIZE = 224
NUM_CLASSES = 1000
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BN_BATCHES = 6
BN_BATCH_SIZE = 8
MAX_ABS_DIFF = 1e-3
"""Largest accepted |ONNX - torch| on a random input; the export is rejected above it."""

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """Return the cache directory: ``$QC_CACHE_DIR`` if set, else ``<repo>/.cache`` (git-ignored)."""
    return Path(os.environ.get("QC_CACHE_DIR", REPO_ROOT / ".cache"))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and ReLU, plus the (projected when the shape changes) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet18(nn.Module):
    """ResNet-18: stem, BasicBlock stages of depths [2, 2, 2, 2], average pooling, linear classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, inplanes = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_model() -> ResNet18:
    """ResNet-18 in eval mode: random weights (``manual_seed(SEED)``), BatchNorm statistics re-estimated."""
    torch.manual_seed(SEED)
    model = ResNet18()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all the batches below
    model.train()
    with torch.no_grad():
        for _ in range(BN_BATCHES):
            model(torch.randn(BN_BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE))
    return model.eval()


def check_export(model: nn.Module, path: Path, seed: int = 0) -> float:
    """Return max |ONNX - torch| on a standard-normal input; raise if it reaches ``MAX_ABS_DIFF``."""
    x = np.random.default_rng(seed).standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = float(np.max(np.abs(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] - expected)))
    if not diff < MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX export of resnet18 differs from torch by {diff:.3g} (> {MAX_ABS_DIFF})")
    return diff


def export_onnx(path: str | Path) -> Path:
    """Export the model to ``path`` (opset 17, static ``[1, 3, 224, 224]``), checked against torch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    diff = check_export(model, path)
    print(f"exported resnet18 to {path} ({path.stat().st_size / 1e6:.1f} MB); "
          f"max |onnx - torch| = {diff:.3g}")
    return path


def ensure_model(cache_dir: str | Path | None = None) -> Path:
    """Return the cached ONNX export (``<cache_dir>/resnet18/resnet18.onnx``), exporting it once if missing.

    The export goes to a temporary file first and is renamed into place, so concurrent callers never see a
    half-written model.
    """
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "resnet18"
    target = folder / "resnet18.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staged = export_onnx(Path(tmp) / target.name)
        os.replace(staged, target)
    return target


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ``export.py OUT.onnx``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the ONNX model")
    export_onnx(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
