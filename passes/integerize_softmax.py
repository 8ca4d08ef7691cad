"""Integer Softmax on the last axis (classifier heads): exponential table, integer sum, one division."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.intops import DOMAIN
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._emit import Emitter
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.qmath import DTYPE_RANGES

#: fixed-point bits of the exponential table: e(d) = round(2**EXP_BITS * exp(-s * d)).
EXP_BITS = 16


class IntegerizeSoftmaxPass(QcPass):
    """Rewrite ``DQ(x) -> Softmax(axis=-1) -> Q`` with integer arithmetic only.

    With ``d = max(x_q) - x_q`` (0..255): ``e = E[d]`` where ``E[d] = round(2**16 * exp(-s_x * d))`` is a
    table, ``S = sum(e)`` along the axis, and ``y_q = floor((e * (qmax - zp_y) + S // 2) / S) + zp_y`` with the
    fixed output scale ``1 / (qmax - zp_y)``. The largest entry maps to ``qmax``; absolute error against the
    float softmax is at most one output step plus the table's rounding (relative 2**-16 per term).
    Requires fewer than 2**15 elements per row (so ``S`` and ``e * 255`` fit int32). Does not fire on a
    Softmax over any axis but the last.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Softmax."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Softmax"]:
            x = dequantized(node.inputs[0])
            found = quantized_output(node.outputs[0])
            if x is None or found is None or not x.per_tensor or x.value.shape[-1] >= 2**15:
                continue
            axis = node.attributes["axis"].value if "axis" in node.attributes else -1
            if axis not in (-1, len(x.value.shape) - 1):
                continue
            quant, out = found
            steps = out.qmax - out.zp
            if steps <= 0 or not np.isclose(out.s * steps, 1.0):
                continue
            emit = Emitter(graph, quant, node.name)
            axes = emit.const(np.array([-1], np.int64), "axes")
            peak = emit.op("ReduceMax", [x.value, axes], {"keepdims": 1}, dtype=x.dtype)
            distance = emit.op("Sub", [emit.cast(peak, "int32"), emit.cast(x.value, "int32")], dtype="int32")
            codes = DTYPE_RANGES[x.dtype][1] - DTYPE_RANGES[x.dtype][0] + 1
            table = np.rint(2.0**EXP_BITS * np.exp(-np.float64(x.s) * np.arange(codes))).astype(np.int32)
            exp = emit.op("LookupTable", [distance, emit.const(table, "exp_table"), emit.const(np.array(0, np.int32), "zero")],
                          domain=DOMAIN, dtype="int32")
            total = emit.op("ReduceSum", [exp, axes], {"keepdims": 1}, dtype="int32")
            scaled = emit.op("Mul", [exp, emit.const(np.array(steps, np.int32), "steps")], dtype="int32")
            half = emit.op("Div", [total, emit.const(np.array(2, np.int32), "two")], dtype="int32")
            quotient = emit.op("Div", [emit.op("Add", [scaled, half], dtype="int32"), total], dtype="int32")
            shifted = emit.op("Add", [quotient, emit.const(np.array(out.zp, np.int32), "out_zp")], dtype="int32")
            result = emit.cast(shifted, out.dtype) if out.dtype != "int32" else shifted
            replace_island(graph, [node], quant, result)
            modified = True
        return PassResult(model, modified)
