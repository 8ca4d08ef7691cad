"""Small helpers over onnx-ir used by every pass: constants, attributes, node construction and naming."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from qcompiler.errors import ModelError

__all__ = [
    "constant",
    "const_array",
    "attr",
    "single_consumer",
    "insert_nodes_before",
    "fresh_name",
    "node_text",
    "erase_if_unused",
    "matmul_bias",
    "infer_shapes",
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


def matmul_bias(add: ir.Node) -> ir.Value | None:
    """The bias of ``Add(MatMul(x, W[K, N]), b)``: ``b`` when it is constant and holds one value per column.

    ``b`` must have ``N`` elements along the last axis only (shape ``[N]`` or ``[1, .., 1, N]``) and the MatMul
    output must feed nothing but this Add; any other constant operand (a position table, a full-shape offset)
    makes the Add an ordinary elementwise Add.
    """
    if add.op_type != "Add":
        return None
    for source, operand in (add.inputs[:2], add.inputs[1::-1]):
        producer = source.producer() if source is not None else None
        weight = const_array(producer.inputs[1]) if producer is not None and producer.op_type == "MatMul" else None
        bias = const_array(operand)
        if weight is None or bias is None or weight.ndim != 2 or len(source.consumers()) != 1:
            continue
        if bias.size == weight.shape[1] and bias.shape[-1:] == (weight.shape[1],):
            return operand
    return None


class _FailureRecorder(logging.Handler):
    """Keeps the exception onnx-ir's shape inference logs (with a traceback) instead of printing it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and self.error is None:
            self.error = record.exc_info[1]


def infer_shapes(model: ir.Model) -> None:
    """Run ONNX shape inference on ``model`` (strict, with data propagation) and merge the shapes found.

    Raises :class:`ModelError` with ONNX's own first line, which names the node, when inference fails;
    onnx-ir would log a traceback and leave the model unchanged.
    """
    logger = logging.getLogger("onnx_ir.passes.common.shape_inference")
    recorder = _FailureRecorder()
    logger.addHandler(recorder)
    propagate, logger.propagate = logger.propagate, False
    try:
        ShapeInferencePass()(model)
    finally:
        logger.removeHandler(recorder)
        logger.propagate = propagate
    if recorder.error is not None:
        first = str(recorder.error).strip().splitlines()[0] if str(recorder.error).strip() else repr(recorder.error)
        raise ModelError(f"ONNX shape inference fails on the model: {first}")
