"""Train the bundled Fashion-MNIST ViT and export it to ``vit.onnx`` (opset 17, dynamic batch).

A small pre-norm Vision Transformer: 7x7 patches (16 tokens) + a class token, 4 blocks of dimension 64 with
4 heads and a GELU MLP of width 128, final LayerNorm, linear head and Softmax. Attention is written out
(Linear q/k/v, ``q @ k^T * d**-0.5``, Softmax, ``@ v``), so the graph has the plain MatMul / Softmax /
LayerNormalization / Erf-GELU nodes a transformer exporter produces. The training loop and data
handling are the CNN's (``train_cnn.py``).

Usage::

    python examples/fashion_mnist/train_vit.py [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from train_cnn import (
    BATCH_SIZE,
    SEED,
    WithSoftmax,
    load_tensors,
    onnx_accuracy,
    seed_everything,
    torch_accuracy,
)

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "vit.onnx"
MAX_LR = 2e-3
WEIGHT_DECAY = 0.05


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, H, T, D/H]."""
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FashionViT(nn.Module):
    """ViT for 1x28x28 inputs; ``forward`` returns logits."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, hidden: int = 128, patch: int = 7,
                 num_classes: int = 10) -> None:
        super().__init__()
        tokens = (28 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror half the images and translate each by up to 2 pixels (zero fill)."""
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5
    x = torch.where(flip, x.flip(3), x)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return padded[:, :, 2 + dy : 30 + dy, 2 + dx : 30 + dx]


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export softmax(model) in eval mode (LayerNormalization at opset 17, GELU as its Erf form)."""
    wrapped = WithSoftmax(model).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(wrapped, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"],
                          output_names=["probs"], dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
                          opset_version=17, dynamo=False)


def main(argv: list[str] | None = None) -> None:
    """Train, report float accuracy, export ONNX, check it in onnxruntime and write ``vit.json``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ONNX_PATH)
    args = parser.parse_args(argv)

    gen = seed_everything(SEED)
    train, test = load_tensors("train"), load_tensors("test")
    train, test = (train[0].contiguous(), train[1]), (test[0].contiguous(), test[1])
    model = FashionViT()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    steps = args.epochs * -(-len(train[0]) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=steps)
    print(f"FashionViT: {params} parameters, {args.epochs} epochs")

    start = time.time()
    x, y = train
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for first in range(0, len(x), BATCH_SIZE):
            idx = order[first : first + BATCH_SIZE]
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch}: loss {total / len(x):.4f}  test acc {torch_accuracy(model, test):.4f}  "
              f"({time.time() - start:.0f}s)", flush=True)
    seconds = time.time() - start

    acc_torch = torch_accuracy(model, test)
    export_onnx(model, args.out)
    acc_onnx = onnx_accuracy(args.out, test)
    print(f"test accuracy: torch {acc_torch:.4f}  onnxruntime {acc_onnx:.4f}  -> {args.out}")
    meta = {"test_accuracy": round(acc_torch, 4), "epochs": args.epochs, "params": params,
            "seconds": round(seconds, 1)}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
