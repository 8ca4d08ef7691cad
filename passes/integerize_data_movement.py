"""Run range-preserving ops (MaxPool, Reshape, Transpose, Pad, Resize nearest, ...) on integer tensors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._emit import Emitter
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.qmath import quantize
from qcompiler.quant_plan import passes_through


class IntegerizeDataMovementPass(QcPass):
    """Rewrite ``DQ(x) -> op -> Q`` as ``op(x_q)`` when input and output share scale and zero point.

    Valid because these ops only move, select or take maxima of values, which commutes with a monotone
    per-tensor quantization. ``Pad`` quantizes its constant pad value; ``Resize`` (nearest) gets integer
    ``sizes`` in place of float scales. Does not fire when the parameters differ or the op has a float
    operand other than the data that cannot be made integer.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching node."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if passes_through(n)]:
            x = dequantized(node.inputs[0])
            found = quantized_output(node.outputs[0])
            if x is None or found is None:
                continue
            quant, out = found
            if not (x.per_tensor and out.per_tensor and x.s == out.s and x.zp == out.zp and x.dtype == out.dtype):
                continue
            emit = Emitter(graph, quant, node.name)
            operands = self._operands(emit, node, x)
            if operands is None:
                continue
            attributes = {k: a.value for k, a in node.attributes.items()}
            result = emit.op(node.op_type, operands, attributes, dtype=x.dtype)
            replace_island(graph, [node], quant, result)
            modified = True
        return PassResult(model, modified)

    @staticmethod
    def _operands(emit: Emitter, node: ir.Node, x) -> list[ir.Value | None] | None:
        """The integer op's inputs: the integer data plus integer-only versions of the other operands."""
        if node.op_type == "Pad":
            value = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.array(0.0)
            if value is None:
                return None
            pad_value = emit.const(quantize(np.asarray(value), x.s, x.zp, x.dtype).reshape(()), "pad_value")
            return [x.value, node.inputs[1], pad_value, *node.inputs[3:4]]
        if node.op_type == "Resize":
            if attr(node, "mode", "nearest") != "nearest" or node.outputs[0].shape is None:
                return None
            sizes = np.array(list(node.outputs[0].shape), np.int64)
            return [x.value, None, None, emit.const(sizes, "sizes")]
        return [x.value, *node.inputs[1:]]
