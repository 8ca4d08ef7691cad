"""onnxruntime's own static quantization of EfficientNet-Lite0: the baseline qc is compared against.

``ort_quantize_static`` runs ``onnxruntime.quantization.quantize_static`` with QDQ format, per-channel int8
weights (``QuantType.QInt8``), uint8 activations (``QuantType.QUInt8``) and MinMax calibration over the
given calibration crops. By default the float model first goes through ``quant_pre_process`` (symbolic
shape inference + onnxruntime graph optimization): that constant-folds the small shape subgraphs that feed
the TF "SAME" ``Pad`` nodes and gives the quantizer fully shaped tensors, which is the pre-processing
onnxruntime recommends before static quantization.

``agreement`` measures how far the quantized model strays from the float one on unlabelled photos:
top-1 agreement (argmax equal) and top-5 containment (float top-1 class among the quantized top-5).

Run (from the repository root; about half a minute on 2 CPU cores once the model is cached)::

    python examples/efficientnet_lite0/ort_baseline.py [--n-calib 64] [--n-eval 160] [--no-preprocess]

Reference point (shared/reference/models-data.md): 0.833 top-1 agreement, 0.990 top-5 containment, on
crops made some other way. On this module's crops (15 photos, 64 calibration / 160 evaluation crops) it
measures 0.944 / 1.000, both with and without ``quant_pre_process``; other seeds and calibration sizes
(16..128 crops) give 0.919..0.950 top-1 and 1.000 top-5. Compare qc against these numbers, on these crops.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
INPUT_NAME = "input"


def model_batch(model_path: str | Path) -> int:
    """Return the static batch size of the model's first input."""
    model = onnx.load(str(model_path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_value:
        raise ValueError(f"{model_path}: the batch dimension of the input is not static")
    return dim.dim_value


def batches(crops: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Yield consecutive ``batch``-sized chunks of ``crops``; the length must be a multiple of ``batch``."""
    if len(crops) % batch:
        raise ValueError(f"{len(crops)} crops do not split into batches of {batch}")
    for start in range(0, len(crops), batch):
        yield np.ascontiguousarray(crops[start : start + batch], dtype=np.float32)


class CropReader(CalibrationDataReader):
    """Feeds calibration crops to onnxruntime's calibrator, ``batch`` crops per call."""

    def __init__(self, crops: np.ndarray, batch: int = 1, input_name: str = INPUT_NAME) -> None:
        self._crops = crops
        self._batch = batch
        self._input_name = input_name
        self._iter = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next ``{input_name: batch}`` feed, or None when exhausted."""
        chunk = next(self._iter, None)
        return None if chunk is None else {self._input_name: chunk}

    def rewind(self) -> None:
        """Restart from the first crop."""
        self._iter = batches(self._crops, self._batch)


def ort_quantize_static(
    float_onnx: str | Path, calib_crops: np.ndarray, out_path: str | Path, preprocess: bool = True
) -> Path:
    """Quantize ``float_onnx`` with onnxruntime (QDQ, per-channel s8 weights, u8 activations, MinMax).

    With ``preprocess`` the model first goes through ``quant_pre_process``. Returns ``out_path``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reader = CropReader(calib_crops, batch=model_batch(float_onnx))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(float_onnx)
        if preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(float_onnx), str(source))
        quantize_static(
            str(source),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path


def run_logits(model_path: str | Path, crops: np.ndarray) -> np.ndarray:
    """Run ``model_path`` in onnxruntime (CPU) over ``crops`` and return the stacked logits [n, classes]."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: chunk})[0] for chunk in batches(crops, model_batch(model_path))]
    return np.concatenate(outputs)


def agreement(float_logits: np.ndarray, q_logits: np.ndarray) -> dict[str, float]:
    """Agreement of quantized with float logits, both [n, classes].

    ``top1``: fraction of rows whose argmax matches. ``top5``: fraction of rows where the float top-1 class
    is among the quantized model's 5 largest logits.
    """
    if float_logits.shape != q_logits.shape or float_logits.ndim != 2:
        raise ValueError(f"logit shapes differ or are not 2-D: {float_logits.shape} vs {q_logits.shape}")
    reference = np.argmax(float_logits, axis=1)
    top1 = np.argmax(q_logits, axis=1) == reference
    k = min(5, q_logits.shape[1])
    q_top5 = np.argpartition(-q_logits, k - 1, axis=1)[:, :k]
    top5 = np.any(q_top5 == reference[:, None], axis=1)
    return {"top1": float(np.mean(top1)), "top5": float(np.mean(top5))}


def _timed(label: str, timings: dict[str, float], fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``, record its wall time under ``label`` and return its result."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[label] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Export (or reuse) the model, quantize it with onnxruntime and print agreement on the eval crops."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-calib", type=int, default=64, help="calibration crops (seed 1)")
    parser.add_argument("--n-eval", type=int, default=160, help="evaluation crops (seed 0)")
    parser.add_argument("--no-preprocess", action="store_true", help="skip quant_pre_process")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $QC_CACHE_DIR or <repo>/.cache"
    )
    args = parser.parse_args(argv)

    if str(REPO_ROOT) not in sys.path:  # run as a script: make the `examples` namespace importable
        sys.path.insert(0, str(REPO_ROOT))
    from examples.efficientnet_lite0.export import default_cache_dir, ensure_model
    from examples.efficientnet_lite0.photos import calibration_and_eval_split

    ort.set_default_logger_severity(3)  # hide onnxruntime's "Removing initializer" warnings
    cache_dir = args.cache_dir or default_cache_dir()
    timings: dict[str, float] = {}
    float_onnx = _timed("export (or cache)", timings, ensure_model, cache_dir)
    calib, evaluation = _timed(
        "crops", timings, calibration_and_eval_split, args.n_calib, args.n_eval, cache_dir
    )
    tag = "raw" if args.no_preprocess else "pre"
    q_path = cache_dir / "efficientnet_lite0" / f"efficientnet_lite0_b1_ort_qdq_{tag}_c{args.n_calib}.onnx"
    _timed(
        "ort quantize_static", timings, ort_quantize_static, float_onnx, calib, q_path, not args.no_preprocess
    )
    float_logits = _timed("float inference", timings, run_logits, float_onnx, evaluation)
    q_logits = _timed("quantized inference", timings, run_logits, q_path, evaluation)
    scores = agreement(float_logits, q_logits)

    print(f"calibration crops: {len(calib)}, evaluation crops: {len(evaluation)}, preprocess: {tag}")
    for label, seconds in timings.items():
        print(f"  {label:22s} {seconds:7.2f} s")
    print(
        f"top-1 agreement {scores['top1']:.3f}, top-5 containment {scores['top5']:.3f} "
        "(models-data.md reference 0.833 / 0.990)"
    )
    return scores


if __name__ == "__main__":
    main()
