"""EfficientNet-Lite0: top-1 agreement / top-5 containment with float, qc vs onnxruntime quantize_static.

Both quantizers calibrate on the same 64 crops and are scored on the same 160 held-out crops of the
packaged photos (examples/efficientnet_lite0/photos.py). qc's scores come from its integer model, which the
compiled library matches bit for bit (tests/e2e/test_efficientnet_lite0.py).

    .venv/bin/python -m benchmarks.efficientnet_agreement [--methods minmax percentile entropy mse]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime

from examples.efficientnet_lite0.export import ensure_model
from examples.efficientnet_lite0.ort_baseline import agreement, ort_quantize_static, run_logits
from examples.efficientnet_lite0.photos import calibration_and_eval_split
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model

onnxruntime.set_default_logger_severity(3)  # the exported model carries unused initializers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy", "mse"])
    args = parser.parse_args()
    model = ensure_model()
    calibration, evaluation = calibration_and_eval_split(n_calib=64, n_eval=160)
    reference = run_logits(model, evaluation)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ort_model = ort_quantize_static(model, calibration, Path(tmp) / "ort_int8.onnx")
        rows.append(("onnxruntime quantize_static (QDQ, minmax)", agreement(reference, run_logits(ort_model, evaluation))))
        for method in args.methods:
            quantized = quantize_model(model, {"input": calibration}, CompileConfig(calibration_method=method))
            path = Path(tmp) / f"qc_{method}.onnx"
            path.write_bytes(quantized.int_model.SerializeToString())
            rows.append((f"qc integer-only ({method})", agreement(reference, run_logits(path, evaluation))))
    print(f"EfficientNet-Lite0, {len(evaluation)} crops, agreement with the float model")
    print(f"{'quantizer':<45} {'top-1 agree':>12} {'top-5 contain':>14}")
    for name, score in rows:
        print(f"{name:<45} {score['top1']:>12.3f} {score['top5']:>14.3f}")


if __name__ == "__main__":
    main()
