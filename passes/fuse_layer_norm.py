"""Fuse the decomposed LayerNorm that exporters emit (opset < 17, hand-written norms) into LayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import constant, fresh_name
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._match import (
    is_last_axis_reduction,
    is_op,
    last_axis_vector,
    only_user,
    other_input,
    replace_with,
    scalar_const,
)


class FuseLayerNormPass(QcPass):
    """Rewrite ``ReduceMean -> Sub -> Pow 2 | Mul(d, d) -> ReduceMean -> Add eps -> Sqrt -> Div | Reciprocal+Mul
    [-> Mul gamma] [-> Add beta]`` over the last axis into one ``LayerNormalization(axis=-1, epsilon)``.

    ``eps`` must be a constant scalar and both means must reduce only the last axis (``keepdims=1``);
    ``gamma`` / ``beta`` are absorbed only when they are constants varying along the last axis alone (else
    the fused LayerNorm gets ones / zeros and the Mul / Add stay, so ``x_norm * (1 + scale) + shift``
    modulations still fuse their normalization). Intermediate values used elsewhere prevent the match.
    Does not fire on other axes, on a non-constant eps or a Pow exponent other than 2.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fuse every match."""
        graph = model.graph
        modified = False
        for mean in [n for n in graph if is_op(n, "ReduceMean")]:
            if mean.graph is None:  # removed by an earlier fusion
                continue
            found = self._match(mean)
            if found is None:
                continue
            nodes, x, eps, gamma, beta = found
            g = constant(graph, gamma, f"{mean.name}_gamma")
            b = constant(graph, beta, f"{mean.name}_beta")
            name = fresh_name(graph, f"{mean.name}_layernorm")
            fused = ir.node("LayerNormalization", [x, g, b], {"axis": -1, "epsilon": eps}, name=name)
            replace_with(graph, nodes, fused)
            modified = True
        return PassResult(model, modified)

    def _match(self, mean: ir.Node):
        x = mean.inputs[0]
        rank = len(x.shape) if x.shape is not None else None
        length = x.shape[-1] if x.shape is not None and rank and isinstance(x.shape[-1], int) else None
        if length is None or not is_last_axis_reduction(mean, rank):
            return None
        sub = only_user(mean.outputs[0])
        if not is_op(sub, "Sub") or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
            return None
        d = sub.outputs[0]
        users = {id(n): n for n in d.consumers()}
        if len(users) != 2 or d.is_graph_output():
            return None
        square = next((n for n in users.values() if _is_square(n, d)), None)
        if square is None:
            return None
        divide = next(n for n in users.values() if n is not square)
        variance = only_user(square.outputs[0])
        if not is_op(variance, "ReduceMean") or not is_last_axis_reduction(variance, rank):
            return None
        add = only_user(variance.outputs[0])
        if not is_op(add, "Add"):
            return None
        eps = scalar_const(other_input(add, variance.outputs[0]))
        sqrt = only_user(add.outputs[0])
        if eps is None or eps < 0 or not is_op(sqrt, "Sqrt"):
            return None
        chain = [mean, sub, square, variance, add, sqrt]
        std = sqrt.outputs[0]
        if is_op(divide, "Div") and divide.inputs[0] is d and divide.inputs[1] is std and only_user(std) is divide:
            chain.append(divide)
        elif is_op(divide, "Mul"):
            reciprocal = only_user(std)
            if not is_op(reciprocal, "Reciprocal") or other_input(divide, d) is not reciprocal.outputs[0]:
                return None
            if only_user(reciprocal.outputs[0]) is not divide:
                return None
            chain += [reciprocal, divide]
        else:
            return None
        gamma = np.ones(length, np.float32)
        beta = np.zeros(length, np.float32)
        scale = only_user(chain[-1].outputs[0])
        if is_op(scale, "Mul"):
            found = last_axis_vector(other_input(scale, chain[-1].outputs[0]), rank, length)
            if found is not None:
                gamma = found
                chain.append(scale)
        shift = only_user(chain[-1].outputs[0])
        if is_op(shift, "Add"):
            found = last_axis_vector(other_input(shift, chain[-1].outputs[0]), rank, length)
            if found is not None:
                beta = found
                chain.append(shift)
        return chain, x, eps, gamma, beta


def _is_square(node: ir.Node, d: ir.Value) -> bool:
    if is_op(node, "Mul"):
        return node.inputs[0] is d and node.inputs[1] is d
    return is_op(node, "Pow") and node.inputs[0] is d and scalar_const(node.inputs[1]) == 2.0
