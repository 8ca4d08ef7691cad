"""Masked mean pooling (sentence embeddings): ``sum(x * mask) / max(sum(mask), eps)`` in integers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import QcError
from qcompiler.intops import DOMAIN
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import _IR_TYPES, Emitter, RequantizingPass
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.qmath import code_range, dyadic
from qcompiler.quant_plan import masked_mean


class UnsupportedMaskedMeanError(QcError):
    """A masked mean qc recognizes but cannot make integer (per-channel input, unknown shapes)."""


class IntegerizeMaskedMeanPass(RequantizingPass):
    """Rewrite the masked mean of ``quant_plan.masked_mean`` ending in ``Div -> Q`` as integer ops.

    With ``x_q`` the input codes (scale ``s_x``, zero point ``zp_x``) and ``m``, ``m'`` the integer masks::

        acc = ReduceSum((int32(x_q) - zp_x) * int32(m))          # exact, int32
        n   = Clip(ReduceSum(int32(m')), 1, N)                    # the count; N = positions reduced over
        y_q = Requantize(acc, M[n], shift)                        # M[c] ~ 2**shift * s_x / (s_y * c)

    ``M`` is a compile-time table of ``N + 1`` int64 multipliers sharing one shift (entry 0 = entry 1: an
    all-zero mask gives ``acc = 0``, which the float ``Clip(count, eps)`` also maps to 0). The only rounding
    is the final one (round half up), so the result is within one step of the fake-quantized float mean.
    Masks must be non-negative with counts at most N (attention masks hold 0/1).
    Does not fire on other Div nodes or without Q/DQ around the pattern; raises
    :class:`UnsupportedMaskedMeanError` on a recognized pattern whose input is per-channel quantized or whose
    count mask has no static shape.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching masked mean."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Div"]:
            mean = masked_mean(node)
            if mean is None:
                continue
            x = dequantized(mean.data)
            found = quantized_output(node.outputs[0])
            if x is None or found is None:
                continue
            quant, out = found
            if not x.per_tensor or not out.per_tensor:
                raise UnsupportedMaskedMeanError(f"masked mean '{node.name}': per-channel quantized input or output")
            shape = mean.count_mask.shape
            if shape is None or not all(isinstance(d, int) for d in shape.dims):
                raise UnsupportedMaskedMeanError(f"masked mean '{node.name}': the count mask has no static shape")
            positions = int(np.prod([shape.dims[a] for a in mean.axes]))
            emit = Emitter(graph, quant, node.name)
            axes = emit.const(np.array(mean.axes, np.int64), "axes")
            keep = {"keepdims": mean.keepdims}
            centered = emit.centered(x.value, x.zp, "int32")
            weighted = emit.op("Mul", [centered, emit.cast(mean.mask, "int32")], dtype="int32")
            acc = emit.op("ReduceSum", [weighted, axes], keep, dtype="int32")
            count = emit.op("ReduceSum", [emit.cast(mean.count_mask, "int32"), axes], keep, dtype="int32")
            index = emit.op("Clip", [count, emit.const(np.array(1, np.int32), "one"),
                                     emit.const(np.array(positions, np.int32), "positions")], dtype="int32")
            table, shift = multiplier_table(x.s / out.s, positions, self.mantissa_bits)
            multiplier = emit.op("Gather", [emit.const(table, "multipliers"), index], {"axis": 0}, dtype="int64")
            qmin, qmax = code_range(out.dtype, out.bits)
            inputs = [acc, multiplier, emit.const(np.array(shift, np.int64), "shift"),
                      emit.const(np.array(out.zp, np.int64), "out_zp"), emit.const(np.array(qmin, np.int64), "qmin"),
                      emit.const(np.array(qmax, np.int64), "qmax")]
            result = emit.op("Requantize", inputs, {"to": _IR_TYPES[out.dtype]}, domain=DOMAIN, dtype=out.dtype)
            replace_island(graph, [*mean.interior, node], quant, result)
            modified = True
        return PassResult(model, modified)


def multiplier_table(ratio: float, positions: int, mantissa_bits: int) -> tuple[np.ndarray, int]:
    """``(M, shift)`` with ``M[c] = round(2**shift * ratio / c)`` for ``c = 1..positions``, ``M[0] = M[1]``.

    ``shift`` is the dyadic shift of ``ratio`` itself, so ``M[1]`` uses the full mantissa and larger counts
    keep ``mantissa_bits - log2(c)`` significant bits.
    """
    _, shift = dyadic(np.array([ratio], np.float64), mantissa_bits)
    shift = int(shift.reshape(-1)[0])
    counts = np.arange(positions + 1, dtype=np.float64)
    counts[0] = 1.0
    return np.rint(ratio * 2.0**shift / counts).astype(np.int64), shift
