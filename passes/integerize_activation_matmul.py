"""Integer MatMul of two activations (attention's Q·Kᵀ and A·V): centered int32 product, one requantization."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.ir import node_text
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import RequantizingPass
from qcompiler.passes._product import rewrite_activation_product
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
            modified |= rewrite_activation_product(graph, node, self.mantissa_bits, check=_check_reduction)
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
