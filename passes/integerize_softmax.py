"""Integer Softmax on the last axis, masked or not: an integer exponential, an integer sum, ONE division per row.

The arithmetic is :mod:`qcompiler.intmath.softmax` step by step (that module is the bit-exact reference);
:func:`match_softmax`, :func:`softmax_constants` and :func:`emit_probabilities` are shared with
:class:`~qcompiler.passes.integerize_log_attention.IntegerizeLogAttentionPass`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler import nonlinear
from qcompiler.errors import OverflowRiskError
from qcompiler.intmath import softmax as ref
from qcompiler.intops import DOMAIN
from qcompiler.ir import const_array, node_text, single_consumer
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._emit import Emitter
from qcompiler.passes._qdq import Quantized, dequantized, quantized_output, replace_island
from qcompiler.qmath import quantize
from qcompiler.quant_plan import is_softmax_mask

__all__ = ["IntegerizeSoftmaxPass", "SoftmaxMatch", "match_softmax", "softmax_constants", "emit_probabilities"]

#: fixed-point bits of the exponential table (method ``table``).
EXP_BITS = ref.EXP_BITS
#: calibration rows used to choose the shift/poly constants (evenly spaced over the samples).
MAX_SAMPLE_ROWS = 1024


@dataclass(frozen=True)
class SoftmaxMatch:
    """``DQ(x) -> [Where(keep, ., c)] -> Softmax(last axis)``: the float nodes and the integer input."""

    softmax: ir.Node
    where: ir.Node | None
    x: Quantized
    keep: ir.Value | None
    row: int

    @property
    def float_nodes(self) -> list[ir.Node]:
        return [self.where, self.softmax] if self.where is not None else [self.softmax]

    @property
    def codes(self) -> int:
        """Number of input codes: distances run over ``0 .. codes - 1``."""
        return self.x.qmax - self.x.qmin + 1


def match_softmax(node: ir.Node) -> SoftmaxMatch | None:
    """The match of a Softmax on the last axis of a per-tensor quantized input (optionally masked by an
    absorbed ``Where(keep, ., c <= MASK_FILL_MAX)`` of the same shape), else ``None``."""
    if node.op_type != "Softmax":
        return None
    source, where, keep = node.inputs[0], None, None
    producer = source.producer()
    if producer is not None and is_softmax_mask(producer) and single_consumer(source) is node:
        where, keep, source = producer, producer.inputs[0], producer.inputs[1]
    x = dequantized(source)
    if x is None or not x.per_tensor or x.value.shape is None or len(x.value.shape) == 0:
        return None
    shape = list(x.value.shape)
    if where is not None and (where.outputs[0].shape is None or list(where.outputs[0].shape) != shape):
        return None
    axis = node.attributes["axis"].value if "axis" in node.attributes else -1
    if axis not in (-1, len(shape) - 1) or not isinstance(shape[-1], int):
        return None
    return SoftmaxMatch(node, where, x, keep, int(shape[-1]))


def softmax_constants(model: ir.Model, match: SoftmaxMatch, method: str,
                      samples: Mapping[str, np.ndarray] | None, extra: dict | None = None) -> ref.Constants:
    """The exponential constants of ``method`` for ``match`` (minimum MSE on its calibration samples, or
    :func:`~qcompiler.intmath.softmax.default_constants`), recorded with :func:`qcompiler.nonlinear.record`.

    Raises :class:`OverflowRiskError` when no constant set keeps ``row * e(0) <= 2**40``.
    """
    if method not in ref.METHODS:
        raise ValueError(f"unknown Softmax method {method!r}; expected one of {ref.METHODS}")
    x, name = match.x, match.softmax.name
    sample = None if samples is None else samples.get(name)
    if sample is not None:
        codes, keep = _sample_codes(match, np.asarray(sample, np.float32))
        chosen, error = ref.choose(method, x.s, match.codes, match.row, codes, keep)
    else:
        chosen, error = ref.default_constants(method, x.s, match.codes, match.row), None
    if chosen is None:
        raise OverflowRiskError(f"{node_text(match.softmax)}: a Softmax row of {match.row} elements is too long for "
                                f"the integer {method} Softmax (row * e(0) must stay below 2**40)")
    nonlinear.record(model, name, "Softmax", method, {**chosen.record(), **(extra or {})}, error)
    return chosen


def _sample_codes(match: SoftmaxMatch, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibration samples of the Softmax input on the input grid, as rows (and the mask, where masked)."""
    x = match.x
    keep = None
    if match.where is not None:
        fill = float(const_array(match.where.inputs[2]).reshape(-1)[0])
        keep = (sample > fill / 2).reshape(-1, match.row)
    bounded = np.clip(sample, x.s * (x.qmin - x.zp), x.s * (x.qmax - x.zp))  # masked fills would overflow
    codes = np.clip(quantize(bounded, x.s, x.zp, x.dtype).astype(np.int32), x.qmin, x.qmax).reshape(-1, match.row)
    rows = np.unique(np.linspace(0, codes.shape[0] - 1, min(codes.shape[0], MAX_SAMPLE_ROWS)).astype(np.int64))
    return codes[rows], None if keep is None else keep[rows]


def _i32(emit: Emitter, value: int, hint: str) -> ir.Value:
    return emit.const(np.array(value, np.int32), hint)


def emit_probabilities(emit: Emitter, match: SoftmaxMatch, c: ref.Constants) -> ir.Value:
    """Emit :func:`qcompiler.intmath.softmax.probabilities`: the int64 fixed-point ``A = e * floor(2**K / S)``."""
    axes = emit.const(np.array([-1], np.int64), "axes")
    xi = emit.cast(match.x.value, "int32")
    if match.keep is None:
        peak = emit.op("ReduceMax", [xi, axes], {"keepdims": 1}, dtype="int32")
        d = emit.op("Sub", [peak, xi], dtype="int32")
    else:
        kept = emit.op("Where", [match.keep, xi, _i32(emit, ref._LOW, "masked")], dtype="int32")
        peak = emit.op("ReduceMax", [kept, axes], {"keepdims": 1}, dtype="int32")
        d = emit.op("Clip", [emit.op("Sub", [peak, xi], dtype="int32"), _i32(emit, 0, "zero"),
                             _i32(emit, match.codes - 1, "dmax")], dtype="int32")
    e = _emit_exp(emit, d, c)
    if match.keep is not None:
        e = emit.op("Where", [match.keep, e, _i32(emit, 0, "zero")], dtype="int32")
    wide = emit.cast(e, "int64")
    total = emit.op("ReduceSum", [wide, axes], {"keepdims": 1}, dtype="int64")
    total = emit.op("Max", [total, emit.const(np.array(1, np.int64), "one")], dtype="int64")
    reciprocal = emit.op("Div", [emit.const(np.array(2**ref.RECIPROCAL_BITS, np.int64), "numerator"), total],
                         dtype="int64")
    return emit.op("Mul", [wide, reciprocal], dtype="int64")


def _shift(emit: Emitter, op: str, x: ir.Value, amount: ir.Value | int) -> ir.Value:
    if isinstance(amount, int):
        if amount == 0:
            return x
        amount = _i32(emit, amount, "shift")
    return emit.op(op, [x, amount], domain=DOMAIN, dtype="int32")


def _emit_exp(emit: Emitter, d: ir.Value, c: ref.Constants) -> ir.Value:
    """Emit :func:`qcompiler.intmath.softmax.exp_int` on the int32 distances ``d``."""
    if isinstance(c, ref.TableExp):
        return emit.op("LookupTable", [d, emit.const(c.table, "exp_table"), _i32(emit, 0, "offset")],
                       domain=DOMAIN, dtype="int32")
    dm = _shift(emit, "ShiftLeft", d, c.m)
    x0 = _i32(emit, c.x0, "x0")
    if isinstance(c, ref.ShiftExp):
        half = _shift(emit, "ShiftRight", dm, 1)
        sixteenth = _shift(emit, "ShiftRight", dm, 4)
        t = emit.op("Sub", [emit.op("Add", [dm, half], dtype="int32"), sixteenth], dtype="int32")
        q = emit.op("Div", [t, x0], dtype="int32")
        r = emit.op("Sub", [t, emit.op("Mul", [q, x0], dtype="int32")], dtype="int32")
        v = emit.op("Sub", [x0, _shift(emit, "ShiftRight", r, 1)], dtype="int32")
        value, exponent = _shift(emit, "ShiftLeft", v, c.n), q
    else:
        z = emit.op("Div", [dm, x0], dtype="int32")
        r = emit.op("Sub", [dm, emit.op("Mul", [z, x0], dtype="int32")], dtype="int32")
        w = emit.op("Sub", [_i32(emit, c.b_int, "b_int"), r], dtype="int32")
        value = emit.op("Add", [emit.op("Mul", [w, w], dtype="int32"), _i32(emit, c.c_int, "c_int")], dtype="int32")
        exponent = z
    capped = emit.op("Min", [exponent, _i32(emit, ref._MAX_SHIFT32, "max_shift")], dtype="int32")
    return _shift(emit, "ShiftRight", value, capped)


class IntegerizeSoftmaxPass(QcPass):
    """Rewrite ``DQ(x) -> [Where(keep, ., c)] -> Softmax(last axis) -> Q`` (uniform output) in integers.

    With ``d = clip(max_kept(x) - x, 0, D)`` (``D = qmax_x - qmin_x``), ``e = exp_int(d)`` by ``method``
    (``table``: ``round(2**16 exp(-s d))``; ``shift``: I-ViT ShiftExp; ``poly``: I-BERT i-exp; masked
    positions ``e = 0``), ``S = sum(e)`` in int64, ONE division per row ``R = floor(2**54 / max(S, 1))`` and
    ``y = qc.Requantize(e * R, steps, 54) = clamp(round_half_up(e * R * steps / 2**54) + zp_y, qmin_y, qmax_y)``
    with the fixed output scale ``1 / steps`` (``steps = qmax_y - zp_y``; the Q must have it, else no match).
    See :mod:`qcompiler.intmath.softmax`, the bit-exact reference.

    Ranges: ``d``, ``e`` and the poly square stay in int32 (``e(0) <= 2**30``); ``S <= T * e(0) <= 2**40``
    for rows of ``T`` elements, so ``S`` is exact in int64 (and in onnxruntime's double sum), ``R`` has at
    least 14 significant bits and ``e * R * steps < 2**62``. The table method (``e(0) = 2**16``) thus takes
    rows up to ``2**24`` elements; shift/poly choose their constants (up-scaling shift ``m``, I-ViT's ``n``)
    within that bound, by minimum MSE against the float Softmax on ``samples[node name]`` (the float Softmax
    input from calibration, quantized to the input grid) or on synthetic rows when there are none. A row too
    long for any constant set raises :class:`OverflowRiskError` naming the node.

    Error against the float Softmax of the dequantized input (measured, 8-bit, T in 16..197): ``table``
    within 0.51 output steps, ``poly`` within 0.65, ``shift`` within about 4.3 (I-ViT's 1.4375 ~ log2(e) and
    linear ``2**-f``). Masked positions are exactly 0; a fully masked row is all 0 (``S = 0``) where the float
    Softmax gives a uniform row (finite fill) or NaN (``-inf``). Does not fire on a Softmax over another axis,
    a per-axis or unquantized input, a dynamic row length, or an output not on the ``1 / steps`` grid.
    """

    def __init__(self, method: str = "table", samples: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        if method not in ref.METHODS:
            raise ValueError(f"unknown Softmax method {method!r}; expected one of {ref.METHODS}")
        self.method = method
        self.samples = samples

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching Softmax."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "Softmax"]:
            match = match_softmax(node)
            found = quantized_output(node.outputs[0])
            if match is None or found is None:
                continue
            quant, out = found
            steps = out.qmax - out.zp
            if not out.per_tensor or steps <= 0 or not np.isclose(out.s * steps, 1.0):
                continue
            constants = softmax_constants(model, match, self.method, self.samples, {"quantizer": "uniform"})
            emit = Emitter(graph, quant, node.name)
            a = emit_probabilities(emit, match, constants)
            result = emit.requantize_dyadic(a, np.array(steps, np.int64), np.array(ref.RECIPROCAL_BITS, np.int64),
                                            out.zp, out.dtype, (out.qmin, out.qmax))
            replace_island(graph, match.float_nodes, quant, result)
            modified = True
        return PassResult(model, modified)
