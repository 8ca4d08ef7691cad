"""Fold per-channel Mul/Add/Sub/Div by constants into the Conv or MatMul that produces their input."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, constant, single_consumer
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._channel_affine import ChannelAffine, match_channel_affine


class FoldChannelAffinePass(QcPass):
    """Fold ``Conv(x, W, b) * k + a`` into ``Conv(x, W*k, b*k + a)`` (BatchNorm written out by hand).

    Also folds into ``MatMul(x, W)`` (+ bias ``Add``) along the last axis: ``W[:, c] *= k[c]``. Does not fire
    when the producer has other users or non-constant weights, or when the constant is not per-channel.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fold until no affine op follows a foldable producer."""
        graph = model.graph
        modified = False
        changed = True
        while changed:
            changed = False
            for node in list(graph):
                if node.graph is graph and self._try_fold(graph, node):
                    changed = modified = True
        return PassResult(model, modified)

    @staticmethod
    def _try_fold(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type not in ("Mul", "Add", "Sub", "Div"):
            return False
        for operand in node.inputs[:2]:
            producer = operand.producer() if operand is not None else None
            if producer is None or single_consumer(operand) is not node:
                continue
            if node.op_type == "Add" and producer.op_type == "MatMul":
                continue  # the canonical MatMul bias: folding it would only rebuild it
            if producer.op_type == "Conv":
                match = match_channel_affine(node, channel_axis=1)
                if isinstance(match, ChannelAffine) and match.activation is operand:
                    return _fold_into(graph, producer, match, weight_axis=0)
            if producer.op_type in ("MatMul", "Add") and operand.shape is not None:
                match = match_channel_affine(node, channel_axis=len(operand.shape) - 1)
                if isinstance(match, ChannelAffine) and match.activation is operand:
                    return _fold_into_matmul(graph, producer, match)
        return False


def _fold_into(graph: ir.Graph, conv: ir.Node, match: ChannelAffine, weight_axis: int) -> bool:
    """Scale the weight's output channels (axis ``weight_axis``) and fold the offset into the bias."""
    weight = const_array(conv.inputs[1])
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    bias = const_array(conv.inputs[2]) if has_bias else np.zeros(weight.shape[weight_axis] if weight is not None else 0)
    if weight is None or bias is None:
        return False
    shape = [1] * weight.ndim
    shape[weight_axis] = -1
    conv.replace_input_with(1, constant(graph, (weight * match.scale.reshape(shape)).astype(weight.dtype), "weight"))
    if not has_bias:
        conv.resize_inputs(3)
    conv.replace_input_with(2, constant(graph, (bias * match.scale + match.offset).astype(weight.dtype), "bias"))
    _bypass(graph, match)
    return True


def _fold_into_matmul(graph: ir.Graph, producer: ir.Node, match: ChannelAffine) -> bool:
    """Fold into ``MatMul(x, W)`` or into ``Add(MatMul(x, W), bias)`` with constant ``W`` and ``bias``."""
    bias_node = None
    matmul = producer
    if producer.op_type == "Add":
        inner = producer.inputs[0].producer() if producer.inputs[0] is not None else None
        if inner is None or inner.op_type != "MatMul" or single_consumer(inner.outputs[0]) is not producer:
            return False
        bias_node, matmul = producer, inner
    weight = const_array(matmul.inputs[1])
    if weight is None or weight.ndim != 2:
        return False
    bias = np.zeros(weight.shape[1], weight.dtype)
    if bias_node is not None:
        bias = const_array(bias_node.inputs[1])
        if bias is None or bias.shape[-1:] != (weight.shape[1],) or bias.size != weight.shape[1]:
            return False
        bias = bias.reshape(-1)
    matmul.replace_input_with(1, constant(graph, (weight * match.scale).astype(weight.dtype), "weight"))
    new_bias = constant(graph, (bias * match.scale + match.offset).astype(weight.dtype), "bias")
    if bias_node is not None:
        bias_node.replace_input_with(1, new_bias)
        _bypass(graph, match)
    else:
        match.node.replace_input_with(0, matmul.outputs[0])
        match.node.replace_input_with(1, new_bias)
        match.node.op_type = "Add"
    return True


def _bypass(graph: ir.Graph, match: ChannelAffine) -> None:
    """Remove the folded affine node, keeping its output name when it is a graph output."""
    result = match.node.outputs[0]
    result.replace_all_uses_with(match.activation, replace_graph_outputs=True)
    if match.activation.is_graph_output():
        match.activation.name, result.name = result.name, None
    graph.remove(match.node, safe=True)
