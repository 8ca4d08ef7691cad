"""Elementwise functions of one 8-bit activation as lookup tables (exact on the quantization grid)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qcompiler.intops import DOMAIN
from qcompiler.ir import attr, const_array, single_consumer
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._channel_affine import per_channel_vector
from qcompiler.passes._emit import Emitter
from qcompiler.passes._qdq import Quantized, dequantized, quantized_output, replace_island
from qcompiler.qmath import DTYPE_RANGES, dequantize, quantize
from qcompiler.quant_plan import UNARY_TABLE_OPS

_erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _function(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    """The float function ``node`` computes elementwise (constants bound), or ``None`` if not table-able."""
    alpha = attr(node, "alpha", None)
    op = node.op_type
    if op == "Clip":
        bounds = [const_array(v) if v is not None else None for v in node.inputs[1:3]]
        lo = -np.inf if not bounds or bounds[0] is None else float(bounds[0])
        hi = np.inf if len(bounds) < 2 or bounds[1] is None else float(bounds[1])
        return lambda x: np.clip(x, lo, hi)
    if op == "HardSigmoid":
        a, b = (alpha if alpha is not None else 0.2), attr(node, "beta", 0.5)
        return lambda x: np.clip(a * x + b, 0.0, 1.0)
    if op == "Gelu":
        if attr(node, "approximate", "none") == "tanh":
            return lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    simple = {
        "Relu": lambda x: np.maximum(x, 0.0),
        "LeakyRelu": lambda x: np.where(x >= 0, x, (alpha if alpha is not None else 0.01) * x),
        "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
        "Sigmoid": _sigmoid,
        "Tanh": np.tanh,
        "Elu": lambda x: np.where(x >= 0, x, (alpha if alpha is not None else 1.0) * np.expm1(np.minimum(x, 0))),
        "Selu": lambda x: attr(node, "gamma", 1.0507009873554805) * np.where(
            x > 0, x, (alpha if alpha is not None else 1.6732632423543772) * np.expm1(np.minimum(x, 0))),
        "Softplus": _softplus,
        "Softsign": lambda x: x / (1 + np.abs(x)),
        "Mish": lambda x: x * np.tanh(_softplus(x)),
        "Celu": lambda x: np.maximum(x, 0) + np.minimum(0, (alpha or 1.0) * np.expm1(x / (alpha or 1.0))),
        "ThresholdedRelu": lambda x: np.where(x > (alpha if alpha is not None else 1.0), x, 0.0),
        "Swish": lambda x: x * _sigmoid(x),
    }
    return simple.get(op)


class IntegerizeLookupTablePass(QcPass):
    """Rewrite ``DQ(x) -> f -> Q`` for elementwise ``f`` as ``qc.LookupTable(x_q, T)``.

    ``T[q - qmin] = quantize_y(f(dequantize_x(q)))`` over every code of the input dtype, so the integer op is
    exactly the fake-quantized float function. PRelu with a per-channel slope gets one table per channel
    (index offset ``c * 2**bits``). ``x * Sigmoid(x)`` (SiLU/Swish) is matched as one function.
    Does not fire on inputs wider than 8 bits or per-axis quantized tensors.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching node."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type in UNARY_TABLE_OPS or n.op_type == "Sigmoid"]:
            if node.graph is not graph:
                continue
            x = dequantized(node.inputs[0])
            if x is None or not x.per_tensor or x.dtype not in ("uint8", "int8"):
                continue
            float_nodes, fn, last = self._match(node)
            found = quantized_output(last.outputs[0]) if fn is not None else None
            if found is None:
                continue
            quant, out = found
            emit = Emitter(graph, quant, node.name)
            if node.op_type == "PRelu":
                table, offset = self._prelu_tables(node, x, out)
            else:
                table, offset = _table(fn, x, out), np.array(-DTYPE_RANGES[x.dtype][0], np.int32)
            if table is None:
                continue
            result = emit.op("LookupTable", [x.value, emit.const(table, "table"), emit.const(offset, "index_offset")],
                             domain=DOMAIN, dtype=out.dtype)
            replace_island(graph, float_nodes, quant, result)
            modified = True
        return PassResult(model, modified)

    @staticmethod
    def _match(node: ir.Node) -> tuple[list[ir.Node], Callable | None, ir.Node]:
        """The float nodes of the function, the function itself, and the node producing its output."""
        if node.op_type == "Sigmoid":
            user = single_consumer(node.outputs[0])
            if user is not None and user.op_type == "Mul" and node.inputs[0] in user.inputs:
                return [node, user], lambda x: x * _sigmoid(x), user
        if node.op_type == "PRelu":
            return [node], (lambda x: x), node
        return [node], _function(node), node

    @staticmethod
    def _prelu_tables(node: ir.Node, x: Quantized, out: Quantized) -> tuple[np.ndarray | None, np.ndarray]:
        slope = const_array(node.inputs[1])
        if slope is None:
            return None, np.zeros(())
        rank = len(x.value.shape)
        channels = x.value.shape[1] if rank > 1 else 1
        flat = per_channel_vector(slope, rank, min(1, rank - 1), channels) if slope.size > 1 else slope.reshape(-1)
        if flat is None:
            return None, np.zeros(())
        codes = DTYPE_RANGES[x.dtype][1] - DTYPE_RANGES[x.dtype][0] + 1
        tables = [_table(lambda v, a=float(a): np.where(v >= 0, v, a * v), x, out) for a in flat]
        offset = (np.arange(len(flat)) * codes - DTYPE_RANGES[x.dtype][0]).astype(np.int32)
        shape = (len(flat),) + (1,) * (rank - 2) if len(flat) > 1 else ()
        return np.concatenate(tables), offset.reshape(shape)


def _table(fn: Callable[[np.ndarray], np.ndarray], x: Quantized, out: Quantized) -> np.ndarray:
    """``quantize_out(fn(dequantize_x(q)))`` for every code ``q`` of the input dtype, in code order."""
    lo, hi = DTYPE_RANGES[x.dtype]
    codes = np.arange(lo, hi + 1)
    real = dequantize(codes, x.s, x.zp).astype(np.float64)
    return np.clip(quantize(fn(real), out.s, out.zp, out.dtype), out.qmin, out.qmax)
