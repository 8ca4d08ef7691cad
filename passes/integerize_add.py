"""Integer Add/Sub/Sum of activations (residual connections) with a fused Relu/Clip."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, replace_island
from qcompiler.qmath import dyadic_common_shift


class IntegerizeAddPass(RequantizingPass):
    """Rewrite ``DQ(a) +/- DQ(b) [+ ...] -> [Relu|Clip] -> Q`` as one integer weighted sum.

    Each branch is rescaled to the output scale by a dyadic multiplier sharing one shift ``c``:
    ``y_q = Requantize(sum_i sign_i * (x_i - zp_i) * m_i, multiplier 1, shift c)`` with
    ``m_i / 2**c ~= s_i / s_y`` (HAWQ-V3 residual rescaling, done in int64 before one rounding).
    A float constant operand (a position embedding) is added as the int64 constant ``round(k * 2**c / s_y)``.
    Does not fire without an activation operand, or when one is not per-tensor quantized.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching node."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type in ("Add", "Sub", "Sum")]:
            signs = np.ones(len(node.inputs))
            if node.op_type == "Sub":
                signs[1] = -1.0
            operands = [(dequantized(v), sign) for v, sign in zip(node.inputs, signs, strict=True)
                        if const_array(v) is None]
            constants = [(const_array(v), sign) for v, sign in zip(node.inputs, signs, strict=True)
                         if const_array(v) is not None]
            if not operands or any(o is None or not o.per_tensor or o.value.const_value is not None for o, _ in operands):
                continue
            tail = match_tail(node.outputs[0])
            if isinstance(tail, str):
                continue
            ratios = np.array([sign * o.s for o, sign in operands]) / np.float64(tail.output.s)
            multipliers, shift = dyadic_common_shift(ratios, self.mantissa_bits)
            emit = Emitter(graph, tail.quantize, node.name)
            total = None
            for (operand, _), multiplier in zip(operands, multipliers, strict=True):
                term = emit.op("Mul", [emit.centered(operand.value, operand.zp, "int64"),
                                       emit.const(np.array(multiplier, np.int64), "multiplier")], dtype="int64")
                total = term if total is None else emit.op("Add", [total, term], dtype="int64")
            if constants:
                offset = sum(sign * k.astype(np.float64) for k, sign in constants) * 2.0**shift / tail.output.s
                total = emit.op("Add", [total, emit.const(np.rint(offset).astype(np.int64), "offset")], dtype="int64")
            out = emit.requantize_dyadic(total, np.array(1), np.array(shift), tail.output.zp, tail.output.dtype,
                                         tail.clamp)
            replace_island(graph, [node, *tail.nodes], tail.quantize, out)
            modified = True
        return PassResult(model, modified)
