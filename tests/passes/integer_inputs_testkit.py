"""QDQ models whose graph inputs include integers (token ids, attention masks): calibrated on given feeds.

``passes_testkit.qdq`` calibrates on random integers in [-1000, 1000], which are not valid ids or 0/1 masks.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from passes_testkit import deadline, model, run

from qcompiler.calibration import collect_ranges
from qcompiler.pipelines import normalize_pipeline, quantize_pipeline
from qcompiler.quant_plan import assign_qparams, calibration_points


def masks(batch: int, positions: int, seed: int = 0, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """0/1 int64 masks: 1 on a random-length prefix (at least one position), then 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, positions, batch, endpoint=True)
    mask = (np.arange(positions)[None, :] < lengths[:, None]).astype(np.int64)
    return mask.reshape(shape or mask.shape)


def qdq_with(graph_text: str, calibration: dict[str, np.ndarray], dtype: str = "uint8", normalize=None,
             **initializers: np.ndarray) -> ir.Model:
    """Normalize ``graph_text`` (plus the ``normalize`` passes), calibrate on ``calibration``, quantize."""
    m = model(graph_text, **initializers)
    with deadline(30):
        normalize_pipeline({})(m)
        for pass_ in normalize or []:
            pass_(m)
    names = [v.name for v in calibration_points(m.graph)]
    ranges = collect_ranges(ir.serde.serialize_model(m), names, calibration)
    quantize_pipeline(assign_qparams(m.graph, ranges, dtype))(m)
    return m


def codes(m: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer tensors behind the graph outputs (inputs of the boundary DequantizeLinear)."""
    return run(m, feeds, [out.producer().inputs[0].name for out in m.graph.outputs])
