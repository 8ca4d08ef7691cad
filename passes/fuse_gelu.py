"""Fuse the exported forms of GELU into the opset-20 ``Gelu`` op (float graph, normalize stage).

Exporters write GELU as elementary ops; the integerize passes (lookup table, ShiftGELU, i-GELU) match one
``Gelu`` node. Recognized, with constants compared to a relative tolerance of 1e-4:

* erf form ``x * 0.5 * (1 + Erf(x / sqrt 2))`` -> ``Gelu(x)``: ``Div(x, 1.4142135)`` or ``Mul(x, 0.7071068)``,
  ``Erf``, ``Add 1``, then the product of ``x``, ``0.5`` and the sum in any association (torch writes
  ``Mul(Mul(x, sum), 0.5)``), each Mul/Add with its operands in either order;
* tanh form ``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))`` -> ``Gelu(x, approximate="tanh")``,
  with ``x**3`` as ``Pow(x, 3)`` or ``x * x * x`` (torch: ``Mul(x, Mul(x, x))``).

Nothing is fused when an intermediate value has another consumer or is a graph output, or when the model's
default-domain opset is below 20.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, single_consumer
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._match import other_input, replace_with

_RTOL = 1e-4


def _is_const(value: ir.Value | None, target: float) -> bool:
    array = const_array(value)
    return array is not None and array.size == 1 and bool(np.isclose(float(array.reshape(-1)[0]), target,
                                                                       rtol=_RTOL, atol=0.0))


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The producer of ``value`` when it is an ``op_type`` node whose output only feeds one node."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node if single_consumer(node.outputs[0]) is not None else None


def _scaled_by(value: ir.Value | None, op_type: str, factor: float) -> tuple[ir.Node, ir.Value] | None:
    """``value = op_type(y, factor)`` (or ``Mul(factor, y)``) with single use: the node and ``y``."""
    node = _producer(value, op_type)
    if node is None or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _is_const(b, factor):
        return node, a
    if op_type == "Mul" and _is_const(a, factor):
        return node, b
    return None


def _single_use(value: ir.Value, op_type: str) -> ir.Node | None:
    node = single_consumer(value)
    return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _half_product(x: ir.Value, one_plus: ir.Node) -> list[ir.Node] | None:
    """The Mul nodes computing ``x * 0.5 * one_plus`` (any association), last one last; else ``None``."""
    first = _single_use(one_plus.outputs[0], "Mul")
    if first is None:
        return None
    other = other_input(first, one_plus.outputs[0])
    if other is x:  # (x * s) * 0.5
        second = _single_use(first.outputs[0], "Mul")
        if second is not None and _is_const(other_input(second, first.outputs[0]), 0.5):
            return [first, second]
        return None
    if _is_const(other, 0.5):  # (s * 0.5) * x
        second = _single_use(first.outputs[0], "Mul")
        if second is not None and other_input(second, first.outputs[0]) is x:
            return [first, second]
        return None
    halved = _scaled_by(other, "Mul", 0.5)  # (x * 0.5) * s
    if halved is not None and halved[1] is x:
        return [halved[0], first]
    return None


def _one_plus(value: ir.Value) -> ir.Node | None:
    node = _single_use(value, "Add")
    return node if node is not None and _is_const(other_input(node, value), 1.0) else None


def _match_erf(erf: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    scaled = _scaled_by(erf.inputs[0], "Div", math.sqrt(2.0)) or _scaled_by(erf.inputs[0], "Mul", math.sqrt(0.5))
    if scaled is None:
        return None
    scale, x = scaled
    one_plus = _one_plus(erf.outputs[0])
    product = _half_product(x, one_plus) if one_plus is not None else None
    if product is None:
        return None
    return x, [scale, erf, one_plus, *product]


def _cube_of(value: ir.Value | None, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``value = x**3`` (``Pow(x, 3)`` or ``x * x * x``), else ``None``."""
    power = _producer(value, "Pow")
    if power is not None:
        return [power] if power.inputs[0] is x and _is_const(power.inputs[1], 3.0) else None
    outer = _producer(value, "Mul")
    if outer is None:
        return None
    for square_value, plain in (outer.inputs, reversed(outer.inputs)):
        square = _producer(square_value, "Mul")
        if plain is x and square is not None and list(square.inputs) == [x, x]:
            return [square, outer]
    return None


def _match_tanh(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
    scaled = _scaled_by(tanh.inputs[0], "Mul", math.sqrt(2.0 / math.pi))
    inner = _producer(scaled[1], "Add") if scaled is not None else None
    if inner is None:
        return None
    for x, term in (inner.inputs, reversed(inner.inputs)):
        cubic = _scaled_by(term, "Mul", 0.044715)
        cube = _cube_of(cubic[1], x) if cubic is not None else None
        if cube is None:
            continue
        one_plus = _one_plus(tanh.outputs[0])
        product = _half_product(x, one_plus) if one_plus is not None else None
        if product is not None:
            return x, [*cube, cubic[0], inner, scaled[0], tanh, one_plus, *product]
    return None


class FuseGeluPass(QcPass):
    """Replace the elementary-op forms of GELU (erf and tanh) with one ``Gelu`` node each."""

    def call(self, model: ir.Model) -> PassResult:
        """Fuse every matching form; the ``Gelu`` node takes the name and output of the last node it replaces."""
        if model.opset_imports.get("", 0) < 20:
            return PassResult(model, False)
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type in ("Erf", "Tanh") and n.domain in ("", "ai.onnx")]:
            if node.graph is not graph:
                continue
            found = _match_erf(node) if node.op_type == "Erf" else _match_tanh(node)
            if found is None:
                continue
            x, nodes = found
            last = nodes[-1]
            attributes = {"approximate": "tanh"} if node.op_type == "Tanh" else {}
            replace_with(graph, nodes, ir.node("Gelu", [x], attributes, name=last.name))
            modified = True
        return PassResult(model, modified)
