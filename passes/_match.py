"""Matching helpers of the normalize-stage fusions (LayerNorm, L2 normalization, GELU): float graph patterns."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array

_DEFAULT = ("", "ai.onnx")


def is_op(node: ir.Node | None, *types: str) -> bool:
    """Whether ``node`` is a standard-domain node of one of ``types``."""
    return node is not None and node.domain in _DEFAULT and node.op_type in types


def only_user(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value`` (once or twice), when ``value`` is not a graph output."""
    users = {id(n): n for n in value.consumers()}
    if len(users) != 1 or value.is_graph_output():
        return None
    return next(iter(users.values()))


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary node that reads ``value`` once."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def scalar_const(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, else ``None``."""
    array = const_array(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def is_last_axis_reduction(node: ir.Node, rank: int | None) -> bool:
    """Whether a ReduceMean/ReduceL2 reduces exactly the last axis and keeps it (``keepdims=1``)."""
    if not attr(node, "keepdims", 1) or attr(node, "noop_with_empty_axes", 0):
        return False
    axes = attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1])
        if axes is None:
            return False
    if axes is None:
        return False
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def last_axis_vector(value: ir.Value | None, rank: int | None, length: int | None) -> np.ndarray | None:
    """A constant varying only along the last axis, as a vector of ``length`` (``None`` if not such)."""
    array = const_array(value)
    if array is None or length is None or not np.issubdtype(array.dtype, np.floating):
        return None
    if array.ndim > (rank or 0) or any(d != 1 for d in array.shape[:-1]) or array.size not in (1, length):
        return None
    return np.broadcast_to(array.reshape(-1), (length,)).astype(np.float32)


def replace_with(graph: ir.Graph, nodes: list[ir.Node], new: ir.Node) -> None:
    """Insert ``new`` before ``nodes[0]``; its output takes over the last node's output (and its name)."""
    old = nodes[-1].outputs[0]
    graph.insert_before(nodes[0], [new])
    result = new.outputs[0]
    result.shape, result.type = old.shape, old.type
    old.replace_all_uses_with(result, replace_graph_outputs=True)
    name = old.name
    for node in reversed(nodes):
        graph.remove(node, safe=True)
    result.name = name
