"""Quantize constant weights (per-channel symmetric int8) and biases (int32) of Conv and MatMul."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.ir import const_array, constant, fresh_name, matmul_bias, node_text
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._qdq import dequantized
from qcompiler.qmath import weight_codes, weight_scales


class QuantizeWeightsPass(QcPass):
    """Replace float weights and biases by integer initializers behind a DequantizeLinear.

    Conv weights are quantized per output channel (axis 0), MatMul weights ``[K, N]`` per column (axis 1),
    symmetric over ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (``[-127, 127]`` at 8 bits), stored as int8. A bias (Conv input 2, or the constant of the Add after a MatMul) becomes int32
    with scale ``s_x * s_w[c]`` and zero point 0; a channel whose bias would not fit in 2**30 at that scale gets
    a wider weight scale instead. Requires the activation input to be dequantized already (run after
    :class:`InsertQDQPass`). ``layer_bits`` (node name -> width) overrides ``bits`` for the layers it names.
    With ``per_channel=False`` every channel of a weight gets the scale of its largest magnitude (per-tensor;
    a channel widened for its bias keeps its own scale).
    """

    def __init__(self, bits: int = 8, layer_bits: Mapping[str, int] | None = None, per_channel: bool = True):
        super().__init__()
        self.bits = bits
        self.layer_bits = dict(layer_bits or {})
        self.per_channel = per_channel

    def call(self, model: ir.Model) -> PassResult:
        """Quantize every Conv/MatMul with a float constant weight."""
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type == "Conv" and const_array(node.inputs[1]) is not None:
                self._quantize(graph, node, weight_axis=0, bias_user=(node, 2) if len(node.inputs) > 2 else None)
                modified = True
            elif node.op_type == "MatMul" and const_array(node.inputs[1]) is not None:
                users = node.outputs[0].consumers()
                bias = matmul_bias(users[0]) if len(users) == 1 else None
                self._quantize(graph, node, weight_axis=1,
                               bias_user=None if bias is None else (users[0], list(users[0].inputs).index(bias)))
                modified = True
        return PassResult(model, modified)

    def _quantize(self, graph: ir.Graph, node: ir.Node, weight_axis: int,
                  bias_user: tuple[ir.Node, int] | None) -> None:
        """Quantize ``node``'s weight; ``bias_user`` is the node and input index holding its float bias."""
        source = dequantized(node.inputs[0])
        if source is None:
            raise ValueError(f"input of {node_text(node)} is not quantized; run InsertQDQPass first")
        weight = const_array(node.inputs[1]).astype(np.float64)
        bits = self.layer_bits.get(node.name, self.bits)
        scale = weight_scales(weight, weight_axis, bits, self.per_channel)
        bias_value = const_array(bias_user[0].inputs[bias_user[1]]) if bias_user is not None else None
        if bias_value is not None:
            # A channel whose weights nearly vanish (dead after BatchNorm folding) but whose bias does not
            # would need a bias beyond int32: widen that channel's weight scale so |b_q| <= 2**30.
            scale = np.maximum(scale, np.abs(bias_value.astype(np.float64).reshape(-1)) / (source.s * 2.0**30))
        scale = scale.astype(np.float32)
        q_weight = weight_codes(weight, scale, weight_axis, bits)
        node.replace_input_with(1, _dequantize(graph, node, q_weight, scale, weight_axis, "weight"))
        if bias_value is None:
            return
        bias_scale = (np.float64(source.s) * scale.astype(np.float64)).astype(np.float32)
        q_bias = np.rint(bias_value.astype(np.float64).reshape(-1) / bias_scale)
        if np.any(np.abs(q_bias) > 2**31 - 1):
            raise OverflowRiskError(f"bias of {node_text(node)} overflows int32 at input scale {source.s:.3g}")
        bias_user[0].replace_input_with(bias_user[1], _dequantize(graph, node, q_bias.astype(np.int32), bias_scale, 0,
                                                                  "bias"))


def _dequantize(graph: ir.Graph, node: ir.Node, q: np.ndarray, scale: np.ndarray, axis: int, hint: str) -> ir.Value:
    """``DequantizeLinear(q, scale, 0, axis)`` inserted before ``node``; returns its float output."""
    name = node.name or fresh_name(graph, "node")
    q_value = constant(graph, q, f"{name}_{hint}_q")
    scale_value = constant(graph, scale, f"{name}_{hint}_scale")
    zero_value = constant(graph, np.zeros(scale.shape, q.dtype), f"{name}_{hint}_zero_point")
    dequant = ir.node("DequantizeLinear", [q_value, scale_value, zero_value], {"axis": axis}, name=f"{name}/{hint}_dq")
    graph.insert_before(node, [dequant])
    out = dequant.outputs[0]
    out.name = f"{name}_{hint}_dq"
    out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(q.shape)
    return out
