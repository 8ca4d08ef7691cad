"""Attention's A·V with log-coded probabilities (FQ-ViT log2 / RepQ-ViT log-sqrt2): a shift-based kernel."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompiler.intmath import softmax as ref
from qcompiler.intops import DOMAIN
from qcompiler.ir import single_consumer
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, quantized_output, replace_island
from qcompiler.passes.integerize_softmax import emit_probabilities, match_softmax, softmax_constants

__all__ = ["IntegerizeLogAttentionPass", "QUANTIZERS", "KMAX_CAP", "SQRT2_BITS"]

QUANTIZERS = ("log2", "log-sqrt2")
#: the largest left shift of the kernel: terms ``|v - zp_v| << kmax`` and their sums stay in int32.
KMAX_CAP = 22
#: fixed-point bits of sqrt(2) in the log-sqrt2 combination ``even * 2**F + odd * round(sqrt(2) 2**F)``.
SQRT2_BITS = 16


class IntegerizeLogAttentionPass(RequantizingPass):
    """Rewrite ``DQ(x) -> [Where(keep, ., c)] -> Softmax -> Q -> DQ -> MatMul(., DQ(V)) -> [Relu|Clip] -> Q``
    (attention's A·V, V per tensor) with log-coded probabilities and a shift-and-add kernel.

    The probabilities ``A = e * floor(2**54 / S)`` are :class:`IntegerizeSoftmaxPass`'s (same ``method`` and
    constants, same row limits and masking; masked positions and fully masked rows get the zero code). Their
    ``bits``-wide codes (``Q = 2**bits - 1`` means 0) are ``q = #{j < Q : A < T_j}`` against a constant
    threshold vector, i.e. ``min(round(-log2 A), Q)`` (``log2``, FQ-ViT) or ``min(round(-2 log2 A), Q)``
    (``log-sqrt2``, RepQ-ViT) rounded in the log domain, exactly (:mod:`qcompiler.intmath.softmax`).

    Kernel (``vc = int32(V) - zp_V``): ``log2``: ``acc = ReduceSum_j(qc.ShiftLeft(vc_j, kmax - q_j))`` over
    ``q_j <= kmax`` on the broadcast ``[.., Ti, Tj, C]`` tensor (the zero code adds nothing), then
    ``y = qc.Requantize(acc, s_V / (2**kmax s_y))``. ``log-sqrt2``: code ``q`` is ``2**-ceil(q/2)``, times
    sqrt(2) when odd; even and odd codes are shifted by ``kmax - ceil(q/2)`` and summed apart, then
    ``even * 2**16 + odd * round(sqrt(2) 2**16)`` in int64 is requantized by ``s_V / (2**(kmax+16) s_y)``.
    ``kmax`` is the largest exponent of a non-zero code, capped at :data:`KMAX_CAP` (22): a code beyond
    ``kmax`` stands for ``A < 2**-kmax`` and contributes 0. Exact: every ``|vc| << k <= 255 * 2**22`` and, as
    ``sum A <= 1`` and a code never exceeds its probability by more than ``2**(1/2)`` (log2) or ``2**(1/4)``
    (log-sqrt2), ``|acc| <= 2**(1/2) * 255 * 2**kmax < 2**31`` whatever the row length; the int64 log-sqrt2
    sum is below ``2**48`` and its requantization mantissa is shortened to keep the product in int64.

    Must run before the generic passes (the activation MatMul and Softmax passes would take these nodes).
    Does not fire when the Softmax, its Q or its DQ output has another consumer (or is a graph output), when
    V is per-axis quantized, or where :func:`match_softmax` does not match.
    """

    def __init__(self, quantizer: str = "log2", bits: int = 4, method: str = "table",
                 samples: Mapping[str, np.ndarray] | None = None, mantissa_bits: int = 31):
        super().__init__(mantissa_bits)
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown attention quantizer {quantizer!r}; expected one of {QUANTIZERS}")
        if not 2 <= bits <= 8:
            raise ValueError(f"attention bits must be 2..8, got {bits}")
        self.quantizer, self.bits, self.method, self.samples = quantizer, bits, method, samples

    def kmax(self) -> int:
        """The largest exponent of a non-zero code, capped at :data:`KMAX_CAP`."""
        top = ref.log_code_count(self.bits) - 1
        return min(top if self.quantizer == "log2" else (top + 1) // 2, KMAX_CAP)

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching attention A·V."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Softmax"]:
            found = _match(node)
            if found is None:
                continue
            match, float_nodes, matmul, v, tail = found
            kmax = self.kmax()
            extra = {"quantizer": self.quantizer, "bits": self.bits, "kmax": kmax}
            constants = softmax_constants(model, match, self.method, self.samples, extra)
            emit = Emitter(graph, tail.quantize, node.name)
            a = emit_probabilities(emit, match, constants)
            codes = self._emit_codes(emit, a)
            acc, extra_bits = self._emit_kernel(emit, codes, emit.centered(v.value, v.zp), kmax)
            ratio = np.array(np.float64(v.s) / (2.0 ** (kmax + extra_bits) * np.float64(tail.output.s)))
            bound = 2 * (2**0.5) * max(v.zp - v.qmin, v.qmax - v.zp) * 2 ** (kmax + extra_bits)
            mantissa = min(self.mantissa_bits, 62 - math.ceil(math.log2(bound + 1)))
            out = emit.requantize(acc, ratio, tail.output.zp, tail.output.dtype, mantissa, tail.clamp)
            replace_island(graph, [*float_nodes, matmul, *tail.nodes], tail.quantize, out)
            modified = True
        return PassResult(model, modified)

    def _emit_codes(self, emit: Emitter, a: ir.Value) -> ir.Value:
        """int32 log codes ``sum_j [A < T_j]`` of the fixed-point probabilities."""
        thresholds = (ref.log2_thresholds if self.quantizer == "log2" else ref.log_sqrt2_thresholds)(self.bits)
        wide = emit.op("Unsqueeze", [a, emit.const(np.array([-1], np.int64), "last")], dtype="int64")
        below = emit.op("Less", [wide, emit.const(thresholds, "thresholds")], dtype="bool")
        return emit.op("ReduceSum", [emit.cast(below, "int32"), emit.const(np.array([-1], np.int64), "axes")],
                       {"keepdims": 0}, dtype="int32")

    def _emit_kernel(self, emit: Emitter, codes: ir.Value, vc: ir.Value, kmax: int) -> tuple[ir.Value, int]:
        """The shift-and-add A·V; returns the accumulator and its extra fixed-point bits."""
        zero = ref.log_code_count(self.bits)
        sqrt2 = self.quantizer == "log-sqrt2"
        live_limit = min(zero, 2 * kmax + 1 if sqrt2 else kmax + 1)
        i32 = lambda value, hint: emit.const(np.array(value, np.int32), hint)  # noqa: E731
        exponent = codes
        if sqrt2:
            plus = emit.op("Add", [codes, i32(1, "one")], dtype="int32")
            exponent = emit.op("ShiftRight", [plus, i32(1, "one")], domain=DOMAIN, dtype="int32")
        shift = emit.op("Clip", [emit.op("Sub", [i32(kmax, "kmax"), exponent], dtype="int32"), i32(0, "zero"),
                                 i32(kmax, "kmax")], dtype="int32")
        last = emit.const(np.array([-1], np.int64), "last")
        shifted = emit.op("ShiftLeft", [
            emit.op("Unsqueeze", [vc, emit.const(np.array([-3], np.int64), "key_axis")], dtype="int32"),
            emit.op("Unsqueeze", [shift, last], dtype="int32"),
        ], domain=DOMAIN, dtype="int32")
        live = emit.op("Less", [codes, i32(live_limit, "live_limit")], dtype="bool")
        key = emit.const(np.array([-2], np.int64), "key")
        if not sqrt2:
            return self._sum(emit, live, shifted, last, key), 0
        odd = emit.op("Equal", [emit.op("Mod", [codes, i32(2, "two")], dtype="int32"), i32(1, "one")], dtype="bool")
        even_live = emit.op("And", [live, emit.op("Not", [odd], dtype="bool")], dtype="bool")
        odd_live = emit.op("And", [live, odd], dtype="bool")
        even = emit.cast(self._sum(emit, even_live, shifted, last, key), "int64")
        odd_sum = emit.cast(self._sum(emit, odd_live, shifted, last, key), "int64")
        root = int(round(math.sqrt(2.0) * 2**SQRT2_BITS))
        total = emit.op("Add", [
            emit.op("Mul", [even, emit.const(np.array(2**SQRT2_BITS, np.int64), "unit")], dtype="int64"),
            emit.op("Mul", [odd_sum, emit.const(np.array(root, np.int64), "sqrt2")], dtype="int64"),
        ], dtype="int64")
        return total, SQRT2_BITS

    @staticmethod
    def _sum(emit: Emitter, live: ir.Value, shifted: ir.Value, last: ir.Value, key: ir.Value) -> ir.Value:
        mask = emit.op("Unsqueeze", [live, last], dtype="bool")
        terms = emit.op("Where", [mask, shifted, emit.const(np.array(0, np.int32), "zero")], dtype="int32")
        return emit.op("ReduceSum", [terms, key], {"keepdims": 0}, dtype="int32")


def _match(node: ir.Node):
    """``(softmax match, float nodes to drop, MatMul, V, tail)`` of an attention A·V, else ``None``."""
    match = match_softmax(node)
    found = quantized_output(node.outputs[0])
    if match is None or found is None:
        return None
    quant_a, _ = found
    dq = single_consumer(quant_a.outputs[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    matmul = single_consumer(dq.outputs[0])
    if matmul is None or matmul.op_type != "MatMul" or matmul.inputs[0] is not dq.outputs[0]:
        return None
    v = dequantized(matmul.inputs[1])
    if v is None or not v.per_tensor or v.value.shape is None or len(v.value.shape) < 2:
        return None
    if v.value.shape[-2] != match.row:
        return None
    tail = match_tail(matmul.outputs[0])
    if isinstance(tail, str):
        return None
    return match, [*match.float_nodes, quant_a, dq], matmul, v, tail
