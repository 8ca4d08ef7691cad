"""Builders for the integer nodes that integerize passes emit (standard integer ops and qc functions)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.intops import DOMAIN
from qcompiler.ir import constant, fresh_name
from qcompiler.pass_infra import QcPass
from qcompiler.qmath import DTYPE_RANGES, dyadic

_IR_TYPES = {"bool": ir.DataType.BOOL, "uint8": ir.DataType.UINT8, "int8": ir.DataType.INT8,
             "int32": ir.DataType.INT32, "int64": ir.DataType.INT64}


class RequantizingPass(QcPass):
    """Base of passes that emit ``qc.Requantize``: they share the dyadic mantissa width of the target."""

    def __init__(self, mantissa_bits: int = 31):
        super().__init__()
        self.mantissa_bits = mantissa_bits


class Emitter:
    """Appends integer nodes before ``anchor`` in ``graph``; every emitted node is collected in order."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, name: str):
        self.graph = graph
        self.anchor = anchor
        self.name = name or fresh_name(graph, "node")
        self.nodes: list[ir.Node] = []

    def const(self, array: np.ndarray, hint: str) -> ir.Value:
        """A new initializer named after the node being rewritten."""
        return constant(self.graph, np.asarray(array), f"{self.name}_{hint}")

    def op(self, op_type: str, inputs: list[ir.Value | None], attributes: dict | None = None,
           domain: str = "", dtype: str | None = None) -> ir.Value:
        """Emit one node, insert it before the anchor and return its (single) output value."""
        node = ir.node(op_type, inputs, attributes or {}, domain=domain, name=f"{self.name}/{op_type}_{len(self.nodes)}")
        self.graph.insert_before(self.anchor, [node])
        self.nodes.append(node)
        out = node.outputs[0]
        if dtype is not None:
            out.type = ir.TensorType(_IR_TYPES[dtype])
        return out

    def cast(self, value: ir.Value, dtype: str) -> ir.Value:
        """``Cast`` to an integer dtype (int32 or int64)."""
        return self.op("Cast", [value], {"to": _IR_TYPES[dtype]}, dtype=dtype)

    def centered(self, value: ir.Value, zero_point: int, dtype: str = "int32") -> ir.Value:
        """``int(value) - zero_point`` widened to ``dtype``."""
        wide = self.cast(value, dtype)
        if zero_point == 0:
            return wide
        return self.op("Sub", [wide, self.const(np.array(zero_point, dtype=dtype), "zp")], dtype=dtype)

    def requantize(self, acc: ir.Value, ratio: np.ndarray, out_zp: int, out_dtype: str,
                   mantissa_bits: int, clamp: tuple[int, int] | None = None) -> ir.Value:
        """``qc.Requantize`` of ``acc`` by the dyadic approximation of ``ratio`` (broadcast against acc)."""
        multiplier, shift = dyadic(ratio.reshape(-1), mantissa_bits)
        shape = ratio.shape
        return self.requantize_dyadic(acc, multiplier.reshape(shape), shift.reshape(shape), out_zp, out_dtype, clamp)

    def requantize_dyadic(self, acc: ir.Value, multiplier: np.ndarray, shift: np.ndarray, out_zp: int,
                          out_dtype: str, clamp: tuple[int, int] | None = None) -> ir.Value:
        """``qc.Requantize`` with explicit int64 multiplier and shift tensors."""
        qmin, qmax = clamp or DTYPE_RANGES[out_dtype]
        inputs = [
            acc,
            self.const(np.asarray(multiplier, np.int64), "multiplier"),
            self.const(np.asarray(shift, np.int64), "shift"),
            self.const(np.array(out_zp, np.int64), "out_zp"),
            self.const(np.array(qmin, np.int64), "qmin"),
            self.const(np.array(qmax, np.int64), "qmax"),
        ]
        return self.op("Requantize", inputs, {"to": _IR_TYPES[out_dtype]}, domain=DOMAIN, dtype=out_dtype)
