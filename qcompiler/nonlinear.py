"""Which integer method each transformer nonlinearity uses, and the constants calibration chose for it.

Integerize passes for Softmax, GELU and LayerNorm record their choice on the model as metadata
(``qc.nonlinear/<float node name>`` -> JSON); ``report.json`` and ``qc inspect`` read it back.
"""

from __future__ import annotations

import json

import onnx
import onnx_ir as ir

__all__ = ["SOFTMAX_METHODS", "SOFTMAX_QUANTIZERS", "GELU_METHODS", "record", "recorded"]

#: integer Softmax: exponential table (exact on 8-bit inputs), I-ViT Shiftmax, I-BERT i-exp polynomial.
SOFTMAX_METHODS = ("table", "shift", "poly")
#: codes of post-Softmax activations: uniform, log2 (FQ-ViT) or log-sqrt2 (RepQ-ViT).
SOFTMAX_QUANTIZERS = ("uniform", "log2", "log-sqrt2")
#: integer GELU: lookup table (exact on 8-bit inputs), I-ViT ShiftGELU, I-BERT i-GELU polynomial.
GELU_METHODS = ("table", "shift", "poly")

_PREFIX = "qc.nonlinear/"


def record(model: ir.Model, node_name: str, op: str, method: str, constants: dict, error: float | None) -> None:
    """Note on ``model`` that float node ``node_name`` (an ``op``) became ``method`` with ``constants``.

    ``error`` is the calibration error that chose the constants (mean squared error against the float
    function on the calibration samples, in output units), or ``None`` when no samples were given.
    """
    entry = {"op": op, "method": method, "constants": constants, "error": error}
    model.metadata_props[_PREFIX + node_name] = json.dumps(entry, sort_keys=True)


def recorded(model: onnx.ModelProto) -> dict[str, dict]:
    """Every recorded choice of ``model``, keyed by float node name."""
    return {p.key[len(_PREFIX):]: json.loads(p.value) for p in model.metadata_props if p.key.startswith(_PREFIX)}
