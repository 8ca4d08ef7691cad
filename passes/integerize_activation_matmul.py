"""Integer MatMul of two activations (attention's Q·Kᵀ and A·V): centered int32 product, one requantization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.ir import node_text
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, replace_island
from qcompiler.qmath import DTYPE_RANGES


class IntegerizeActivationMatMulPass(RequantizingPass):
    """Rewrite ``DQ(a) @ DQ(b) -> [Relu|Clip] -> Q`` with both operands activations as
    ``Requantize(MatMul(int32(a) - zp_a, int32(b) - zp_b), s_a s_b / s_y)``.

    The int32 MatMul is exact while ``K * max|a - zp_a| * max|b - zp_b| < 2**31`` (K < 33,000 for 8 bits);
    longer reductions raise :class:`OverflowRiskError`. Does not fire when an operand is a constant (that is
    :class:`IntegerizeMatMulPass`'s job) or per-axis quantized.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching MatMul."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "MatMul"]:
            a, b = (dequantized(v) for v in node.inputs[:2])
            if a is None or b is None or not (a.per_tensor and b.per_tensor):
                continue
            if a.value.const_value is not None or b.value.const_value is not None:
                continue
            tail = match_tail(node.outputs[0])
            if isinstance(tail, str):
                continue
            _check_reduction(node, a, b)
            emit = Emitter(graph, tail.quantize, node.name)
            product = emit.op("MatMul", [emit.centered(a.value, a.zp), emit.centered(b.value, b.zp)], dtype="int32")
            ratio = np.array(np.float64(a.s) * np.float64(b.s) / np.float64(tail.output.s))
            out = emit.requantize(product, ratio, tail.output.zp, tail.output.dtype, self.mantissa_bits, tail.clamp)
            replace_island(graph, [node, *tail.nodes], tail.quantize, out)
            modified = True
        return PassResult(model, modified)


def _check_reduction(node: ir.Node, a, b) -> None:
    """Refuse a reduction long enough to overflow the int32 accumulator."""
    depth = a.value.shape[-1] if a.value.shape is not None else None
    if not isinstance(depth, int):
        raise OverflowRiskError(f"{node_text(node)}: the reduction length is not static")
    span = [max(abs(lo - q.zp), abs(hi - q.zp)) for q in (a, b) for lo, hi in [DTYPE_RANGES[q.dtype]]]
    if depth * span[0] * span[1] >= 2**31:
        raise OverflowRiskError(f"{node_text(node)}: a reduction over {depth} products of 8-bit values could "
                                "overflow the int32 accumulator")
