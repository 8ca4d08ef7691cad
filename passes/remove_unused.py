"""Remove nodes and initializers that no graph output depends on."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qcompiler.pass_infra import PassResult, QcPass


class RemoveUnusedPass(QcPass):
    """Dead-code elimination (nodes and initializers); the graph's inputs and outputs are kept as they are."""

    def call(self, model: ir.Model) -> PassResult:
        """Delegate to onnx-ir's dead-code elimination."""
        return PassResult(model, RemoveUnusedNodesPass()(model).modified)
