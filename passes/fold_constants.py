"""Fold constant subgraphs (Constant nodes, ConstantOfShape weights, shape arithmetic) into initializers."""

from __future__ import annotations

import numpy as np
import onnx.reference
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass

from qcompiler.ir import attr, const_array, constant, infer_shapes
from qcompiler.pass_infra import PassResult, QcPass

#: no size limit: weights built at run time (``ConstantOfShape``, ``Constant`` nodes) must become initializers.
_UNLIMITED = 1 << 40


class FoldConstantsPass(QcPass):
    """Evaluate every node whose inputs are all constants and store the result as an initializer.

    Rules: ``Constant`` nodes become initializers; any standard-domain node computable from constants alone
    (shape subgraphs, ``Shape``/``Size`` of statically shaped tensors, weight generators such as
    ``ConstantOfShape``, multi-output ops such as ``Split``) is replaced by its values; nodes left without
    users are removed. onnxscript's folder runs first; whatever it leaves (it skips multi-output ops and some
    op types) is evaluated by onnx's reference evaluator, so no op type is excluded by a list. Random and
    control-flow ops are never folded. Shapes are re-inferred after each round (a folded Reshape makes the
    next ``Shape`` static), until a round folds nothing. Does not fire on graphs with no constant subgraph.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fold and re-infer shapes until nothing changes, then lift Constant nodes and drop dead nodes."""
        before = model.graph.num_nodes()
        count = None
        while count != model.graph.num_nodes():
            count = model.graph.num_nodes()
            _materialize_constant_of_shape(model.graph)
            onnxscript.optimizer.fold_constants(model, input_size_limit=_UNLIMITED, output_size_limit=_UNLIMITED)
            _evaluate_constant_nodes(model)
            _infer_static_shapes(model)
        lifted = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model).modified
        RemoveUnusedNodesPass()(model)
        return PassResult(model, lifted or model.graph.num_nodes() != before)


def _infer_static_shapes(model: ir.Model) -> None:
    """Forget symbolic dims of computed values (left from before folding) and infer shapes again."""
    for value in model.graph.initializers.values():  # a folded value keeps the shape it had as an output
        if value.const_value is not None:
            value.shape = ir.Shape(value.const_value.shape)
    for node in model.graph:
        for out in node.outputs:
            if out.shape is not None and not all(isinstance(d, int) for d in out.shape.dims):
                out.shape = None
    infer_shapes(model)


def _materialize_constant_of_shape(graph: ir.Graph) -> bool:
    """Replace ``ConstantOfShape`` with a constant shape by its value (the optimizer keeps these lazy)."""
    replaced = False
    for node in [n for n in graph if n.op_type == "ConstantOfShape" and n.domain in ("", "ai.onnx")]:
        shape = const_array(node.inputs[0])
        if shape is None:
            continue
        fill = node.attributes["value"].value.numpy() if "value" in node.attributes else np.zeros(1, np.float32)
        value = constant(graph, np.full(tuple(int(d) for d in shape), fill.reshape(-1)[0], fill.dtype), "constant")
        node.outputs[0].replace_all_uses_with(value, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        replaced = True
    return replaced


#: ops whose value is not a function of their inputs.
_NON_DETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                                "Multinomial", "Bernoulli"})


def _evaluate_constant_nodes(model: ir.Model) -> None:
    """Replace every remaining standard node with constant inputs (or a static-shape query) by its values."""
    graph = model.graph
    opset = model.opset_imports.get("", None)
    for node in list(graph):
        values = _constant_outputs(node, opset)
        if values is None:
            continue
        for out, array in zip(node.outputs, values, strict=True):
            out.replace_all_uses_with(constant(graph, array, out.name or "folded"), replace_graph_outputs=True)
        graph.remove(node, safe=True)


def _constant_outputs(node: ir.Node, opset: int | None) -> list[np.ndarray] | None:
    """The output arrays of ``node`` when they are known without running the model, else ``None``."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _NON_DETERMINISTIC or opset is None:
        return None
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return None
    if node.op_type in ("Shape", "Size") and (dims := _static_dims(node.inputs[0])) is not None:
        if node.op_type == "Size":
            return [np.array(int(np.prod(dims)), np.int64)]
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return [np.array(dims[start:end], np.int64)]
    inputs = [None if v is None else const_array(v) for v in node.inputs]
    pairs = [(v, a) for v, a in zip(node.inputs, inputs, strict=True) if v is not None]
    if not pairs or any(a is None or v.is_graph_input() for v, a in pairs):
        return None
    proto = ir.serde.serialize_node(node)
    feeds = {v.name: a for v, a in pairs}
    try:
        results = onnx.reference.ReferenceEvaluator(proto, opsets={"": opset}).run(None, feeds)
    except Exception:  # noqa: BLE001 - an op the evaluator cannot run stays a node; qc then names it as unsupported
        return None
    return [np.asarray(r) for r in results]


def _static_dims(value: ir.Value | None) -> list[int] | None:
    """The dims of ``value`` when all are known integers."""
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape.dims):
        return None
    return list(value.shape.dims)
