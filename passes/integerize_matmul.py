"""Integer MatMul: ``DQ(x), DQ(W) -> MatMul -> [Add DQ(b)] -> [Relu|Clip] -> Q`` becomes MatMulInteger + Requantize."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, replace_island
from qcompiler.passes.integerize_conv import check_accumulator


class IntegerizeMatMulPass(RequantizingPass):
    """Rewrite quantized MatMuls with a constant ``[K, N]`` weight as integer ops.

    ``acc = MatMulInteger(x_q, W_q) + (b_q - zp_x * colsum(W_q))`` in int32, then
    ``y_q = Requantize(acc, s_x * s_w[n] / s_y)`` per output column, with a fused Relu/Clip as the clamp.
    Does not fire on MatMuls of two activations or when the output is not quantized per tensor.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching MatMul."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "MatMul"]:
            x, w = dequantized(node.inputs[0]), dequantized(node.inputs[1])
            if x is None or w is None or w.value.const_value is None or not x.per_tensor:
                continue
            tail = match_tail(node.outputs[0], allow_bias=True)
            if isinstance(tail, str):
                continue
            bias = None
            if tail.nodes and tail.nodes[0].op_type == "Add":
                bias = next((dequantized(v) for v in tail.nodes[0].inputs if dequantized(v) is not None
                             and dequantized(v).value.const_value is not None), None)
                if bias is None:
                    continue
            self._rewrite(graph, node, x, w, bias, tail)
            modified = True
        return PassResult(model, modified)

    def _rewrite(self, graph, node, x, w, bias, tail) -> None:
        emit = Emitter(graph, tail.quantize, node.name)
        weight = w.value.const_value.numpy().astype(np.int64)
        check_accumulator(node, x, weight.T)
        acc = emit.op("MatMulInteger", [x.value, w.value], dtype="int32")
        q_bias = bias.value.const_value.numpy().astype(np.int64).reshape(-1) if bias is not None else 0
        correction = q_bias - x.zp * weight.sum(axis=0)
        if np.any(correction):
            acc = emit.op("Add", [acc, emit.const(correction.astype(np.int32), "bias")], dtype="int32")
        ratio = np.float64(x.s) * w.scale.astype(np.float64) / np.float64(tail.output.s)
        out = emit.requantize(acc, ratio, tail.output.zp, tail.output.dtype, self.mantissa_bits, tail.clamp)
        replace_island(graph, [node, *tail.nodes], tail.quantize, out)
