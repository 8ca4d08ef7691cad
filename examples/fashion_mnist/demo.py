"""The bundled example: compile the Fashion-MNIST CNN for this CPU, then compare float and integer.

Writes calibration (512 training images) and evaluation (the 10,000 test images) sets, runs the same
steps as ``qc compile cnn.onnx --calib ... --eval ... --input-shape input=100,1,28,28``, and prints
accuracy and latency side by side.

    .venv/bin/python -m examples.fashion_mnist.demo [--out out/fashion_cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

import qcompiler
from examples.fashion_mnist.data import write_calibration_npz, write_eval_npz
from qcompiler.evaluate import evaluate_accuracy

HERE = Path(__file__).resolve().parent
BATCH = 100


def median_ms(fn: Callable[[], object], runs: int = 20) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` back-to-back calls, after 3 warm-up calls
    (``python -m benchmarks.speed`` is the careful comparison)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/fashion_cnn"))
    args = parser.parse_args()
    data = HERE.parents[1] / ".cache" / "fashion_mnist"
    data.mkdir(parents=True, exist_ok=True)
    calib, evaluation = data / "calib.npz", data / "eval.npz"
    write_calibration_npz(calib, n=500)  # a multiple of the batch: no sample is dropped
    write_eval_npz(evaluation)

    print(f"compiling {HERE / 'cnn.onnx'} for x86 (batch {BATCH}) ...")
    artifact = qcompiler.compile(HERE / "cnn.onnx", target="x86", calibration=calib,
                                 input_shapes={"input": (BATCH, 1, 28, 28)})
    accuracy = evaluate_accuracy(artifact, evaluation)
    artifact.report["accuracy"] = accuracy
    artifact.save(args.out, force=True)

    images = np.load(evaluation)["input"][:BATCH]
    session = onnxruntime.InferenceSession(artifact.quantized.float_model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    module = artifact.module()
    ints = module.quantize_inputs({"input": images})
    float_ms = median_ms(lambda: session.run(None, {"input": images}))
    int_ms = median_ms(lambda: module.run_integer(ints))

    print(f"\nFashion-MNIST CNN, {accuracy['samples']} test images, artifact in {args.out}")
    print(f"{'':<34} {'top-1 accuracy':>15} {f'ms / batch of {BATCH}':>20}")
    print(f"{'float (onnxruntime FP32)':<34} {accuracy['float']:>15.4f} {float_ms:>20.2f}")
    print(f"{'integer-only (qc, x86, untuned)':<34} {accuracy['integer']:>15.4f} {int_ms:>20.2f}")
    print(f"{'difference':<34} {100 * (accuracy['integer'] - accuracy['float']):>+14.2f}pt {int_ms / float_ms:>19.2f}x")


if __name__ == "__main__":
    main()
