"""Shared matching of the ``op -> [Relu | Clip] -> QuantizeLinear`` tail of an integerized op."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, single_consumer
from qcompiler.passes._qdq import Quantized, quantized_output
from qcompiler.qmath import quantize


@dataclass(frozen=True)
class Tail:
    """The float nodes after the anchor op, the QuantizeLinear ending them, and the output's integer clamp."""

    nodes: list[ir.Node]
    quantize: ir.Node
    output: Quantized
    clamp: tuple[int, int]


def match_tail(value: ir.Value, allow_bias: bool = False) -> Tail | str:
    """Follow ``value`` through an optional bias Add (``allow_bias``) and Relu/Clip to its QuantizeLinear."""
    nodes: list[ir.Node] = []
    user = single_consumer(value)
    if allow_bias and user is not None and user.op_type == "Add":
        nodes.append(user)
        value = user.outputs[0]
        user = single_consumer(value)
    activation = None
    if user is not None and user.op_type in ("Relu", "Clip"):
        activation = user
        nodes.append(user)
        value = user.outputs[0]
    found = quantized_output(value)
    if found is None:
        return "output is not quantized by a single QuantizeLinear"
    quant, output = found
    if not output.per_tensor:
        return "output quantization is not per-tensor"
    clamp = activation_clamp(activation, output)
    if isinstance(clamp, str):
        return clamp
    return Tail(nodes, quant, output, clamp)


def activation_clamp(activation: ir.Node | None, out: Quantized) -> tuple[int, int] | str:
    """The integer range that applies ``activation`` (Relu or Clip) on the output grid.

    Quantization is monotone, so ``quantize(clip(v, lo, hi)) == clip(quantize(v), quantize(lo), quantize(hi))``.
    """
    qmin, qmax = out.qmin, out.qmax
    if activation is None:
        return qmin, qmax
    if activation.op_type == "Relu":
        lo, hi = 0.0, None
    else:
        bounds = [const_array(v) if v is not None else None for v in activation.inputs[1:3]]
        if any(v is not None and const_array(v) is None for v in activation.inputs[1:3]):
            return "Clip bounds are not constants"
        lo = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else None
        hi = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else None
    if lo is not None:
        qmin = max(qmin, int(quantize(np.array(lo), out.s, out.zp, out.dtype)))
    if hi is not None:
        qmax = min(qmax, int(quantize(np.array(hi), out.s, out.zp, out.dtype)))
    return qmin, qmax
