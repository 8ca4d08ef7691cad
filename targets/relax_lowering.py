"""Lower an integer region (ONNX, opset 21 + domain ``qc``) to a Relax ``IRModule``, one converter per op.

Invariants of the result:

* ``main`` takes the graph inputs in graph order, each a tensor of its static shape and dtype, and returns the
  graph output, or a tuple of the graph outputs in graph order.
* Every value keeps its ONNX dtype, so integer arithmetic wraps exactly as it does in onnxruntime; widening
  happens only where the ONNX op itself widens (ConvInteger, MatMulInteger, ``qc.Requantize``).
* Initializers become Relax constants with their exact dtype; operands that fix a shape or an index pattern
  (Reshape shape, Slice bounds, Resize sizes, ...) must be initializers and are read at lowering time.

Converters take a :class:`_Node` and return one Relax expression per node output. Supported ops are exactly
the keys of :data:`CONVERTERS`; anything else is reported, all at once, before lowering starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import tvm
from tvm import relax

from qcompiler import intops
from qcompiler.errors import QcError, TargetError

__all__ = ["CONVERTERS", "lower"]

R = relax.op


class _Node:
    """One ONNX node as a converter sees it: operands as Relax expressions or numpy constants, attributes."""

    def __init__(
        self,
        proto: onnx.NodeProto,
        bb: relax.BlockBuilder,
        env: dict[str, relax.Expr],
        consts: dict[str, np.ndarray],
        producers: Mapping[str, onnx.NodeProto],
        consumers: Mapping[str, list[onnx.NodeProto]] | None = None,
    ):
        self.proto = proto
        self.bb = bb
        self._env = env
        self._consts = consts
        self._producers = producers
        self._consumers = consumers or {}
        self.attrs = {a.name: _attr_value(a) for a in proto.attribute}
        #: nodes after this one that the converter computed too (see :meth:`absorb`)
        self.absorbed: list[onnx.NodeProto] = []

    @property
    def label(self) -> str:
        """``OpType node 'name'`` for error messages."""
        return f"{self.proto.op_type} node {self.proto.name or self.proto.output[0]!r}"

    def fail(self, why: str) -> TargetError:
        """A :class:`TargetError` about this node (for the converter to raise)."""
        return TargetError(f"{self.label}: {why}")

    def has(self, i: int) -> bool:
        """Whether optional operand ``i`` is present."""
        return i < len(self.proto.input) and self.proto.input[i] != ""

    def arg(self, i: int) -> relax.Expr:
        """Operand ``i`` as a Relax expression (initializers become constants of the same dtype)."""
        return self.tensor(self.proto.input[i])

    def args(self) -> list[relax.Expr]:
        """All operands as Relax expressions."""
        return [self.arg(i) for i in range(len(self.proto.input))]

    def is_const(self, i: int) -> bool:
        """Whether operand ``i`` is an initializer."""
        return self.proto.input[i] in self._consts

    def const(self, i: int) -> np.ndarray:
        """Operand ``i`` as a numpy array; it must be an initializer."""
        if not self.is_const(i):
            raise self.fail(f"operand {i} ({self.proto.input[i]!r}) must be an initializer")
        return self._consts[self.proto.input[i]]

    def attr(self, name: str, default: Any = None) -> Any:
        """Attribute value (strings decoded), or ``default`` when absent."""
        return self.attrs.get(name, default)

    def at_least_one(self, i: int) -> bool:
        """Whether operand ``i`` is provably ``>= 1`` (see :func:`_at_least_one`)."""
        return _at_least_one(self.proto.input[i], self._consts, self._producers)

    def shape(self, i: int) -> list[int]:
        """Static shape of operand ``i``."""
        return _shape(self.arg(i))

    def emit(self, expr: relax.Expr) -> relax.Var:
        """Bind ``expr`` so that its type (shape) is known."""
        return self.bb.emit(expr)

    def sole_consumer(self) -> onnx.NodeProto | None:
        """The one node reading the last output computed so far (this node's, or the last absorbed one's),
        or None when several nodes (or none) read it or it is a graph output."""
        last = (self.absorbed or [self.proto])[-1]
        users = self._consumers.get(last.output[0], [])
        return users[0] if len(last.output) == 1 and len(users) == 1 else None

    def absorb(self, node: onnx.NodeProto) -> None:
        """Declare that the converter's result is ``node``'s output: ``node`` (the sole consumer of the last
        output so far, all other operands initializers) is computed by this converter and not lowered again."""
        self.absorbed.append(node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The node computing tensor ``name`` (None for graph inputs and initializers)."""
        return self._producers.get(name)

    def tensor(self, name: str) -> relax.Expr:
        """Tensor ``name`` (already lowered, or an initializer) as a Relax expression."""
        if name not in self._env:
            self._env[name] = _const(self._consts[name])
        return self._env[name]

    def const_operand(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        """Operand ``i`` of another node as a numpy array, when it is an initializer."""
        return self._consts.get(node.input[i]) if i < len(node.input) else None


def _at_least_one(name: str, consts: Mapping[str, np.ndarray], producers: Mapping[str, onnx.NodeProto]) -> bool:
    """Whether every element of value ``name`` is provably ``>= 1``, from the graph alone.

    Proven: constants ``>= 1``; ``Max`` with one such operand; ``Clip`` with such a lower bound; ``Min`` of
    such operands; ``Gather`` from a constant table ``>= 1``. (Passes emit divisors in these forms, so a
    division needs no guard against zero.)
    """
    if name in consts:
        return bool(np.all(consts[name] >= 1))
    node = producers.get(name)
    if node is None:
        return False
    inputs = [i for i in node.input if i]
    if node.op_type == "Max":
        return any(_at_least_one(i, consts, producers) for i in inputs)
    if node.op_type == "Min":
        return all(_at_least_one(i, consts, producers) for i in inputs)
    if node.op_type == "Clip":
        return len(node.input) > 1 and bool(node.input[1]) and _at_least_one(node.input[1], consts, producers)
    if node.op_type == "Gather":
        return node.input[0] in consts and bool(np.all(consts[node.input[0]] >= 1))
    return False


def _attr_value(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def _const(value: np.ndarray) -> relax.Expr:
    # relax.const narrows int64 arrays to int32 unless the dtype is given.
    return relax.const(value, value.dtype.name)


def _shape(expr: relax.Expr) -> list[int]:
    return [int(d) for d in expr.ty.shape]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(values: Any) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


# ---- elementwise -------------------------------------------------------------------------------------------


def _elementwise(op: Callable[..., relax.Expr]) -> Callable[[_Node], relax.Expr]:
    return lambda n: op(*n.args())


def _variadic(op: Callable[..., relax.Expr]) -> Callable[[_Node], relax.Expr]:
    def convert(n: _Node) -> relax.Expr:
        result, *rest = n.args()
        for value in rest:
            result = op(result, value)
        return result

    return convert


def _trapless_divisor(n: _Node) -> tuple[relax.Expr, relax.Expr | None]:
    """The divisor of an integer Div/Mod with its trapping lanes replaced by 1, and the mask of its -1 lanes.

    x86 division faults (SIGFPE, killing the process) on a zero divisor and on ``min / -1``. onnxruntime
    raises on a zero divisor: a constant zero is rejected here, a computed one yields ``x / 1``, as the graph
    cannot raise mid-kernel. ``min / -1`` wraps to ``min`` in onnxruntime; the caller negates those lanes
    instead (``-x`` wraps the same way). Constant divisors without 0 or -1, and divisors proven ``>= 1``,
    are used as they are.
    """
    if n.at_least_one(1):
        return n.arg(1), None
    if n.is_const(1):
        divisor = n.const(1)
        if np.any(divisor == 0):
            raise n.fail("divides by a constant zero")
        if not np.any(divisor == -1):
            return n.arg(1), None
    d = n.arg(1)
    dtype = str(d.ty.dtype)
    trap = R.equal(d, _const(np.array(0, dtype)))
    minus_one = None
    if np.iinfo(dtype).min < 0:
        minus_one = n.emit(R.equal(d, _const(np.array(-1, dtype))))
        trap = R.logical_or(trap, minus_one)
    return R.where(trap, _const(np.array(1, dtype)), d), minus_one


def _div(n: _Node) -> relax.Expr:
    """Integer Div truncates toward zero, in TVM (C semantics) as in onnxruntime."""
    divisor, minus_one = _trapless_divisor(n)
    quotient = R.divide(n.arg(0), divisor)
    return quotient if minus_one is None else R.where(minus_one, R.negative(n.arg(0)), quotient)


def _mod(n: _Node) -> relax.Expr:
    """fmod=0: the result has the sign of the divisor (floor mod); fmod=1: of the dividend (C fmod).

    ``x mod 1 == x mod -1 == 0``, so the trap-free divisor needs no fix-up.
    """
    divisor, _ = _trapless_divisor(n)
    return (R.mod if n.attr("fmod", 0) else R.floor_mod)(n.arg(0), divisor)


def _pow(n: _Node) -> relax.Expr:
    """Pow by a constant non-negative scalar exponent, as products of repeated squares.

    onnxruntime computes integer Pow in double; the two agree wherever the result fits the dtype.
    """
    exponent = n.const(1)
    if exponent.size != 1 or int(exponent.item()) < 0:
        raise n.fail("only a constant, non-negative, scalar exponent is supported")
    k, result, square = int(exponent.item()), None, n.arg(0)
    while k:
        if k & 1:
            result = square if result is None else R.multiply(result, square)
        k >>= 1
        if k:
            square = n.emit(R.multiply(square, square))
    return R.ones_like(n.arg(0)) if result is None else result


def _cast(n: _Node) -> relax.Expr:
    return R.astype(n.arg(0), onnx.helper.tensor_dtype_to_np_dtype(n.attr("to")).name)


def _clamp(x: relax.Expr, low: relax.Expr | None, high: relax.Expr | None) -> relax.Expr:
    """``min(max(x, low), high)``, as ONNX Clip (so ``low > high`` gives ``high``)."""
    if low is not None:
        x = R.maximum(x, low)
    return x if high is None else R.minimum(x, high)


def _clip(n: _Node) -> relax.Expr:
    return _clamp(n.arg(0), n.arg(1) if n.has(1) else None, n.arg(2) if n.has(2) else None)


# ---- integer compute ---------------------------------------------------------------------------------------

_CONVS = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_POOLS = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}


def _window(n: _Node, spatial: int) -> dict[str, Any]:
    """strides / padding / dilation of a Conv- or Pool-like node with ``spatial`` spatial axes."""
    if n.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise n.fail(f"auto_pad={n.attr('auto_pad')} is not supported; make the padding explicit")
    return {
        "strides": n.attr("strides", [1] * spatial),
        "padding": n.attr("pads", [0] * 2 * spatial),
        "dilation": n.attr("dilations", [1] * spatial),
    }


def _no_zero_points(n: _Node) -> None:
    if n.has(2) or n.has(3):
        raise n.fail("zero-point inputs are not supported; the integer region folds them before lowering")


def _conv_integer(n: _Node) -> relax.Expr:
    _no_zero_points(n)
    spatial = len(n.shape(1)) - 2
    if spatial not in _CONVS:
        raise n.fail(f"{spatial}-D convolution is not supported")
    conv = _CONVS[spatial]
    return conv(n.arg(0), n.arg(1), groups=n.attr("group", 1), out_dtype="int32", **_window(n, spatial))


def _matmul_integer(n: _Node) -> relax.Expr:
    _no_zero_points(n)
    return R.matmul(n.arg(0), n.arg(1), out_dtype="int32")


def _matmul(n: _Node) -> relax.Expr:
    """MatMul of two int32 tensors (qc emits it for activation x activation products, range-checked)."""
    a, b = n.arg(0), n.arg(1)
    if str(a.ty.dtype) != "int32" or str(b.ty.dtype) != "int32":
        raise n.fail("integer MatMul needs int32 operands")
    return R.matmul(a, b, out_dtype="int32")


def _max_pool(n: _Node) -> relax.Expr:
    """Max pooling; TVM pads with the dtype's minimum, which never wins a max (ONNX's -inf padding)."""
    if len(n.proto.output) > 1 and n.proto.output[1]:
        raise n.fail("the Indices output is not supported")
    if n.attr("storage_order", 0):
        raise n.fail("storage_order=1 is not supported")
    kernel = n.attr("kernel_shape")
    if len(kernel) not in _POOLS:
        raise n.fail(f"{len(kernel)}-D pooling is not supported")
    pool = _POOLS[len(kernel)]
    return pool(n.arg(0), pool_size=kernel, ceil_mode=bool(n.attr("ceil_mode", 0)), **_window(n, len(kernel)))


def _reduce(op: Callable[..., relax.Expr]) -> Callable[[_Node], relax.Expr]:
    def convert(n: _Node) -> relax.Expr:
        axes = _ints(n.const(1)) if n.has(1) else []
        if not axes and n.attr("noop_with_empty_axes", 0):
            return n.arg(0)
        return op(n.arg(0), axis=axes or None, keepdims=bool(n.attr("keepdims", 1)))

    return convert


def _saturating_sum(x: relax.Expr, axis: list[int] | None, keepdims: bool) -> relax.Expr:
    """ReduceSum as onnxruntime computes it: the exact sum saturated into the dtype.

    onnxruntime sums integers in double and saturates the result; for int32 that is the exact sum clamped to
    the int32 range, reproduced here with an int64 sum. int64 sums wrap instead of saturating (both are exact
    below 2**53, where onnxruntime's double sum stops being exact).
    """
    dtype = str(x.ty.dtype)
    if dtype == "int64":
        return R.sum(x, axis=axis, keepdims=keepdims)
    info = np.iinfo(dtype)
    wide = R.sum(R.astype(x, "int64"), axis=axis, keepdims=keepdims)
    return R.astype(R.clip(wide, int(info.min), int(info.max)), dtype)


def _requantize(n: _Node) -> relax.Expr:
    """qc.Requantize: ``clip(((int64(x) * m + 2**(s-1)) >> s) + zp, qmin, qmax)`` cast to ``to``.

    The ONNX body floors ``(x*m + half) / 2**s`` with Mod/Div; an arithmetic right shift is the same floor.
    ``shift`` must be an initializer (``2**(s-1)`` is computed here); the other operands may be tensors.
    """
    x, multiplier, shift, zero_point, qmin, qmax = n.args()
    half = _const(np.left_shift(np.int64(1), n.const(2).astype(np.int64) - 1))
    product = R.multiply(R.astype(x, "int64"), multiplier)
    shifted = R.add(R.right_shift(R.add(product, half), shift), zero_point)
    return R.astype(_clamp(shifted, qmin, qmax), onnx.helper.tensor_dtype_to_np_dtype(n.attr("to")).name)


def _lookup_table(n: _Node) -> relax.Expr:
    """qc.LookupTable: ``table[int32(x) + index_offset]``."""
    return R.take(n.arg(1), R.add(R.astype(n.arg(0), "int32"), n.arg(2)), axis=0, mode="clip")


def _shift(op: Callable[..., relax.Expr]) -> Callable[[_Node], relax.Expr]:
    """qc.ShiftLeft / qc.ShiftRight: the shift amount takes x's dtype (TVM shifts need equal dtypes)."""

    def convert(n: _Node) -> relax.Expr:
        x, shift = n.args()
        return op(x, R.astype(shift, str(x.ty.dtype)))

    return convert


# ---- layout ------------------------------------------------------------------------------------------------


def _pad(n: _Node) -> relax.Expr:
    if n.attr("mode", "constant") != "constant":
        raise n.fail(f"mode={n.attr('mode')} is not supported (constant only)")
    rank = len(n.shape(0))
    pads = _ints(n.const(1))
    axes = [_axis(a, rank) for a in _ints(n.const(3))] if n.has(3) else list(range(rank))
    if min(pads, default=0) < 0:
        raise n.fail("negative pads (cropping) are not supported")
    width = [0] * (2 * rank)
    for j, axis in enumerate(axes):
        width[2 * axis], width[2 * axis + 1] = pads[j], pads[j + len(axes)]
    value = n.const(2).item() if n.has(2) else 0
    return R.nn.pad(n.arg(0), pad_width=width, pad_value=value)


def _reshape(n: _Node) -> relax.Expr:
    source = n.shape(0)
    shape = _ints(n.const(1))
    if not n.attr("allowzero", 0):
        shape = [source[i] if s == 0 else s for i, s in enumerate(shape)]
    return R.reshape(n.arg(0), shape)


def _flatten(n: _Node) -> relax.Expr:
    shape = n.shape(0)
    axis = _axis(n.attr("axis", 1), len(shape))
    return R.reshape(n.arg(0), [math.prod(shape[:axis]), math.prod(shape[axis:])])


def _transpose(n: _Node) -> relax.Expr:
    return R.permute_dims(n.arg(0), n.attr("perm"))


def _concat(n: _Node) -> relax.Expr:
    return R.concat(n.args(), axis=n.attr("axis"))


def _slice(n: _Node) -> relax.Expr:
    """Slice: bounds are clamped as ONNX specifies (Python slice semantics); negative steps gather."""
    shape = n.shape(0)
    starts, ends = _ints(n.const(1)), _ints(n.const(2))
    axes = _ints(n.const(3)) if n.has(3) else list(range(len(starts)))
    steps = _ints(n.const(4)) if n.has(4) else [1] * len(starts)
    x = n.arg(0)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = _axis(axis, len(shape))
        kept = range(*slice(start, end, step).indices(shape[axis]))
        if not kept:
            raise n.fail(f"axis {axis} would be empty; empty tensors are not supported")
        if step > 0:
            x = R.strided_slice(x, axes=[axis], begin=[kept.start], end=[kept.stop], strides=[step])
        else:
            x = R.take(x, _const(np.array(kept, np.int64)), axis=axis, mode="clip")
    return x


def _squeeze(n: _Node) -> relax.Expr:
    shape = n.shape(0)
    axes = (
        {_axis(a, len(shape)) for a in _ints(n.const(1))}
        if n.has(1)
        else {i for i, d in enumerate(shape) if d == 1}
    )
    return R.reshape(n.arg(0), [d for i, d in enumerate(shape) if i not in axes])


def _unsqueeze(n: _Node) -> relax.Expr:
    shape = n.shape(0)
    rank = len(shape) + n.const(1).size
    axes = {_axis(a, rank) for a in _ints(n.const(1))}
    source = iter(shape)
    return R.reshape(n.arg(0), [1 if i in axes else next(source) for i in range(rank)])


def _gather(n: _Node) -> relax.Expr:
    """Gather; negative constant indices are normalized here, computed indices must be non-negative.

    Computed indices (token ids from a model input) are clamped into range rather than read out of bounds:
    onnxruntime refuses an out-of-range id, a compiled kernel cannot raise, and must not read past the table.
    """
    axis = _axis(n.attr("axis", 0), len(n.shape(0)))
    if not n.is_const(1):
        return R.take(n.arg(0), n.arg(1), axis=axis, mode="clip")
    indices = n.const(1)
    return R.take(n.arg(0), _const(np.where(indices < 0, indices + n.shape(0)[axis], indices)), axis=axis, mode="clip")


def _expand(n: _Node) -> relax.Expr:
    return R.broadcast_to(n.arg(0), np.broadcast_shapes(tuple(n.shape(0)), tuple(_ints(n.const(1)))))


def _tile(n: _Node) -> relax.Expr:
    return R.tile(n.arg(0), _ints(n.const(1)))


def _split(n: _Node) -> list[relax.Expr]:
    shape = n.shape(0)
    axis = _axis(n.attr("axis", 0), len(shape))
    count = len(n.proto.output)
    if n.has(1):
        sizes = _ints(n.const(1))
    else:
        chunk = -(-shape[axis] // n.attr("num_outputs", count))
        sizes = [chunk] * (count - 1) + [shape[axis] - chunk * (count - 1)]
    parts = n.emit(R.split(n.arg(0), _ints(np.cumsum(sizes)[:-1]), axis=axis))
    return [relax.TupleGetItem(parts, i) for i in range(count)]


# ---- Resize (nearest) --------------------------------------------------------------------------------------
# onnxruntime computes source coordinates in float32 with scale = float(out) / float(in), so do we. Its CPU
# kernel then treats a coordinate within 1e-6 of a half as a tie (the fix for onnxruntime#28291), so that
# float32 noise around x.5 does not flip round_prefer_floor/ceil; floor and ceil use the float32 value as is.
# The index is finally clamped into the input. Rounding is done in float64, exact for float32 values.
# tests/targets/test_resize_indices.py checks these index maps against onnxruntime on many sizes.

_TIE_TOLERANCE = 1e-6

_F32 = np.float32
_COORDINATES: dict[str, Callable[[np.ndarray, np.float32, int, int], np.ndarray]] = {
    "half_pixel": lambda x, scale, n_in, n_out: (x + _F32(0.5)) / scale - _F32(0.5),
    "pytorch_half_pixel": lambda x, scale, n_in, n_out: (
        (x + _F32(0.5)) / scale - _F32(0.5) if n_out > 1 else np.zeros_like(x)
    ),
    "asymmetric": lambda x, scale, n_in, n_out: x / scale,
    "tf_half_pixel_for_nn": lambda x, scale, n_in, n_out: (x + _F32(0.5)) / scale,
    "align_corners": lambda x, scale, n_in, n_out: (
        x * _F32(n_in - 1) / _F32(n_out - 1) if n_out > 1 else np.zeros_like(x)
    ),
}


def _round_half(prefer: float) -> Callable[[np.ndarray], np.ndarray]:
    """Round to nearest; ties (within the tolerance) go to ``floor + prefer``."""

    def pick(x: np.ndarray) -> np.ndarray:
        floor = np.floor(x)
        offset = x - floor - 0.5
        return floor + np.where(np.abs(offset) <= _TIE_TOLERANCE, prefer, offset > 0)

    return pick


_NEAREST: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": _round_half(0.0),
    "round_prefer_ceil": _round_half(1.0),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _nearest_indices(n_in: int, n_out: int, coordinates: str, nearest: str) -> np.ndarray:
    """Source index of each output position along one axis, as onnxruntime's nearest Resize picks it.

    An axis whose scale is exactly 1 maps onto itself, whatever the coordinate mode (onnxruntime skips it).
    """
    scale = _F32(n_out) / _F32(n_in)
    if scale == 1:
        return np.arange(n_in, dtype=np.int64)
    source = _COORDINATES[coordinates](np.arange(n_out, dtype=_F32), scale, n_in, n_out).astype(np.float64)
    return np.clip(_NEAREST[nearest](source), 0, n_in - 1).astype(np.int64)


def _resize(n: _Node) -> relax.Expr:
    """Nearest Resize to constant ``sizes``: one gather per resized axis."""
    coordinates = n.attr("coordinate_transformation_mode", "half_pixel")
    nearest = n.attr("nearest_mode", "round_prefer_floor")
    if n.attr("mode", "nearest") != "nearest" or coordinates not in _COORDINATES or nearest not in _NEAREST:
        raise n.fail(
            f"only mode=nearest with coordinate_transformation_mode in {sorted(_COORDINATES)} and "
            f"nearest_mode in {sorted(_NEAREST)} is supported"
        )
    if not n.has(3) or n.has(2) or n.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise n.fail("Resize needs a constant `sizes` input (no scales) and keep_aspect_ratio_policy=stretch")
    shape = n.shape(0)
    axes = [_axis(a, len(shape)) for a in n.attr("axes", range(len(shape)))]
    x = n.arg(0)
    for axis, size in zip(axes, _ints(n.const(3)), strict=True):
        index = _nearest_indices(shape[axis], size, coordinates, nearest)
        if not np.array_equal(index, np.arange(shape[axis])):
            x = R.take(x, _const(index), axis=axis, mode="clip")
    return x


#: (domain, op_type) -> converter.
CONVERTERS: dict[tuple[str, str], Callable[[_Node], relax.Expr | Sequence[relax.Expr]]] = {
    ("", "ConvInteger"): _conv_integer,
    ("", "MatMulInteger"): _matmul_integer,
    ("", "MatMul"): _matmul,
    ("", "Add"): _elementwise(R.add),
    ("", "Sub"): _elementwise(R.subtract),
    ("", "Mul"): _elementwise(R.multiply),
    ("", "Div"): _div,
    ("", "Mod"): _mod,
    ("", "Pow"): _pow,
    ("", "Neg"): _elementwise(R.negative),
    ("", "Abs"): _elementwise(R.abs),
    ("", "Sign"): _elementwise(R.sign),
    ("", "Cast"): _cast,
    ("", "CastLike"): lambda n: R.astype(n.arg(0), str(n.arg(1).ty.dtype)),
    ("", "Clip"): _clip,
    ("", "Max"): _variadic(R.maximum),
    ("", "Min"): _variadic(R.minimum),
    ("", "Where"): _elementwise(R.where),
    ("", "Equal"): _elementwise(R.equal),
    ("", "Less"): _elementwise(R.less),
    ("", "Greater"): _elementwise(R.greater),
    ("", "Not"): _elementwise(R.logical_not),
    ("", "And"): _elementwise(R.logical_and),
    ("", "Or"): _elementwise(R.logical_or),
    ("", "MaxPool"): _max_pool,
    ("", "ReduceSum"): _reduce(_saturating_sum),
    ("", "ReduceMax"): _reduce(R.max),
    ("", "ReduceMin"): _reduce(R.min),
    ("", "Pad"): _pad,
    ("", "Reshape"): _reshape,
    ("", "Flatten"): _flatten,
    ("", "Transpose"): _transpose,
    ("", "Concat"): _concat,
    ("", "Slice"): _slice,
    ("", "Resize"): _resize,
    ("", "Squeeze"): _squeeze,
    ("", "Unsqueeze"): _unsqueeze,
    ("", "Gather"): _gather,
    ("", "Expand"): _expand,
    ("", "Identity"): lambda n: n.arg(0),
    ("", "Split"): _split,
    ("", "Tile"): _tile,
    (intops.DOMAIN, "Requantize"): _requantize,
    (intops.DOMAIN, "LookupTable"): _lookup_table,
    (intops.DOMAIN, "ShiftLeft"): _shift(R.left_shift),
    (intops.DOMAIN, "ShiftRight"): _shift(R.right_shift),
}


def _key(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def _check_supported(graph: onnx.GraphProto) -> None:
    unsupported = sorted(
        {(n.domain, n.op_type, n.name or n.output[0]) for n in graph.node if _key(n) not in CONVERTERS}
    )
    if unsupported:
        rows = "\n  ".join(f"{d + '::' if d else ''}{op} (node {name!r})" for d, op, name in unsupported)
        raise TargetError(
            f"{len(unsupported)} node(s) have no lowering to TVM Relax:\n  {rows}\n"
            f"supported ops: {', '.join(sorted(op for _, op in CONVERTERS))}"
        )


def _input_var(value: onnx.ValueInfoProto) -> relax.Var:
    tensor_type = value.type.tensor_type
    dims = tensor_type.shape.dim
    if not tensor_type.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
        raise TargetError(f"graph input {value.name!r} has no static shape")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return relax.Var(_identifier(value.name), relax.TensorType([d.dim_value for d in dims], dtype))


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name) or "_"


def _convert(node: _Node, converters: Mapping) -> list[relax.Expr]:
    try:
        results = converters[_key(node.proto)](node)
        results = list(results) if isinstance(results, Sequence) else [results]
        names = (node.absorbed or [node.proto])[-1].output
        return [node.bb.emit(r, _identifier(name)) for r, name in zip(results, names, strict=True)]
    except QcError:
        raise
    except Exception as err:  # TVM type inference rejects the node: report it as this node's problem
        raise node.fail(f"cannot lower to Relax: {type(err).__name__}: {err}") from err


def lower(region: onnx.ModelProto, kernels: Mapping | None = None) -> tvm.IRModule:
    """Build the Relax module ``main(*graph inputs) -> output | (outputs...)`` for an integer region.

    ``kernels`` maps ``(domain, op_type)`` to a target's own converter (e.g. sdot kernels), replacing the
    generic one; it may only replace ops :data:`CONVERTERS` supports, so the op set is the same everywhere.
    A converter may fuse the chain of sole consumers after its node (:meth:`_Node.absorb`, e.g. bias Add
    and ``qc.Requantize`` into a GEMM epilogue); absorbed nodes are not lowered again.
    Raises :class:`TargetError` listing every unsupported node at once, or naming the node that a converter
    (or TVM's type inference) rejects.
    """
    unknown = sorted(set(kernels or {}) - set(CONVERTERS))
    if unknown:
        raise TargetError(f"kernel overrides for ops the lowering does not support: {unknown}")
    converters = {**CONVERTERS, **(kernels or {})}
    graph = region.graph
    _check_supported(graph)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    env: dict[str, relax.Expr] = {v.name: _input_var(v) for v in graph.input if v.name not in consts}
    params = list(env.values())
    producers = {out: proto for proto in graph.node for out in proto.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for proto in graph.node:
        for name in dict.fromkeys(proto.input):
            consumers.setdefault(name, []).append(proto)
    for value in graph.output:  # a graph output has a reader outside: never absorbed into a kernel
        consumers.setdefault(value.name, []).append(onnx.NodeProto())
    absorbed: set[tuple[str, ...]] = set()  # by outputs: protobuf wrappers are not stable objects
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            for proto in graph.node:
                if tuple(proto.output) in absorbed:
                    continue
                node = _Node(proto, bb, env, consts, producers, consumers)
                results = _convert(node, converters)
                absorbed.update(tuple(p.output) for p in node.absorbed)
                env.update(zip((node.absorbed or [proto])[-1].output, results, strict=True))
            outputs = [env[v.name] if v.name in env else _const(consts[v.name]) for v in graph.output]
            result = bb.emit_output(outputs[0] if len(outputs) == 1 else relax.Tuple(outputs))
        bb.emit_func_output(result)
    return bb.get()
