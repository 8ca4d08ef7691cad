"""Ablation of the integer transformer methods on the bundled Fashion-MNIST ViT (accuracy on the test set).

Rows: W8A8, W6A6 and W4A4, attention probabilities at 8 and 4 bits, each with and without RepQ-ViT
reparameterization and with uniform or log2 post-Softmax codes (Softmax and GELU by table); then the
I-ViT shift and I-BERT polynomial Softmax/GELU at W8A8. Accuracy is that of qc's integer model
(``model.int.onnx`` in onnxruntime, which compiled modules match bit for bit); calibration is 500 training
images, evaluation the first ``--images`` test images (all 10,000 by default).

    .venv/bin/python -m benchmarks.vit_ablation [--images 10000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from examples.fashion_mnist.data import load_split, preprocess
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.reference import integer_session

MODEL = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist" / "vit.onnx"
BATCH = 100


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model (proto) on ``images`` in batches of :data:`BATCH`."""
    session = integer_session(model)
    name = session.get_inputs()[0].name
    predictions = [session.run(None, {name: images[i:i + BATCH]})[0].argmax(1) for i in range(0, len(images), BATCH)]
    return float((np.concatenate(predictions) == labels).mean())


def rows(quick: bool) -> list[dict]:
    """The configurations of the table, as CompileConfig fields."""
    widths = [(8, 8)] if quick else [(8, 8), (6, 6), (4, 4)]
    table = [
        {"weight_bits": w, "activation_bits": a, "attention_bits": attn, "reparam": reparam, "softmax_quant": quant}
        for (w, a), attn, reparam, quant in itertools.product(widths, (8, 4), (False, True), ("uniform", "log2"))
    ]
    table += [{"softmax": softmax, "gelu": gelu} for softmax, gelu in itertools.product(("shift", "poly"), repeat=2)]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="W8A8 rows only")
    args = parser.parse_args()
    train, _ = load_split("train")
    calibration = {"input": preprocess(train[np.sort(np.random.default_rng(0).choice(len(train), 500, False))])}
    test_images, test_labels = load_split("test")
    images, labels = preprocess(test_images[: args.images]), test_labels[: args.images]
    shapes = {"input": (BATCH, 1, 28, 28)}
    first = quantize_model(MODEL, calibration, CompileConfig(input_shapes=shapes))
    print(f"float accuracy on {len(labels)} test images: {accuracy(first.float_model, images, labels):.4f}")
    header = f"| {'W/A':<5} | attn | reparam | softmax codes | softmax | GELU  | top-1  | seconds |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for fields in rows(args.quick):
        config = CompileConfig(input_shapes=shapes, **fields)
        start = time.perf_counter()
        quantized = quantize_model(MODEL, calibration, config)
        top1 = accuracy(quantized.int_model, images, labels)
        width = f"W{config.weight_bits}A{config.activation_bits}"
        print(f"| {width:<5} | {config.attention_bits:>4} | {'yes' if config.reparam else 'no':<7} | "
              f"{config.softmax_quant:<13} | {config.softmax:<7} | {config.gelu:<5} | {top1:.4f} | "
              f"{time.perf_counter() - start:7.1f} |", flush=True)


if __name__ == "__main__":
    main()
