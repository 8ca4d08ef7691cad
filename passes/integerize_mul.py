"""Integer elementwise Mul of two activations (squeeze-and-excitation gating)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._product import rewrite_activation_product
from qcompiler.passes._qdq import dequantized, replace_island


class IntegerizeMulPass(RequantizingPass):
    """Rewrite ``DQ(a) * DQ(b) -> [Relu|Clip] -> Q`` as ``Requantize((a - zp_a) * (b - zp_b), s_a s_b / s_y)``.

    The product of two centered 8-bit values fits int32 exactly. A Mul by a scalar constant ``c`` that
    could not be folded into a producer (e.g. attention's ``Q·Kᵀ * 1/sqrt(d)``) becomes
    ``Requantize(a - zp_a, s_a * c / s_y)``. Does not fire on other constant operands (per-channel ones are
    folded into convolutions earlier) or per-axis quantized operands.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Mul."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Mul"]:
            if self._scalar_multiply(graph, node):
                modified = True
                continue
            modified |= rewrite_activation_product(graph, node, self.mantissa_bits)
        return PassResult(model, modified)

    def _scalar_multiply(self, graph: ir.Graph, node: ir.Node) -> bool:
        """Rewrite ``DQ(a) * c`` with a scalar float constant ``c``; report whether it fired."""
        operands = [dequantized(v) for v in node.inputs[:2]]
        scalars = [const_array(v) for v in node.inputs[:2]]
        if sorted(x is None for x in operands) != [False, True]:
            return False
        a = next(x for x in operands if x is not None)
        c = next((s for s, x in zip(scalars, operands, strict=True) if x is None), None)
        tail = match_tail(node.outputs[0])
        if c is None or c.size != 1 or not a.per_tensor or isinstance(tail, str) or float(c.reshape(-1)[0]) == 0.0:
            return False
        emit = Emitter(graph, tail.quantize, node.name)
        ratio = np.array(np.float64(a.s) * np.float64(c.reshape(-1)[0]) / np.float64(tail.output.s))
        out = emit.requantize(emit.centered(a.value, a.zp), ratio, tail.output.zp, tail.output.dtype,
                              self.mantissa_bits, tail.clamp)
        replace_island(graph, [node, *tail.nodes], tail.quantize, out)
        return True
