"""Close the integer model: refuse leftover float ops, attach the qc functions, drop dead values."""

from __future__ import annotations

import onnx_ir as ir

from qcompiler.errors import UnsupportedOpsError
from qcompiler.intops import DOMAIN, VERSION, function_protos
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes.remove_unused import RemoveUnusedPass
from qcompiler.verify import integer_region_problems


class FinalizeIntegerModelPass(QcPass):
    """Make the integerized model self-contained and check that nothing float is left inside it.

    Any node still computing a float tensor inside the region could not be made integer by any pass: they are
    all reported in one :class:`UnsupportedOpsError`. Then the qc functions and the ``qc`` opset are added,
    unused nodes and initializers removed. Ensures: the integer-region verifier reports no problem.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Check, attach functions, clean up."""
        leftovers = [
            (node.op_type, node.name or "", _reason(node))
            for node in model.graph
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(v is not None and v.dtype is not None and v.dtype.is_floating_point() for v in node.outputs)
        ]
        if leftovers:
            raise UnsupportedOpsError(leftovers)
        modified = model.opset_imports.get(DOMAIN) != VERSION
        model.opset_imports[DOMAIN] = VERSION
        model.graph.opset_imports[DOMAIN] = VERSION
        for proto in function_protos():
            function = ir.serde.deserialize_function(proto)
            if function.identifier() not in model.functions:
                model.functions[function.identifier()] = function
                modified = True
        modified |= RemoveUnusedPass()(model).modified
        return PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        """The region must be integer-only."""
        problems = integer_region_problems(model)
        if problems:
            raise AssertionError("integer region not clean after finalization:\n" + "\n".join(problems))


def _reason(node: ir.Node) -> str:
    """Why a node stayed float: its quantization pattern did not match."""
    return (f"no integer rewrite matched this {node.op_type} (inputs or output not quantized as its "
            "integer form needs, e.g. a constant operand or an unsupported attribute)")
