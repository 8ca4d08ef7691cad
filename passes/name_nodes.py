"""Give every node and value a unique name, so errors, reports and generated names can refer to them."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from qcompiler.pass_infra import PassResult, QcPass


class NameNodesPass(QcPass):
    """Name unnamed nodes and values and make duplicate names unique (existing unique names are kept)."""

    def call(self, model: ir.Model) -> PassResult:
        """Delegate to onnx-ir's name fixing."""
        return PassResult(model, NameFixPass()(model).modified)
