"""Per-layer sensitivity to narrower weights, measured (AdaQuant's ΔL) or estimated (a HAWQ-style proxy).

Both are stated in the same unit, the added **squared relative output error** ``rel_l2**2``, so that the
ILP can sum them: quantization noise of different layers is close to independent, and the squared errors
of independent noise add at the output.

* ``measured``: for each layer and width, only that layer's weights drop to the width (every other layer
  keeps the base config); the candidate is scored by :class:`CandidateEvaluator` and its ``rel_l2**2``
  minus the base config's is the sensitivity (clamped at 0: a lucky improvement is noise, not a gain).
  Cost: one candidate per layer and width.
* ``proxy``: the layer-local noise-to-signal ratio ``Σ_c ||ΔW_c||² E[x²] / (C_out E[y²])`` of the layer's
  output, with ``ΔW`` the weight rounding error at that width and ``E[x²]``, ``E[y²]`` the mean squares of
  the layer's float input and output on a few evaluation samples (one float run for all layers). It
  assumes unit gain from every layer to the output (HAWQ-V3's Hessian trace plays that role there), so it
  ranks layers more coarsely; it costs no candidate at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.calibration import collect_samples
from qcompiler.config import CompileConfig
from qcompiler.ir import const_array
from qcompiler.qmath import weight_codes, weight_scales

__all__ = ["SENSITIVITY_KINDS", "Sensitivity", "measure_sensitivity", "proxy_sensitivity"]

SENSITIVITY_KINDS = ("measured", "proxy")
#: evaluation samples whose activations the proxy reads.
PROXY_SAMPLES = 4


@dataclass(frozen=True)
class Sensitivity:
    """Added ``rel_l2**2`` per layer name and weight width (the base width has 0), and how it was obtained."""

    kind: str
    values: dict[str, dict[int, float]]

    def to_json(self) -> dict:
        return {"kind": self.kind, "values": {name: {str(w): v for w, v in row.items()}
                                              for name, row in self.values.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Sensitivity:
        return cls(data["kind"], {name: {int(w): float(v) for w, v in row.items()}
                                  for name, row in data["values"].items()})


def measure_sensitivity(evaluator: CandidateEvaluator, base: CompileConfig, widths: tuple[int, ...],
                        progress: Callable[[int, int], None] | None = None) -> Sensitivity:
    """Measured sensitivity of every layer at every width of ``widths`` narrower than ``base.weight_bits``."""
    reference = evaluator.score(base).rel_l2 ** 2
    narrower = [w for w in widths if w < base.weight_bits]
    total = len(evaluator.layers) * len(narrower)
    values: dict[str, dict[int, float]] = {}
    for index, layer in enumerate(evaluator.layers):
        values[layer.name] = {base.weight_bits: 0.0}
        for offset, width in enumerate(narrower):
            trial = base.replace(layers={**base.layers, layer.name: {"weight_bits": width}})
            values[layer.name][width] = max(evaluator.score(trial).rel_l2 ** 2 - reference, 0.0)
            if progress:
                progress(index * len(narrower) + offset + 1, total)
    return Sensitivity("measured", values)


def proxy_sensitivity(evaluator: CandidateEvaluator, base: CompileConfig, widths: tuple[int, ...]) -> Sensitivity:
    """The layer-local noise proxy of every layer at every width of ``widths`` (see the module docstring)."""
    calibrated = evaluator.calibrated(base)
    graph = ir.serde.deserialize_model(calibrated.float_model).graph
    nodes = {n.name: n for n in graph if n.name in {layer.name for layer in evaluator.layers}}
    tensors = sorted({v.name for n in nodes.values() for v in (n.inputs[0], n.outputs[0])})
    feeds = evaluator.feeds[:PROXY_SAMPLES]
    data = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
    samples = collect_samples(calibrated.float_model, tensors, data, max_rows=2**62)  # whole tensors
    square = {name: float(np.mean(np.square(samples[name], dtype=np.float64))) for name in tensors}
    values: dict[str, dict[int, float]] = {}
    for layer in evaluator.layers:
        node = nodes[layer.name]
        weight = const_array(node.inputs[1]).astype(np.float64)
        axis = 0 if node.op_type == "Conv" else 1
        values[layer.name] = {base.weight_bits: 0.0}
        for width in (w for w in widths if w < base.weight_bits):
            noise = np.sum(np.square(_rounding_error(weight, axis, width, base.per_channel)))
            channels = weight.shape[axis]
            values[layer.name][width] = float(noise * square[node.inputs[0].name]
                                              / max(channels * square[node.outputs[0].name], 1e-30))
    return Sensitivity("proxy", values)


def _rounding_error(weight: np.ndarray, axis: int, bits: int, per_channel: bool) -> np.ndarray:
    """``Q(W) - W`` for symmetric ``bits``-bit weights, rounded as ``QuantizeWeightsPass`` rounds them (its
    bias-driven widening of near-dead channels aside)."""
    scale = weight_scales(weight, axis, bits, per_channel).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight_codes(weight, scale, axis, bits) * scale.reshape(shape).astype(np.float64) - weight
