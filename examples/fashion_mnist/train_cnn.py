"""Train the bundled Fashion-MNIST CNN and export it to ``cnn.onnx`` (opset 17, dynamic batch).

The network is small (~52k parameters) but exercises the operators the integer compiler lowers:
Conv (regular, depthwise, pointwise), BatchNormalization, Relu, Clip (ReLU6), HardSwish, HardSigmoid,
residual Add, activation-by-activation Mul (squeeze-and-excitation), MaxPool, GlobalAveragePool,
Flatten, Gemm and a final Softmax. BatchNorm is exported unfolded; the compiler folds it.

Usage::

    python examples/fashion_mnist/train_cnn.py [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

# Idle OpenMP threads must sleep rather than spin: on a busy 2-core machine spinning threads starve each
# other and training runs ~20x slower. libgomp reads this once, when torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from data import load_split, preprocess  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "cnn.onnx"
SEED = 0
BATCH_SIZE = 128
MAX_LR = 4e-3
WEIGHT_DECAY = 1e-4
EVAL_BATCH = 1000


class SqueezeExcite(nn.Module):
    """Channel attention: GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))
        return x * gate


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free convolution with padding ``kernel // 2`` followed by BatchNorm."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


class FashionCNN(nn.Module):
    """Small residual / depthwise-separable / SE CNN for 1x28x28 inputs; ``forward`` returns logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 32, 3, stride=2), nn.ReLU())
        self.residual = nn.Sequential(*conv_bn(32, 32, 3))
        self.pool1 = nn.MaxPool2d(2)
        self.separable = nn.Sequential(
            *conv_bn(32, 32, 3, groups=32), nn.ReLU6(), *conv_bn(32, 64, 1), nn.Hardswish()
        )
        self.se = SqueezeExcite(64, 16)
        self.head = nn.Sequential(
            nn.MaxPool2d(2),
            *conv_bn(64, 64, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        x = self.pool1(F.relu(self.residual(stem) + stem))
        return self.head(self.se(self.separable(x)))


class WithSoftmax(nn.Module):
    """Export wrapper: class probabilities instead of logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch/numpy, request deterministic kernels, pin 2 threads; return a generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    return torch.Generator().manual_seed(seed)


def load_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images [N,1,28,28] (channels-last memory) and int64 labels of a split."""
    images, labels = load_split(split)
    x = torch.from_numpy(preprocess(images)).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(labels)


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5
    return torch.where(flip, x.flip(3), x)


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    data: tuple[torch.Tensor, torch.Tensor],
    gen: torch.Generator,
) -> float:
    """One shuffled pass over ``data`` with cross-entropy on logits; return the mean training loss."""
    x, y = data
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for start in range(0, len(x), BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        loss = F.cross_entropy(model(random_hflip(x[idx], gen)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def torch_accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    x, y = data
    model.eval()
    preds = torch.cat([model(x[i : i + EVAL_BATCH]).argmax(1) for i in range(0, len(x), EVAL_BATCH)])
    return (preds == y).float().mean().item()


def onnx_accuracy(path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Top-1 accuracy of the exported ONNX model under onnxruntime (CPU)."""
    x, y = data
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_np = x.contiguous().numpy()
    preds = np.concatenate(
        [
            session.run(["probs"], {"input": x_np[i : i + EVAL_BATCH]})[0].argmax(1)
            for i in range(0, len(x), EVAL_BATCH)
        ]
    )
    return float((preds == y.numpy()).mean())


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export softmax(model) in eval mode with BatchNorm kept as BatchNormalization nodes.

    ``TrainingMode.PRESERVE`` on an eval-mode model skips the exporter's eval peephole, which would
    otherwise fuse Conv+BatchNorm; folding BatchNorm is the compiler's job.
    """
    wrapped = WithSoftmax(model).eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        # The exporter warns about constant folding under PRESERVE; it only matters for training-mode models.
        warnings.filterwarnings("ignore", message=".*constant folding.*", category=UserWarning)
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE,
            dynamo=False,
        )


def main(argv: list[str] | None = None) -> None:
    """Train, report float accuracy, export ONNX, check it in onnxruntime and write ``cnn.json``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ONNX_PATH)
    args = parser.parse_args(argv)

    gen = seed_everything(SEED)
    train, test = load_tensors("train"), load_tensors("test")
    model = FashionCNN().to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    steps = args.epochs * -(-len(train[0]) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=steps)
    print(f"FashionCNN: {params} parameters, {args.epochs} epochs")

    start = time.time()
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, opt, sched, train, gen)
        print(
            f"epoch {epoch}: loss {loss:.4f}  test acc {torch_accuracy(model, test):.4f}  ({time.time() - start:.0f}s)"
        )
    seconds = time.time() - start

    acc_torch = torch_accuracy(model, test)
    export_onnx(model, args.out)
    acc_onnx = onnx_accuracy(args.out, test)
    print(f"test accuracy: torch {acc_torch:.4f}  onnxruntime {acc_onnx:.4f}  -> {args.out}")
    meta = {
        "test_accuracy": round(acc_torch, 4),
        "epochs": args.epochs,
        "params": params,
        "seconds": round(seconds, 1),
    }
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
