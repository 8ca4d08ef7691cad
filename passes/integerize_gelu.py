"""Integer GELU with calibrated per-layer constants: I-ViT ShiftGELU ("shift") or I-BERT i-GELU ("poly").

The arithmetic is :mod:`qcompiler.intmath.gelu`, emitted op for op, so onnxruntime on the integer model
equals the numpy reference bit for bit. Method "table" (the default of the compiler) is not rewritten
here: the exact 256-entry table is :class:`IntegerizeLookupTablePass`'s, which runs after this pass; with
``method="table"`` this pass only records the choice (:func:`qcompiler.nonlinear.record`) for every Gelu
that the table pass will rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompiler.intmath import gelu as ref
from qcompiler.intops import DOMAIN
from qcompiler.nonlinear import GELU_METHODS, record
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._qdq import Quantized, dequantized, quantized_output, replace_island
from qcompiler.qmath import quantize

#: the ShiftGELU search grid: alpha (folded into x0) and the exponent bit budget n (u: the largest that fits).
SHIFT_ALPHAS = tuple(float(a) for a in np.round(np.arange(1.50, 1.8001, 0.01), 3))
SHIFT_BUDGETS = tuple(range(8, 24))
#: the i-GELU search grid: input up-scaling shifts u (p: the smallest that fits the int32 product).
POLY_UPSCALES = tuple(range(0, 17))


class IntegerizeGeluPass(RequantizingPass):
    """Rewrite ``DQ(x) -> Gelu -> Q`` (8-bit per-tensor ``x``) with integer ops ending in one qc.Requantize.

    ``samples`` maps a Gelu node's name to float samples of its input (calibration data). The constants are
    chosen per layer minimizing the mean squared error, in real output units, between the integer
    accumulator and the float GELU over the samples quantized to the input grid; without samples (or for a
    node without an entry) the defaults of :func:`~qcompiler.intmath.gelu.shift_constants` /
    :func:`~qcompiler.intmath.gelu.poly_constants` are used. Either Gelu form (``approximate`` "none" or
    "tanh") is approximated as the erf GELU. Every Gelu seen is recorded with ``nonlinear.record``.
    """

    def __init__(self, method: str = "shift", samples: Mapping[str, np.ndarray] | None = None,
                 mantissa_bits: int = 31):
        super().__init__(mantissa_bits)
        if method not in GELU_METHODS:
            raise ValueError(f"unknown GELU method {method!r}; expected one of {GELU_METHODS}")
        self.method = method
        self.samples = dict(samples or {})

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite (or, for "table", record) every matching Gelu."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Gelu" and n.domain in ("", "ai.onnx")]:
            x = dequantized(node.inputs[0])
            found = quantized_output(node.outputs[0])
            if x is None or found is None or not x.per_tensor or x.dtype not in ("uint8", "int8"):
                continue
            quant, out = found
            if not out.per_tensor:
                continue
            if self.method == "table":
                record(model, node.name, "Gelu", "table", {}, None)
                modified = True
                continue
            constants, error = self._choose(node.name, x)
            if constants is None:
                continue
            emit = Emitter(graph, quant, node.name)
            xi = emit.centered(x.value, x.zp, "int32")
            if self.method == "shift":
                acc, acc_scale = _emit_shift(emit, xi, constants), ref.shift_acc_scale(x.s)
            else:
                acc, acc_scale = _emit_poly(emit, xi, constants), ref.poly_acc_scale(x.s, constants)
            result = emit.requantize(acc, np.array(acc_scale / out.s), out.zp, out.dtype, self.mantissa_bits,
                                     clamp=(out.qmin, out.qmax))
            replace_island(graph, [node], quant, result)
            record(model, node.name, "Gelu", self.method, constants, error)
            modified = True
        return PassResult(model, modified)

    def _choose(self, name: str, x: Quantized) -> tuple[dict | None, float | None]:
        """The constants for one layer and their calibration error (``None`` without samples)."""
        default = ref.shift_constants(x.s, **ref.DEFAULT_SHIFT) if self.method == "shift" else ref.poly_constants(x.s)
        samples = self.samples.get(name)
        if samples is None:
            return default, None
        codes, counts = np.unique(quantize(np.asarray(samples, np.float32), x.s, x.zp, x.dtype).astype(np.int64),
                                  return_counts=True)
        codes = np.clip(codes, x.qmin, x.qmax)
        return choose_constants(self.method, x.s, (codes - x.zp).astype(np.int32), counts, default)


def calibration_error(method: str, scale: float, centered: np.ndarray, counts: np.ndarray, constants: dict) -> float:
    """Mean squared error (real units) of the integer accumulator against the float GELU, count-weighted."""
    if method == "shift":
        approx = ref.shift_gelu(centered, **constants) * ref.shift_acc_scale(scale)
    else:
        approx = ref.poly_gelu(centered, **constants) * ref.poly_acc_scale(scale, constants)
    exact = ref.gelu(centered.astype(np.float64) * np.float32(scale))
    return float(np.average((approx - exact) ** 2, weights=counts))


def choose_constants(method: str, scale: float, centered: np.ndarray, counts: np.ndarray,
                     default: dict | None) -> tuple[dict | None, float | None]:
    """The grid candidate of least calibration error; the default wins ties (it is tried first)."""
    if method == "shift":
        grid = [ref.shift_constants(scale, alpha=a, n=n) for a in SHIFT_ALPHAS for n in SHIFT_BUDGETS]
    else:
        grid = [ref.poly_constants(scale, u=u) for u in POLY_UPSCALES]
    best, best_error = None, np.inf
    for candidate in [default, *grid]:
        if candidate is None:
            continue
        error = calibration_error(method, scale, centered, counts, candidate)
        if error < best_error * (1 - 1e-9):
            best, best_error = candidate, error
    return best, (None if best is None else best_error)


def _i32(emit: Emitter, value: int, hint: str) -> ir.Value:
    return emit.const(np.array(value, np.int32), hint)


def _i64(emit: Emitter, value: int, hint: str) -> ir.Value:
    return emit.const(np.array(value, np.int64), hint)


def _emit_shift(emit: Emitter, xi: ir.Value, c: dict) -> ir.Value:
    """:func:`qcompiler.intmath.gelu.shift_gelu` as integer ops; returns the int32 accumulator."""
    x0, n, u = c["x0"], c["n"], c["u"]
    t = emit.op("Abs", [xi], dtype="int32")
    if u:
        t = emit.op("ShiftLeft", [t, _i32(emit, u, "u")], domain=DOMAIN, dtype="int32")
    t = emit.op("Neg", [t], dtype="int32")
    half = emit.op("ShiftRight", [t, _i32(emit, 1, "one")], domain=DOMAIN, dtype="int32")
    sixteenth = emit.op("ShiftRight", [t, _i32(emit, 4, "four")], domain=DOMAIN, dtype="int32")
    t = emit.op("Sub", [emit.op("Add", [t, half], dtype="int32"), sixteenth], dtype="int32")
    t = emit.op("Max", [t, _i32(emit, n * x0, "floor")], dtype="int32")
    x0_value = _i32(emit, x0, "x0")
    q = emit.op("Div", [t, x0_value], dtype="int32")
    r = emit.op("Sub", [t, emit.op("Mul", [q, x0_value], dtype="int32")], dtype="int32")
    e = emit.op("Sub", [emit.op("ShiftRight", [r, _i32(emit, 1, "one")], domain=DOMAIN, dtype="int32"), x0_value],
                dtype="int32")
    exp = emit.op("ShiftLeft", [e, emit.op("Sub", [_i32(emit, n, "n"), q], dtype="int32")], domain=DOMAIN,
                  dtype="int32")
    one = _i32(emit, -x0 << n, "exp_zero")
    negative = emit.op("Less", [xi, _i32(emit, 0, "zero")], dtype="bool")
    numerator = emit.op("Where", [negative, exp, one], dtype="int32")
    denominator = emit.op("Add", [exp, one], dtype="int32")
    scaled = emit.op("ShiftLeft", [emit.cast(numerator, "int64"), _i64(emit, ref.SIGMOID_BITS, "sigmoid_bits")],
                     domain=DOMAIN, dtype="int64")
    sigmoid = emit.op("Div", [scaled, emit.cast(denominator, "int64")], dtype="int64")
    return emit.op("Mul", [xi, emit.cast(sigmoid, "int32")], dtype="int32")


def _emit_poly(emit: Emitter, xi: ir.Value, c: dict) -> ir.Value:
    """:func:`qcompiler.intmath.gelu.poly_gelu` as integer ops; returns the int32 accumulator."""
    wide = emit.cast(xi, "int64")
    m = emit.op("Abs", [wide], dtype="int64")
    if c["u"]:
        m = emit.op("ShiftLeft", [m, _i64(emit, c["u"], "u")], domain=DOMAIN, dtype="int64")
    b = _i64(emit, c["b_int"], "b_int")
    d = emit.op("Sub", [emit.op("Min", [m, b], dtype="int64"), b], dtype="int64")
    mag = emit.op("Sub", [_i64(emit, c["c_int"], "c_int"), emit.op("Mul", [d, d], dtype="int64")], dtype="int64")
    if c["p"]:
        mag = emit.op("ShiftRight", [mag, _i64(emit, c["p"], "p")], domain=DOMAIN, dtype="int64")
    erf = emit.op("Mul", [emit.op("Sign", [wide], dtype="int64"), mag], dtype="int64")
    total = emit.op("Add", [erf, _i64(emit, c["one_int"], "one_int")], dtype="int64")
    return emit.op("Mul", [xi, emit.cast(total, "int32")], dtype="int32")
