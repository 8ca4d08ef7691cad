"""Integer L2 normalization (``LpNormalization(p=2)``) on the last axis: integer square root, one division per row."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.intmath.layer_norm import l2_normalize_constants
from qcompiler.ir import attr
from qcompiler.nonlinear import record
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.passes.integerize_layer_norm import emit_normalized, last_axis_length


class IntegerizeL2NormalizationPass(RequantizingPass):
    """Rewrite ``DQ(x) -> LpNormalization(p=2, axis=-1) -> Q`` with integer ops only.

    The arithmetic is :func:`qcompiler.intmath.layer_norm.l2_normalize`: ``c = x_q - zp_x``,
    ``n = Max(4**G * ReduceSum(int64(c)**2), 1)``, ``k = isqrt(n)``, ``R = 2**62 / k`` (one Div per row),
    ``z = Requantize(c, R, 62 - G - F)`` (``F = 24``), ``y_q = Requantize(z, m, S, zp_y)`` with
    ``m / 2**S ~ 1 / (2**F s_y)``. The input scale cancels out. A row of zeros gives ``zp_y`` (as onnxruntime's
    LpNormalization gives 0). Requires per-tensor ``x`` and output and a static last axis; does not fire on
    ``p=1`` or another axis. Records ``P, F, K, G, shift`` with :func:`qcompiler.nonlinear.record`.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching LpNormalization."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "LpNormalization" and n.domain in ("", "ai.onnx")]:
            x = dequantized(node.inputs[0])
            found = quantized_output(node.outputs[0])
            if x is None or found is None or not x.per_tensor or attr(node, "p", 2) != 2:
                continue
            length = last_axis_length(x, attr(node, "axis", -1))
            quant, out = found
            if length is None or not out.per_tensor:
                continue
            what = f"LpNormalization '{node.name}'"
            try:
                k = l2_normalize_constants(length, max(abs(x.qmin - x.zp), abs(x.qmax - x.zp)), out.s,
                                           self.mantissa_bits, what)
            except OverflowRiskError as error:
                raise OverflowRiskError(f"{error}; cannot make {what} integer-only") from None
            emit = Emitter(graph, quant, node.name)
            axes = emit.const(np.array([-1], np.int64), "axes")
            c = emit.centered(x.value, x.zp)
            wide = emit.cast(c, "int64")
            square_sum = emit.op("ReduceSum", [emit.op("Mul", [wide, wide], dtype="int64"), axes], {"keepdims": 1},
                                 dtype="int64")
            z = emit_normalized(emit, c, square_sum, axes, k, at_least_one=True)
            result = emit.requantize_dyadic(z, k.multipliers[0], np.array(k.shift), out.zp, out.dtype,
                                            (out.qmin, out.qmax))
            replace_island(graph, [node], quant, result)
            record(model, node.name, op="LpNormalization", method="isqrt", constants=k.summary(), error=None)
            modified = True
        return PassResult(model, modified)
