"""Integer transformers: BERT embedding fidelity, DeiT-tiny-size ViT compile time, Fashion ViT accuracy.

* BERT sentence encoder (6 layers, hidden 384, mask, mean pooling, L2 norm; random init from a
  ``transformers`` config): cosine similarity between the integer and float embeddings on 64 held-out
  inputs with mixed padding (calibration: 64 other inputs).
* DeiT-tiny-size ViT (12 blocks, dim 192, 224x224, patch 16): wall time of ``qcompiler.compile`` for x86.
* Fashion-MNIST ViT: float and integer top-1 on the 10,000 test images.

Integer outputs come from ``model.int.onnx`` in onnxruntime, which the compiled modules match bit for bit
(tests/e2e/test_transformers.py, tests/e2e/test_fashion_vit.py).

    .venv/bin/python -m benchmarks.transformer_fidelity
"""

from __future__ import annotations

import time

import numpy as np
import onnx

import qcompiler
from benchmarks.vit_ablation import MODEL as FASHION_VIT
from benchmarks.vit_ablation import accuracy
from examples.fashion_mnist.data import load_split, preprocess
from examples.transformers import export
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.reference import integer_session


def bert_cosines() -> np.ndarray:
    """Cosine similarity of integer vs float BERT embeddings on 64 held-out mixed-padding inputs."""
    model = export.ensure_model("bert")
    shapes = {"input_ids": (1, export.SEQ_LEN), "attention_mask": (1, export.SEQ_LEN)}
    quantized = quantize_model(model, export.bert_inputs(64, seed=0), CompileConfig(input_shapes=shapes))
    sessions = [integer_session(m)
                for m in (onnx.load(model), quantized.int_model)]
    data = export.bert_inputs(64, seed=2)
    cosines = []
    for i in range(64):
        feed = {k: v[i:i + 1] for k, v in data.items()}
        want, got = (s.run(None, feed)[0].reshape(-1) for s in sessions)
        cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    return np.array(cosines)


def main() -> None:
    cosines = bert_cosines()
    print(f"BERT encoder, 64 mixed-padding inputs: cosine(int, float) mean {cosines.mean():.4f}, "
          f"min {cosines.min():.4f}")
    start = time.perf_counter()
    qcompiler.compile(export.ensure_model("vit"), target="x86", calibration={"pixel_values": export.vit_images(8)})
    print(f"DeiT-tiny-size ViT: qcompiler.compile for x86 took {time.perf_counter() - start:.1f} s "
          "(quantize + TVM build)")
    train, _ = load_split("train")
    calibration = {"input": preprocess(train[np.sort(np.random.default_rng(0).choice(len(train), 500, False))])}
    images, labels = load_split("test")
    quantized = quantize_model(FASHION_VIT, calibration, CompileConfig(input_shapes={"input": (100, 1, 28, 28)}))
    x = preprocess(images)
    print(f"Fashion-MNIST ViT, 10,000 test images: float {accuracy(quantized.float_model, x, labels):.4f}, "
          f"integer W8A8 {accuracy(quantized.int_model, x, labels):.4f}")


if __name__ == "__main__":
    main()
