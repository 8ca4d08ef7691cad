"""Latency on this CPU: onnxruntime FP32, onnxruntime INT8 (quantize_static, QDQ) and qc (untuned), batch 1.

All three run in this one process on the same inputs; the script prints medians and ratios against
onnxruntime FP32 (these machines are noisy: compare ratios from one run, not absolute numbers across runs).

    .venv/bin/python -m benchmarks.latency [--models fashion_cnn efficientnet_lite0] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import qcompiler

REPO = Path(__file__).resolve().parents[1]
onnxruntime.set_default_logger_severity(3)  # exported models carry unused initializers; ORT warns per tensor


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, samples: np.ndarray):
        self._feeds = iter([{name: samples[i:i + 1]} for i in range(len(samples))])

    def get_next(self):
        return next(self._feeds, None)


def _fashion_cnn() -> tuple[Path, np.ndarray]:
    from examples.fashion_mnist.data import load_split, preprocess

    images, _ = load_split("train")
    return REPO / "examples" / "fashion_mnist" / "cnn.onnx", preprocess(images[:128])


def _efficientnet_lite0() -> tuple[Path, np.ndarray]:
    from examples.efficientnet_lite0.export import ensure_model
    from examples.efficientnet_lite0.photos import make_calibration_crops

    return ensure_model(), make_calibration_crops(n=32)


MODELS = {"fashion_cnn": _fashion_cnn, "efficientnet_lite0": _efficientnet_lite0}


def median_ms(fn: Callable[[], object], runs: int = 20) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _static_batch1(path: Path, workdir: Path) -> Path:
    """The model with its input batch fixed to 1 (onnxruntime's quantizer and qc both want static shapes)."""
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    fixed = workdir / "batch1.onnx"
    onnx.save(model, str(fixed))
    return fixed


def bench(name: str, runs: int) -> list[tuple[str, float]]:
    """Median milliseconds per inference for the three implementations of model ``name``."""
    path, samples = MODELS[name]()
    with tempfile.TemporaryDirectory() as tmp:
        fixed = _static_batch1(path, Path(tmp))
        input_name = onnx.load(str(fixed)).graph.input[0].name
        x = samples[:1]
        ort_int8 = Path(tmp) / "int8.onnx"
        quantize_static(str(fixed), str(ort_int8), _Reader(input_name, samples[:32]), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        fp32 = onnxruntime.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
        int8 = onnxruntime.InferenceSession(str(ort_int8), providers=["CPUExecutionProvider"])
        module = qcompiler.compile(fixed, target="x86", calibration={input_name: samples[:32]}).module()
        ints = module.quantize_inputs({input_name: x})
        return [
            ("onnxruntime FP32", median_ms(lambda: fp32.run(None, {input_name: x}), runs)),
            ("onnxruntime INT8 (QDQ)", median_ms(lambda: int8.run(None, {input_name: x}), runs)),
            ("qc x86, untuned (integer region)", median_ms(lambda: module.run_integer(ints), runs)),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    for name in args.models:
        rows = bench(name, args.runs)
        baseline = rows[0][1]
        print(f"\n{name} (batch 1, median of {args.runs} runs)")
        print(f"{'implementation':<36} {'ms':>10} {'vs ORT FP32':>12}")
        for label, ms in rows:
            print(f"{label:<36} {ms:>10.3f} {baseline / ms:>11.2f}x")


if __name__ == "__main__":
    main()
