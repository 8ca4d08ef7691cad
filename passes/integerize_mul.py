"""Integer elementwise Mul of two activations (squeeze-and-excitation gating)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, replace_island


class IntegerizeMulPass(RequantizingPass):
    """Rewrite ``DQ(a) * DQ(b) -> [Relu|Clip] -> Q`` as ``Requantize((a - zp_a) * (b - zp_b), s_a s_b / s_y)``.

    The product of two centered 8-bit values fits int32 exactly. Does not fire on constant operands
    (those are folded into convolutions earlier) or per-axis quantized operands.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Mul."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Mul"]:
            a, b = (dequantized(v) for v in node.inputs[:2])
            if a is None or b is None or not (a.per_tensor and b.per_tensor):
                continue
            if a.value.const_value is not None or b.value.const_value is not None:
                continue
            tail = match_tail(node.outputs[0])
            if isinstance(tail, str):
                continue
            emit = Emitter(graph, tail.quantize, node.name)
            product = emit.op("Mul", [emit.centered(a.value, a.zp), emit.centered(b.value, b.zp)], dtype="int32")
            ratio = np.array(np.float64(a.s) * np.float64(b.s) / np.float64(tail.output.s))
            out = emit.requantize(product, ratio, tail.output.zp, tail.output.dtype, self.mantissa_bits, tail.clamp)
            replace_island(graph, [node, *tail.nodes], tail.quantize, out)
            modified = True
        return PassResult(model, modified)
