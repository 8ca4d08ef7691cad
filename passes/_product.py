"""The integer product of two per-tensor quantized activations, shared by the Mul and MatMul passes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qcompiler.passes._emit import Emitter
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import Quantized, dequantized, replace_island


def rewrite_activation_product(graph: ir.Graph, node: ir.Node, mantissa_bits: int,
                               check: Callable[[ir.Node, Quantized, Quantized], None] | None = None) -> bool:
    """Rewrite ``DQ(a) <op> DQ(b) -> [Relu|Clip] -> Q`` (``op`` = ``node.op_type``, Mul or MatMul) as
    ``Requantize(op(int32(a) - zp_a, int32(b) - zp_b), s_a s_b / s_y)``; report whether it fired.

    Does not fire on constant or per-axis quantized operands. ``check(node, a, b)`` may refuse the match by
    raising (e.g. a reduction that could overflow int32).
    """
    a, b = (dequantized(v) for v in node.inputs[:2])
    if a is None or b is None or not (a.per_tensor and b.per_tensor):
        return False
    if a.value.const_value is not None or b.value.const_value is not None:
        return False
    tail = match_tail(node.outputs[0])
    if isinstance(tail, str):
        return False
    if check is not None:
        check(node, a, b)
    emit = Emitter(graph, tail.quantize, node.name)
    product = emit.op(node.op_type, [emit.centered(a.value, a.zp), emit.centered(b.value, b.zp)], dtype="int32")
    ratio = np.array(np.float64(a.s) * np.float64(b.s) / np.float64(tail.output.s))
    out = emit.requantize(product, ratio, tail.output.zp, tail.output.dtype, mantissa_bits, tail.clamp)
    replace_island(graph, [node, *tail.nodes], tail.quantize, out)
    return True
