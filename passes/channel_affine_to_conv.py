"""Turn a standalone per-channel affine op on an NCHW activation into a depthwise 1x1 Conv."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import constant
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._channel_affine import ChannelAffine, match_channel_affine


class ChannelAffineToConvPass(QcPass):
    """Rewrite ``x * k + a`` (Mul/Add/Sub/Div by a per-channel constant) on 4-D ``x`` as a depthwise Conv.

    Run after :class:`FoldChannelAffinePass`, so only affine ops without a foldable producer remain (for
    example input normalization). The Conv has ``group = C``, weight ``k`` of shape [C,1,1,1] and bias ``a``;
    quantizing it then gives per-channel integer scaling. Does not fire on activations of rank other than 4.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching node."""
        graph = model.graph
        modified = False
        for node in list(graph):
            match = match_channel_affine(node, 1)
            if not isinstance(match, ChannelAffine) or match.activation.shape is None or len(match.activation.shape) != 4:
                continue
            channels = len(match.scale)
            weight = constant(graph, match.scale.reshape(channels, 1, 1, 1).astype(np.float32), "affine_weight")
            bias = constant(graph, match.offset.astype(np.float32), "affine_bias")
            conv = ir.node("Conv", [match.activation, weight, bias], {"group": channels, "kernel_shape": [1, 1]},
                           name=node.name or None)
            graph.insert_before(node, [conv])
            result = node.outputs[0]
            result.replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
            conv.outputs[0].name, result.name = result.name, None
            conv.outputs[0].shape, conv.outputs[0].type = result.shape, result.type
            graph.remove(node, safe=True)
            modified = True
        return PassResult(model, modified)

