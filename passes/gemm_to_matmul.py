"""Canonicalize Gemm with a constant weight into MatMul (+ Add of a constant bias)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr, const_array, constant, fresh_name
from qcompiler.pass_infra import PassResult, QcPass


class GemmToMatMulPass(QcPass):
    """Rewrite ``Gemm(A, B, C)`` with constant ``B``/``C`` and ``transA=0`` as ``MatMul(A, W) + bias``.

    ``W = alpha * (B.T if transB else B)`` and ``bias = beta * C``. Does not fire on transposed or
    non-constant ``A``/``B`` (those Gemms are reported as unsupported later).
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Gemm."""
        graph = model.graph
        modified = False
        for gemm in [n for n in graph if n.op_type == "Gemm" and n.domain in ("", "ai.onnx")]:
            weight = const_array(gemm.inputs[1])
            has_bias = len(gemm.inputs) > 2 and gemm.inputs[2] is not None
            bias = const_array(gemm.inputs[2]) if has_bias else None
            if weight is None or attr(gemm, "transA", 0) or (has_bias and bias is None):
                continue
            weight = weight.T if attr(gemm, "transB", 0) else weight
            weight = (attr(gemm, "alpha", 1.0) * weight.astype(np.float64)).astype(np.float32)
            name = gemm.name or fresh_name(graph, "gemm")
            nodes = [ir.node("MatMul", [gemm.inputs[0], constant(graph, weight, "weight")], name=name)]
            if bias is not None:
                bias = (attr(gemm, "beta", 1.0) * bias.astype(np.float64)).astype(np.float32)
                nodes.append(ir.node("Add", [nodes[0].outputs[0], constant(graph, bias, "bias")],
                                     name=fresh_name(graph, f"{name}_bias")))
            graph.insert_before(gemm, nodes)
            gemm.outputs[0].replace_all_uses_with(nodes[-1].outputs[0], replace_graph_outputs=True)
            result = nodes[-1].outputs[0]
            result.shape, result.type = gemm.outputs[0].shape, gemm.outputs[0].type
            nodes[-1].outputs[0].name, gemm.outputs[0].name = gemm.outputs[0].name, None
            graph.remove(gemm, safe=True)
            modified = True
        return PassResult(model, modified)
