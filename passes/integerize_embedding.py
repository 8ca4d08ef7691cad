"""Embedding lookups: ``Gather`` from a constant float table by integer ids, on a quantized table."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._emit import Emitter
from qcompiler.passes._qdq import quantized_output, replace_island
from qcompiler.qmath import quantize


class IntegerizeEmbeddingPass(QcPass):
    """Rewrite ``Gather(table, ids) -> Q`` as ``Gather(quantize(table), ids)`` on the output's grid.

    ``table`` is a constant float tensor and ``ids`` an integer tensor (token ids from an integer graph
    input); the output is a calibrated activation point (``quant_plan.passes_through`` tells it from a Gather
    of an activation). Quantizing every table row with the output's per-tensor parameters and then selecting
    rows is exactly the fake-quantized lookup (QuantizeLinear is elementwise), so the pass is bit-exact.
    Does not fire on a Gather of an activation, with float indices, or without a per-tensor Q after it.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Gather."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Gather" and n.domain in ("", "ai.onnx")]:
            table = const_array(node.inputs[0])
            ids = node.inputs[1]
            if table is None or not np.issubdtype(table.dtype, np.floating):
                continue
            if ids.dtype is None or ids.dtype.is_floating_point():
                continue
            found = quantized_output(node.outputs[0])
            if found is None or not found[1].per_tensor:
                continue
            quant, out = found
            emit = Emitter(graph, quant, node.name)
            codes = emit.const(quantize(table, out.s, out.zp, out.dtype), "table")
            attributes = {k: a.value for k, a in node.attributes.items()}
            result = emit.op("Gather", [codes, ids], attributes, dtype=out.dtype)
            replace_island(graph, [node], quant, result)
            modified = True
        return PassResult(model, modified)
