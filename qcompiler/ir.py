"""Small helpers over onnx-ir used by every pass: constants, attributes, node construction and naming."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

__all__ = [
    "constant",
    "const_array",
    "attr",
    "single_consumer",
    "insert_nodes_before",
    "fresh_name",
    "node_text",
    "erase_if_unused",
]

_counter = itertools.count()


def fresh_name(graph: ir.Graph, hint: str) -> str:
    """A value or node name unique within qc's own naming (``hint`` plus a global counter)."""
    return f"{hint}__qc{next(_counter)}"


def constant(graph: ir.Graph, array: np.ndarray, hint: str) -> ir.Value:
    """Register ``array`` as a new initializer of ``graph`` and return its value."""
    array = np.asarray(array)
    value = ir.Value(name=fresh_name(graph, hint), const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy content of a constant value (initializer or folded Constant), else ``None``."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def attr(node: ir.Node, name: str, default=None):
    """Attribute ``name`` of ``node`` as a plain Python value, or ``default``."""
    found = node.attributes.get(name)
    return default if found is None else found.value


def single_consumer(value: ir.Value) -> ir.Node | None:
    """The only node consuming ``value`` when it is not also a graph output, else ``None``."""
    users = value.consumers()
    if len(users) != 1 or value.is_graph_output():
        return None
    return users[0]


def insert_nodes_before(anchor: ir.Node, nodes: list[ir.Node]) -> None:
    """Insert ``nodes`` (already wired) into the anchor's graph, just before ``anchor``."""
    graph = anchor.graph
    assert graph is not None
    graph.insert_before(anchor, nodes)


def erase_if_unused(graph: ir.Graph, node: ir.Node | None) -> None:
    """Remove ``node`` when none of its outputs are used or exported; no-op otherwise."""
    if node is None or node.graph is not graph:
        return
    if any(out.consumers() or out.is_graph_output() for out in node.outputs):
        return
    graph.remove(node, safe=True)


def node_text(node: ir.Node) -> str:
    """One-line description of a node for error messages: ``name (Op) inputs -> outputs``."""
    ins = ", ".join(v.name if v is not None else "" for v in node.inputs)
    outs = ", ".join(v.name or "" for v in node.outputs)
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    return f"{node.name or '<unnamed>'} ({op}) ({ins}) -> ({outs})"
