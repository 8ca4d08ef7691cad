"""Fold inference-mode BatchNormalization into the Conv that feeds it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array, constant, single_consumer
from qcompiler.pass_infra import PassResult, QcPass


class FoldBatchNormPass(QcPass):
    """Rewrite ``BatchNormalization(Conv(x, W, b))`` as ``Conv(x, W', b')``.

    With ``k = scale / sqrt(var + eps)``: ``W'[c] = W[c] * k[c]`` and ``b' = (b - mean) * k + B``.
    Does not fire when the Conv output has other users, when any BN or Conv parameter is not a constant,
    or when BN is in training mode (more than one output used).
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fold every matching pair."""
        graph = model.graph
        modified = False
        for bn in [n for n in graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
            modified |= self._fold(graph, bn)
        return PassResult(model, modified)

    @staticmethod
    def _fold(graph: ir.Graph, bn: ir.Node) -> bool:
        conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if conv is None or conv.op_type != "Conv" or single_consumer(conv.outputs[0]) is not bn:
            return False
        if any(out.consumers() or out.is_graph_output() for out in bn.outputs[1:]):
            return False
        params = [const_array(v) for v in bn.inputs[1:5]]
        weight = const_array(conv.inputs[1])
        if weight is None or any(p is None for p in params):
            return False
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        bias = const_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
        bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        k = scale / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        new_weight = (weight * k.reshape(-1, *([1] * (weight.ndim - 1)))).astype(weight.dtype)
        new_bias = ((bias - mean) * k + shift).astype(weight.dtype)
        conv.replace_input_with(1, constant(graph, new_weight, conv.inputs[1].name or "weight"))
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(2, constant(graph, new_bias, "bias"))
        result = bn.outputs[0]
        result.replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
        if conv.outputs[0].is_graph_output():
            name, result.name = result.name, None
            conv.outputs[0].name = name
        graph.remove(bn, safe=True)
        return True
