"""Write a BatchNormalization that did not fold into a Conv as a per-channel Mul and Add by constants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array, constant, fresh_name
from qcompiler.pass_infra import PassResult, QcPass


class BatchNormToAffinePass(QcPass):
    """Rewrite inference ``BatchNormalization(x)`` as ``x * k + a`` with ``k = scale / sqrt(var + eps)`` and
    ``a = B - mean * k``, both shaped ``[C, 1, ...]`` to broadcast along axis 1.

    Run after :class:`FoldBatchNormPass`: what remains follows a Gemm/MatMul (BatchNorm1d), or starts a
    pre-activation block. :class:`FoldChannelAffinePass` then folds the Mul/Add into a producing MatMul or
    Conv, and :class:`ChannelAffineToConvPass` turns the rest into depthwise convolutions. Does not fire on
    training-mode BatchNorm (extra outputs used) or non-constant parameters.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching BatchNormalization."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
            params = [const_array(v) for v in node.inputs[1:5]]
            if any(p is None for p in params) or node.inputs[0].shape is None:
                continue
            if any(out.consumers() or out.is_graph_output() for out in node.outputs[1:]):
                continue
            scale, shift, mean, var = (p.astype(np.float64) for p in params)
            k = scale / np.sqrt(var + attr(node, "epsilon", 1e-5))
            broadcast = (-1,) + (1,) * (len(node.inputs[0].shape) - 2)
            name = node.name or fresh_name(graph, "batchnorm")
            mul = ir.node("Mul", [node.inputs[0], constant(graph, k.reshape(broadcast).astype(np.float32), "bn_scale")],
                          name=f"{name}_scale")
            add = ir.node("Add", [mul.outputs[0], constant(graph, (shift - mean * k).reshape(broadcast).astype(np.float32),
                                                           "bn_shift")], name=f"{name}_shift")
            for value in (mul.outputs[0], add.outputs[0]):
                value.shape, value.type = node.outputs[0].shape, node.outputs[0].type
            graph.insert_before(node, [mul, add])
            result = node.outputs[0]
            result.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
            add.outputs[0].name, result.name = result.name, None
            graph.remove(node, safe=True)
            modified = True
        return PassResult(model, modified)
