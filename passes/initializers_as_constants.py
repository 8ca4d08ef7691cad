"""Treat initializers that are also listed as graph inputs (IR version < 4 models) as constants."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from qcompiler.pass_infra import PassResult, QcPass


class InitializersAsConstantsPass(QcPass):
    """Drop graph inputs that have an initializer, so their weights are constants qc can fold and quantize.

    Old exporters list every weight as an overridable graph input; a compiled integer model cannot take
    float weights at run time, so the initializer value is frozen. Does not fire when no input has one.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Remove the initializer-backed inputs."""
        return PassResult(model, RemoveInitializersFromInputsPass()(model).modified)
