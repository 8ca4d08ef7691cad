"""Remove ops that are the identity at inference: Identity and Dropout."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.pass_infra import PassResult, QcPass

_IDENTITY_OPS = ("Identity", "Dropout")


class RemoveIdentityOpsPass(QcPass):
    """Bypass ``Identity`` and inference-mode ``Dropout`` nodes.

    Does not fire on a Dropout whose mask output is used, or on a node whose input is a graph input while
    its output is a graph output (removing it would merge two graph interface values).
    """

    def call(self, model: ir.Model) -> PassResult:
        """Bypass every removable node."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type in _IDENTITY_OPS and n.domain in ("", "ai.onnx")]:
            if any(out.consumers() or out.is_graph_output() for out in node.outputs[1:]):
                continue
            source, result = node.inputs[0], node.outputs[0]
            if result.is_graph_output():
                if source.is_graph_input() or source.is_graph_output() or source.is_initializer():
                    continue
                result.replace_all_uses_with(source, replace_graph_outputs=True)
                source.name, result.name = result.name, None
            else:
                result.replace_all_uses_with(source)
            graph.remove(node, safe=True)
            modified = True
        return PassResult(model, modified)
