"""RepQ-ViT scale reparameterization: per-channel quantization of a LayerNorm output, run as per-tensor."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array, constant, single_consumer
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.qmath import affine_qparams


def reparameterizable(node: ir.Node) -> bool:
    """Whether ``node`` is a last-axis LayerNormalization with constant affine parameters whose output feeds
    only ``MatMul(output, W)`` with constant ``W`` (the q/k/v or fc1 projections of a transformer block)."""
    if node.op_type != "LayerNormalization" or len(node.inputs) < 3 or node.outputs[0].shape is None:
        return False
    if attr(node, "axis", -1) not in (-1, len(node.outputs[0].shape) - 1):
        return False
    if const_array(node.inputs[1]) is None or const_array(node.inputs[2]) is None:
        return False
    out = node.outputs[0]
    users = out.consumers()
    return bool(users) and not out.is_graph_output() and all(
        u.op_type == "MatMul" and u.inputs[0] is out and const_array(u.inputs[1]) is not None for u in users
    )


class ReparameterizeLayerNormPass(QcPass):
    """Fold per-channel quantization parameters of post-LayerNorm activations into the graph (RepQ-ViT).

    From calibrated per-channel ranges of a LayerNorm output ``x`` (last axis ``c``): per-channel affine
    parameters ``(s_c, z_c)``, ``s~ = mean(s)``, ``z~ = round(mean(z))``, ``r1 = s / s~``, ``r2 = z - z~``.
    The LayerNorm then computes ``x~ = x / r1 + s~ * r2`` (``gamma' = gamma / r1``, ``beta' = beta / r1 +
    s~ * r2``) and each consuming ``MatMul(x, W)`` becomes ``MatMul(x~, W')`` with ``W'[c, :] = r1[c] * W[c, :]``
    plus the bias ``-(s * r2) @ W`` (added to an existing bias Add, else a new one). The float model computes
    the same function (up to float rounding), and quantizing ``x~`` per tensor with ``(s~, z~)`` gives exactly
    the per-channel codes of ``x``; the driver re-calibrates ``x~`` per tensor afterwards.
    Only LayerNorms accepted by :func:`reparameterizable` with a range for their output are rewritten.
    ``bits`` is the code width of ``x~``: one for all, or per LayerNorm output name.
    """

    def __init__(self, channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]], dtype: str = "uint8",
                 bits: int | Mapping[str, int] = 8):
        super().__init__()
        self.channel_ranges = channel_ranges
        self.dtype = dtype
        self.bits = bits

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every reparameterizable LayerNorm with a calibrated range."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if reparameterizable(n) and n.outputs[0].name in self.channel_ranges]:
            r1, shift = self._factors(*self.channel_ranges[node.outputs[0].name], self._width(node.outputs[0].name))
            gamma = const_array(node.inputs[1]).astype(np.float64)
            beta = const_array(node.inputs[2]).astype(np.float64)
            node.replace_input_with(1, constant(graph, (gamma / r1).astype(np.float32), f"{node.name}_gamma"))
            node.replace_input_with(2, constant(graph, (beta / r1 + shift).astype(np.float32), f"{node.name}_beta"))
            for matmul in list(node.outputs[0].consumers()):
                self._rescale_consumer(graph, matmul, r1, shift * r1)
            modified = True
        return PassResult(model, modified)

    def _width(self, name: str) -> int:
        return self.bits if isinstance(self.bits, int) else self.bits[name]

    def _factors(self, low: np.ndarray, high: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """``r1`` and the added offset ``s~ * r2`` per channel, for codes of ``bits`` bits."""
        params = [affine_qparams(lo, hi, self.dtype, bits) for lo, hi in zip(low, high, strict=True)]
        scales = np.array([s for s, _ in params], np.float64)
        zeros = np.array([z for _, z in params], np.float64)
        mean_scale, mean_zero = scales.mean(), np.round(zeros.mean())
        return scales / mean_scale, mean_scale * (zeros - mean_zero)

    @staticmethod
    def _rescale_consumer(graph: ir.Graph, matmul: ir.Node, r1: np.ndarray, offset: np.ndarray) -> None:
        """``W' = diag(r1) W`` and bias ``-= offset @ W`` (``offset = s * r2 = r1 * s~ * r2``)."""
        weight = const_array(matmul.inputs[1]).astype(np.float64)
        matmul.replace_input_with(1, constant(graph, (weight * r1[:, None]).astype(np.float32), f"{matmul.name}_w"))
        correction = -(offset @ weight)
        user = single_consumer(matmul.outputs[0])
        bias_index = _bias_operand(user, matmul.outputs[0]) if user is not None else None
        if bias_index is not None:
            bias = const_array(user.inputs[bias_index]).astype(np.float64)
            user.replace_input_with(bias_index, constant(graph, (bias + correction).astype(np.float32), f"{user.name}_b"))
            return
        out = matmul.outputs[0]
        add = ir.node("Add", [out, constant(graph, correction.astype(np.float32), f"{matmul.name}_reparam_bias")],
                      name=f"{matmul.name}/reparam_bias")
        graph.insert_after(matmul, [add])
        add.outputs[0].shape, add.outputs[0].type = out.shape, out.type
        for consumer, index in list(out.uses()):
            if consumer is not add:
                consumer.replace_input_with(index, add.outputs[0])
        if out.is_graph_output():
            graph.outputs[list(graph.outputs).index(out)] = add.outputs[0]


def _bias_operand(node: ir.Node, source: ir.Value) -> int | None:
    """Index of the constant last-axis bias of ``Add(source, b)``, if ``node`` is one."""
    if node.op_type != "Add" or source not in node.inputs[:2]:
        return None
    index = 1 if node.inputs[0] is source else 0
    bias = const_array(node.inputs[index])
    channels = source.shape[-1] if source.shape is not None else None
    return index if bias is not None and bias.shape == (channels,) else None
