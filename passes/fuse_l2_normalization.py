"""Fuse ``x / max(||x||_2, eps)`` over the last axis (torch's ``F.normalize``) into ``LpNormalization(p=2)``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, fresh_name
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._match import (
    is_last_axis_reduction,
    is_op,
    only_user,
    other_input,
    replace_with,
    scalar_const,
)

#: largest ``eps`` fused away (torch's default is 1e-12).
MAX_EPS = 1e-6


class FuseL2NormalizationPass(QcPass):
    """Rewrite ``ReduceL2(x, axes=[-1], keepdims=1) [-> Clip(min=eps) | Max(eps)] [-> Expand] -> Div(x, .)``
    into ``LpNormalization(x, axis=-1, p=2)``.

    eps semantics: ``LpNormalization`` has no eps (onnxruntime returns 0 for a zero row, as ``x / eps`` does).
    The two differ only on rows with ``0 < ||x|| < eps``, where torch gives ``x / eps`` (norm below 1) and
    LpNormalization a unit vector. The pass fuses only ``eps <= 1e-6`` (``MAX_EPS``); after quantization a
    non-zero row has ``||x|| >= s_x``, so with any activation scale above ``eps`` the quantized model never
    meets such a row. Clip with a max, a larger or non-constant eps, another axis, or an Expand that is more
    than a broadcast to ``x``'s shape prevent the match.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fuse every match."""
        graph = model.graph
        modified = False
        for norm in [n for n in graph if is_op(n, "ReduceL2")]:
            chain = self._match(norm)
            if chain is None:
                continue
            name = fresh_name(graph, f"{norm.name}_l2norm")
            fused = ir.node("LpNormalization", [norm.inputs[0]], {"axis": -1, "p": 2}, name=name)
            replace_with(graph, chain, fused)
            modified = True
        return PassResult(model, modified)

    def _match(self, norm: ir.Node) -> list[ir.Node] | None:
        x = norm.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        if not is_last_axis_reduction(norm, rank):
            return None
        chain = [norm]
        node = only_user(norm.outputs[0])
        if is_op(node, "Clip"):
            has_max = len(node.inputs) > 2 and node.inputs[2] is not None
            eps = scalar_const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if node.inputs[0] is not norm.outputs[0] or has_max or eps is None or not 0 <= eps <= MAX_EPS:
                return None
            chain.append(node)
            node = only_user(node.outputs[0])
        elif is_op(node, "Max"):
            if len(node.inputs) != 2:
                return None
            eps = scalar_const(other_input(node, norm.outputs[0]))
            if eps is None or not 0 <= eps <= MAX_EPS:
                return None
            chain.append(node)
            node = only_user(node.outputs[0])
        if is_op(node, "Expand"):
            if node.inputs[0] is not chain[-1].outputs[0] or not _broadcast_to_x(node, x):
                return None
            chain.append(node)
            node = only_user(node.outputs[0])
        if not is_op(node, "Div") or node.inputs[0] is not x or node.inputs[1] is not chain[-1].outputs[0]:
            return None
        if node.outputs[0].shape is not None and x.shape is not None and node.outputs[0].shape != x.shape:
            return None
        return [*chain, node]


def _broadcast_to_x(expand: ir.Node, x: ir.Value) -> bool:
    """Whether ``Expand`` only broadcasts its input to ``x``'s shape (``Shape(x)`` or an equal constant)."""
    source = expand.inputs[1].producer() if expand.inputs[1] is not None else None
    if is_op(source, "Shape") and source.inputs[0] is x and not source.attributes:
        return True
    shape = const_array(expand.inputs[1])
    if shape is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return False
    try:
        target = np.broadcast_shapes(tuple(int(d) for d in expand.inputs[0].shape or ()), tuple(shape.tolist()))
    except ValueError:
        return False
    return target == tuple(x.shape)
