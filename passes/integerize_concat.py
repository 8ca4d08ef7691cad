"""Integer Concat: bring every input to the output's parameters, then concatenate."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.qmath import quantize


class IntegerizeConcatPass(RequantizingPass):
    """Rewrite ``Concat(DQ(x_1), ..., DQ(x_n)) -> Q`` as ``Concat(r_1, ..., r_n)`` on integers.

    ``r_i = x_i`` when it already has the output's scale, zero point and dtype, else
    ``Requantize(x_i - zp_i, s_i / s_y)``; a float constant input (a class token) is quantized on the
    output grid. Does not fire on per-axis quantized inputs or without any quantized input.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Concat."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Concat"]:
            parts = [const_array(v) if const_array(v) is not None else dequantized(v) for v in node.inputs]
            found = quantized_output(node.outputs[0])
            quantized = [p for p in parts if not isinstance(p, np.ndarray)]
            if found is None or not quantized or any(p is None or not p.per_tensor for p in quantized):
                continue
            quant, out = found
            emit = Emitter(graph, quant, node.name)
            aligned = [self._align(emit, part, out) for part in parts]
            result = emit.op("Concat", aligned, {"axis": attr(node, "axis")}, dtype=out.dtype)
            replace_island(graph, [node], quant, result)
            modified = True
        return PassResult(model, modified)

    def _align(self, emit: Emitter, part, out) -> ir.Value:
        if isinstance(part, np.ndarray):
            return emit.const(np.clip(quantize(part, out.s, out.zp, out.dtype), out.qmin, out.qmax), "constant")
        if part.s == out.s and part.zp == out.zp and part.dtype == out.dtype:
            return part.value
        ratio = np.array(np.float64(part.s) / np.float64(out.s))
        centered = emit.centered(part.value, part.zp)
        return emit.requantize(centered, ratio, out.zp, out.dtype, self.mantissa_bits, (out.qmin, out.qmax))
