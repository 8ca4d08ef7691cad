"""The integer-region verifier: no float tensor and no float op may hide inside the integer region.

The integer region is everything between the boundary QuantizeLinear nodes (fed by graph inputs) and the
boundary DequantizeLinear nodes (producing graph outputs). In ``staged`` mode (used between passes, while
the model is still partly in QDQ form) float values are also allowed inside *QDQ islands*: a float value
produced by a DequantizeLinear, a float constant, a Cast of integers (a mask), or the float output of an op
whose float inputs are all themselves allowed. Such a value may be consumed only by island ops (ops computing allowed float values) or
QuantizeLinear nodes: any other consumer is an integer op with a float input and is reported. A float value
of any other origin (a float graph input consumed without a boundary QuantizeLinear) is never allowed. In
staged mode only nodes downstream of a boundary QuantizeLinear are checked (before quantization the whole
graph is float). In final mode no island may remain.

Integer graph inputs (token ids, attention masks) enter the integer region without a boundary node. Once
quantization has started (the model holds a QuantizeLinear), staged mode checks the nodes downstream of them
too; before that, shape subgraphs on them (``Shape(input_ids)``) are still waiting to be folded.
"""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.errors import QcError
from qcompiler.intops import is_integer_op
from qcompiler.ir import node_text

__all__ = ["IntegerRegionError", "integer_region_problems", "verify_integer_region"]

_BOUNDARY = ("QuantizeLinear", "DequantizeLinear")
#: ops whose float outputs start a QDQ island whatever their inputs (see :func:`_island_values`).
_ISLAND_SOURCES = ("DequantizeLinear", "Constant", "Cast")


class IntegerRegionError(QcError):
    """The integer region holds a float tensor or a float op."""


def _is_float(value: ir.Value) -> bool:
    return value.dtype is not None and value.dtype.is_floating_point()


def _is_boundary_quantize(node: ir.Node) -> bool:
    return node.op_type == "QuantizeLinear" and node.inputs[0] is not None and node.inputs[0].is_graph_input()


def _is_boundary_dequantize(node: ir.Node) -> bool:
    return node.op_type == "DequantizeLinear" and all(v.is_graph_output() for v in node.outputs)


def integer_region_problems(model: ir.Model, staged: bool = False) -> list[str]:
    """Every violation of the integer-region invariant, one line each (empty when the model is clean)."""
    problems = []
    region = _downstream_of_boundary(model.graph) if staged else None
    island = _island_values(model.graph) if staged else None
    for node in model.graph:
        if _is_boundary_quantize(node) or _is_boundary_dequantize(node):
            continue
        if staged and (node not in region or _in_island(node, island)):
            continue
        if node.op_type in _BOUNDARY and node.domain in ("", "ai.onnx"):
            problems.append(f"QDQ node inside the integer region: {node_text(node)}")
            continue
        if not is_integer_op(node.domain, node.op_type):
            problems.append(f"op outside qc's integer op set: {node_text(node)}")
        for value in [*node.inputs, *node.outputs]:
            if value is not None and _is_float(value):
                problems.append(f"float tensor '{value.name}' at {node_text(node)}")
    return problems


def _downstream_of_boundary(graph: ir.Graph) -> set[ir.Node]:
    """Nodes that depend on a boundary QuantizeLinear: the integer region once quantization has started."""
    reached: set[ir.Node] = set()
    started = any(node.op_type == "QuantizeLinear" for node in graph)
    for node in graph:  # topological order
        if _is_boundary_quantize(node) or any(
            v is not None and (v.producer() in reached or (started and _is_integer_input(v))) for v in node.inputs
        ):
            reached.add(node)
    return reached


def _is_integer_input(value: ir.Value) -> bool:
    """A graph input holding integers (or bools): it enters the integer region as it is."""
    return value.is_graph_input() and value.dtype is not None and not _is_float(value)


def _island_values(graph: ir.Graph) -> set[ir.Value]:
    """The float values a QDQ island may hold: the outputs of DequantizeLinear, Constant and Cast (integers
    such as masks enter QDQ arithmetic through an exact Cast that integerization removes), and the float
    outputs of ops whose float inputs are all such values or initializers. Graph order is topological, so one
    sweep suffices."""
    allowed: set[ir.Value] = set()
    for node in graph:
        float_inputs = [v for v in node.inputs if v is not None and _is_float(v)]
        if node.op_type in _ISLAND_SOURCES or (
            float_inputs and all(v in allowed or v.const_value is not None for v in float_inputs)
        ):
            allowed.update(v for v in node.outputs if _is_float(v))
    return allowed


def _in_island(node: ir.Node, island: set[ir.Value]) -> bool:
    """Part of a QDQ island: a Q/DQ node, or an op whose float outputs are all allowed island values."""
    if node.op_type in _BOUNDARY:
        return True
    floats = [v for v in node.outputs if v is not None and _is_float(v)]
    return bool(floats) and all(v in island for v in floats)


def verify_integer_region(model: ir.Model, staged: bool = False) -> None:
    """Raise :class:`IntegerRegionError` listing every violation (see :func:`integer_region_problems`)."""
    problems = integer_region_problems(model, staged)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise IntegerRegionError(f"the integer region is not integer-only:\n  {shown}")
