"""Turn an exporter's additive attention-mask bias into the masked-Softmax form of the quantization plan."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, erase_if_unused
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.quant_plan import MASK_FILL_MAX, is_integer_node


class FuseAttentionMaskPass(QcPass):
    """Rewrite ``Softmax(Add(x, bias))`` as ``Softmax(Where(keep, x, c))`` when ``bias`` is a 0 / ``c`` mask.

    Recognized biases (``c`` a scalar constant ``<= MASK_FILL_MAX``, e.g. ``finfo(float32).min``, -1e4, -inf;
    ``keep`` a bool tensor computed by integer/bool ops only, from integer graph inputs and constants):

    * ``Where(keep, 0, c)`` (transformers >= 4.48 eager masks), and ``Where(drop, c, 0)`` (``keep = Not(drop)``);
    * ``(1 - Cast<float>(m)) * c`` (older transformers, ``m`` an integer tensor): ``keep = Cast<bool>(m)``.
      **Assumption:** ``m`` holds only 0 and 1 (an attention mask); then the bias takes exactly the values 0
      and ``c``. Other values of ``m`` would make the float bias something else: the pass cannot prove them
      absent, so this form relies on the documented input contract.

    Both forms are equal to the original for every row that keeps at least one position: kept positions
    get ``x + 0 = x``, masked ones ``x + c``, whose exponential underflows to 0 exactly as ``exp(c - max)``
    does (for ``c = finfo.min``, ``x + c == c`` in float32 for every ``|x| < 2**103``). The float mask cone
    (Cast to float, Sub, Mul, the bias Where) is removed when nothing else reads it. Does not fire when the
    Add has other consumers, the bias is anything else, or ``keep`` depends on a float tensor.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Softmax input."""
        graph = model.graph
        modified = False
        for softmax in [n for n in graph if n.op_type == "Softmax" and n.domain in ("", "ai.onnx")]:
            add = softmax.inputs[0].producer()
            if add is None or add.op_type != "Add" or len(softmax.inputs[0].consumers()) != 1:
                continue
            if softmax.inputs[0].is_graph_output():
                continue
            for data, bias in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
                found = _mask_of(bias)
                if found is None or data.dtype != ir.DataType.FLOAT:
                    continue
                keep, fill, make = found
                if not _integer_cone(keep):
                    continue
                self._rewrite(graph, add, softmax, data, keep, fill, make)
                modified = True
                break
        return PassResult(model, modified)

    @staticmethod
    def _rewrite(graph: ir.Graph, add: ir.Node, softmax: ir.Node, data: ir.Value, keep: ir.Value, fill: float,
                 make: str) -> None:
        name = add.name or "mask"
        nodes = []
        if make == "not":
            nodes.append(ir.node("Not", [keep], name=f"{name}/keep"))
        elif make == "cast":
            nodes.append(ir.node("Cast", [keep], {"to": ir.DataType.BOOL}, name=f"{name}/keep"))
        if nodes:
            keep = nodes[-1].outputs[0]
            keep.type = ir.TensorType(ir.DataType.BOOL)
            keep.shape = nodes[-1].inputs[0].shape
            keep.name = f"{name}_keep"
        fill_value = ir.Value(name=f"{name}_fill", const_value=ir.tensor(np.array(fill, np.float32)))
        fill_value.shape = ir.Shape([])
        fill_value.type = ir.TensorType(ir.DataType.FLOAT)
        graph.register_initializer(fill_value)
        where = ir.node("Where", [keep, data, fill_value], name=f"{name}/masked")
        where.outputs[0].type = add.outputs[0].type
        where.outputs[0].shape = add.outputs[0].shape
        where.outputs[0].name = f"{add.outputs[0].name}_masked"
        nodes.append(where)
        graph.insert_before(add, nodes)
        softmax.replace_input_with(0, where.outputs[0])
        _erase_cone(graph, add)


def _mask_of(bias: ir.Value) -> tuple[ir.Value, float, str] | None:
    """``(source of keep, fill c, how keep is made from it)`` when ``bias`` is a recognized mask bias."""
    node = bias.producer()
    if node is None or bias.dtype != ir.DataType.FLOAT:
        return None
    if node.op_type == "Where" and node.inputs[0].dtype == ir.DataType.BOOL:
        first, second = const_array(node.inputs[1]), const_array(node.inputs[2])
        if first is None or second is None:
            return None
        if _is_zero(first) and _fill(second) is not None:
            return node.inputs[0], _fill(second), "as-is"
        if _is_zero(second) and _fill(first) is not None:
            return node.inputs[0], _fill(first), "not"
        return None
    if node.op_type == "Mul":
        for inverted, scale in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            fill = _fill(const_array(scale))
            sub = inverted.producer()
            if fill is None or sub is None or sub.op_type != "Sub" or len(inverted.consumers()) != 1:
                continue
            one = const_array(sub.inputs[0])
            cast = sub.inputs[1].producer()
            if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1.0 or cast is None:
                continue
            source = cast.inputs[0] if cast.op_type == "Cast" else None
            if source is not None and source.dtype is not None and not source.dtype.is_floating_point():
                return source, fill, "as-is" if source.dtype == ir.DataType.BOOL else "cast"
    return None


def _is_zero(array: np.ndarray) -> bool:
    return array.size == 1 and float(array.reshape(-1)[0]) == 0.0


def _fill(array: np.ndarray | None) -> float | None:
    """The fill value of a mask when it is one value (so ``keep`` alone fixes the bias shape) ``<= MASK_FILL_MAX``."""
    if array is None or array.size != 1:
        return None
    value = float(array.reshape(-1)[0])
    return value if value <= MASK_FILL_MAX else None


def _integer_cone(value: ir.Value) -> bool:
    """Whether ``value`` is computed by integer/bool ops only, from integer graph inputs and constants."""
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        if current is None or current in seen:
            continue
        seen.add(current)
        if current.dtype is None or current.dtype.is_floating_point():
            return False
        if const_array(current) is not None or current.is_graph_input():
            continue
        producer = current.producer()
        if producer is None or not is_integer_node(producer):
            return False
        stack.extend(producer.inputs)
    return True


def _erase_cone(graph: ir.Graph, node: ir.Node) -> None:
    """Remove ``node`` and then every producer left without users (the float bias cone)."""
    pending = [node]
    while pending:
        current = pending.pop()
        if current.graph is not graph or any(o.consumers() or o.is_graph_output() for o in current.outputs):
            continue
        producers = [v.producer() for v in current.inputs if v is not None]
        erase_if_unused(graph, current)
        pending.extend(p for p in producers if p is not None)
