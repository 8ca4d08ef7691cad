"""Fold constant subgraphs (Constant nodes, ConstantOfShape weights, shape arithmetic) into initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass, ShapeInferencePass

from qcompiler.ir import const_array, constant
from qcompiler.pass_infra import PassResult, QcPass

#: no size limit: weights built at run time (``ConstantOfShape``, ``Constant`` nodes) must become initializers.
_UNLIMITED = 1 << 40


class FoldConstantsPass(QcPass):
    """Evaluate every node whose inputs are all constants and store the result as an initializer.

    Rules: ``Constant`` nodes become initializers; nodes computable from constants alone (including shape
    subgraphs feeding ``Pad``/``Reshape``/``Expand`` and weight generators such as ``ConstantOfShape``) are
    replaced by their values; nodes left without users are removed. Shapes are re-inferred after each round
    (a folded Reshape makes the next ``Shape`` static), until a round folds nothing. Does not fire on graphs
    with no constant subgraph.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Fold and re-infer shapes until nothing changes, then lift Constant nodes and drop dead nodes."""
        before = model.graph.num_nodes()
        count = None
        while count != model.graph.num_nodes():
            count = model.graph.num_nodes()
            _materialize_constant_of_shape(model.graph)
            onnxscript.optimizer.fold_constants(model, input_size_limit=_UNLIMITED, output_size_limit=_UNLIMITED)
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
    ShapeInferencePass()(model)


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
