"""Float-vs-integer accuracy of a compiled model on labelled data (``qc compile --eval``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from qcompiler.errors import CalibrationError

__all__ = ["evaluate_accuracy", "evaluation_arrays", "batches"]


def evaluation_arrays(data: str | Path | dict, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``data`` (an ``.npz`` path or a dict, first axis = samples); refuses data lacking any of
    the input ``names``."""
    arrays = dict(np.load(data)) if not isinstance(data, dict) else dict(data)
    missing = sorted(set(names) - set(arrays))
    if missing:
        raise CalibrationError(f"evaluation data lacks input(s) {missing}; keys: {sorted(arrays)}")
    return arrays


def batches(arrays: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Split sample-major arrays into feeds of ``batch`` samples; a remainder smaller than a batch is dropped."""
    count = min(len(a) for a in arrays.values())
    return [{k: a[i:i + batch] for k, a in arrays.items()} for i in range(0, count - batch + 1, batch)]


def evaluate_accuracy(artifact, data: str | Path | dict, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Top-1 accuracy of the float model (onnxruntime) and of the compiled integer module on ``data``.

    ``data`` holds the model's inputs (first axis = samples) and integer ``labels``. The first model output is
    the class scores (argmax over axis 1).
    """
    module = artifact.module()
    inputs = module.inputs
    batch = inputs[0]["shape"][0]
    arrays = evaluation_arrays(data, [e["name"] for e in inputs])
    if "labels" not in arrays:
        raise CalibrationError(f"evaluation data {data} has no 'labels' array; keys: {sorted(arrays)}")
    labels = arrays.pop("labels")
    session = onnxruntime.InferenceSession(artifact.quantized.float_model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    output = module.outputs[0]["name"]
    float_hits = int_hits = seen = 0
    chunks = batches({e["name"]: arrays[e["name"]].astype(np.float32) for e in inputs}, batch)
    for index, feeds in enumerate(chunks):
        expected = labels[seen:seen + batch]
        float_scores = session.run(None, feeds)[0]
        int_scores = module.run(feeds)[output]
        float_hits += int(np.sum(float_scores.argmax(axis=1) == expected))
        int_hits += int(np.sum(int_scores.argmax(axis=1) == expected))
        seen += batch
        if progress:
            progress("evaluate", index + 1, len(chunks))
    return {"samples": seen, "float": float_hits / max(seen, 1), "integer": int_hits / max(seen, 1)}
