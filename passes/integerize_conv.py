"""Integer Conv: ``DQ(x), DQ(w), DQ(b) -> Conv -> [Relu|Clip] -> Q`` becomes Pad, ConvInteger, Add, Requantize."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.ir import attr, node_text
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import Tail, match_tail
from qcompiler.passes._qdq import dequantized, replace_island
from qcompiler.qmath import DTYPE_RANGES


class IntegerizeConvPass(RequantizingPass):
    """Rewrite quantized 2-D Convs as integer ops.

    ``acc = ConvInteger(Pad(x_q, zp_x), w_q) + (b_q - zp_x * sum(w_q))`` in int32, then
    ``y_q = Requantize(acc, s_x * s_w[c] / s_y)`` per output channel, with a fused Relu/Clip applied as the
    clamp. Padding is explicit with the input zero point, so the correction ``zp_x * sum(w_q)`` is exact
    everywhere. Does not fire when an input is not dequantized, the output is not quantized per tensor, or
    ``auto_pad`` is used. Raises :class:`OverflowRiskError` if the int32 accumulator could overflow.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Conv."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Conv"]:
            x, w = dequantized(node.inputs[0]), dequantized(node.inputs[1])
            bias = dequantized(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            tail = match_tail(node.outputs[0])
            if x is None or w is None or isinstance(tail, str) or attr(node, "auto_pad", "NOTSET") != "NOTSET":
                continue
            self._rewrite(graph, node, x, w, bias, tail)
            modified = True
        return PassResult(model, modified)

    def _rewrite(self, graph, node, x, w, bias, tail: Tail) -> None:
        emit = Emitter(graph, tail.quantize, node.name)
        weight = w.value.const_value.numpy().astype(np.int64)
        channels = weight.shape[0]
        check_accumulator(node, x, weight)
        data = x.value
        pads = list(attr(node, "pads", [0] * (2 * (weight.ndim - 2))))
        if any(pads):
            half = len(pads) // 2
            full = [0, 0, *pads[:half], 0, 0, *pads[half:]]
            data = emit.op("Pad", [data, emit.const(np.array(full, np.int64), "pads"),
                                   emit.const(np.array(x.zp, x.dtype), "pad_value")], {"mode": "constant"}, dtype=x.dtype)
        attributes = {k: attr(node, k) for k in ("strides", "dilations", "group", "kernel_shape") if k in node.attributes}
        acc = emit.op("ConvInteger", [data, w.value], attributes, dtype="int32")
        q_bias = bias.value.const_value.numpy().astype(np.int64) if bias is not None else np.zeros(channels, np.int64)
        correction = q_bias - x.zp * weight.reshape(channels, -1).sum(axis=1)
        broadcast = (channels,) + (1,) * (weight.ndim - 2)
        if np.any(correction):
            acc = emit.op("Add", [acc, emit.const(correction.astype(np.int32).reshape(broadcast), "bias")], dtype="int32")
        ratio = np.float64(x.s) * w.scale.astype(np.float64) / np.float64(tail.output.s)
        out = emit.requantize(acc, ratio.reshape(broadcast), tail.output.zp, tail.output.dtype, self.mantissa_bits,
                              tail.clamp)
        replace_island(graph, [node, *tail.nodes], tail.quantize, out)


def check_accumulator(node: ir.Node, x, weight: np.ndarray) -> None:
    """Refuse a Conv/MatMul whose worst-case int32 accumulator could overflow (weight: output channels first)."""
    lo, hi = DTYPE_RANGES[x.dtype]
    worst = max(abs(lo), abs(hi), abs(lo - x.zp), abs(hi - x.zp)) * np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1).max()
    if worst >= 2**31:
        raise OverflowRiskError(f"{node_text(node)}: the int32 accumulator could reach {worst:.3g}; "
                                "the reduction is too long for 8-bit operands")
