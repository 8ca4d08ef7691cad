"""Converters that lower ``MatMulInteger`` / ``ConvInteger`` with their epilogue onto the int8 kernels of
:mod:`qcompiler.targets.int8_kernels`, for any target whose capability table names a :class:`DotProduct`,
or onto the AMX tile kernels of :mod:`qcompiler.targets.amx_kernels` (a :class:`TileProduct`: GEMMs and
convolutions of enough input channels; the rest on its vector instruction).

The converter fuses the chain of sole consumers that the integer passes emit after a GEMM or convolution:

    ``MatMulInteger | ConvInteger`` -> [``Add`` of a constant int32 per-channel bias]
    -> [``qc.Requantize`` with constant per-channel multiplier/shift and scalar zero point and clamp]

into one kernel, so nothing in between reaches memory. A constant weight picks the target's instruction for
its values (:meth:`DotProduct.for_weights`: on AVX2, weights of up to 7 bits run on ``vpmaddubsw``). Anything that does not fit (a non-constant or
non-int8 weight, zero-point operands, grouped convolutions, a Requantize to a wider type) is lowered by the
generic converters instead: the result is the same integers either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import tvm
from tvm import relax

from qcompiler import intops
from qcompiler.targets import relax_lowering
from qcompiler.targets.amx_kernels import AMX_CONV_TILE, TileProduct, amx_conv2d_func, pack_amx_conv_weight
from qcompiler.targets.int8_kernels import (
    ConvGeometry,
    DotProduct,
    conv2d_func,
    conv_grid,
    depthwise_conv2d_func,
    depthwise_tile,
    high_word_shifts,
    pack_conv_input_func,
    pack_conv_weight,
    pack_depthwise_weight,
    pack_gemm_operand_func,
    pack_gemm_weight,
    pad_columns_func,
    requant_constants,
    weight_pair_magnitude,
)

__all__ = ["int8_kernels"]

R = relax.op
_Node = relax_lowering._Node
_const = relax_lowering._const
_shape = relax_lowering._shape

#: the generic converters, captured before any override is installed (fallbacks call these).
_GENERIC = dict(relax_lowering.CONVERTERS)

_OUTPUT_DTYPES = {"uint8", "int8"}


class _Epilogue:
    """Per-channel bias and requantization absorbed from the nodes after a GEMM/convolution."""

    def __init__(self, channels: int):
        self.bias = np.zeros(channels, np.int64)
        self.requant_dtype: str | None = None
        self.bounds = np.zeros(3, np.int64)  # (zp, qmin, qmax)
        self.multiplier = np.zeros(channels, np.int64)
        self.shift = np.ones(channels, np.int64)

    @property
    def high_word(self) -> bool:
        """Whether the kernel's epilogue takes the 32-bit form (every shift >= 33; see ``_epilogue``)."""
        return self.requant_dtype is not None and high_word_shifts(self.shift)


def _per_channel(value: np.ndarray | None, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``value`` as a ``[channels]`` vector if it broadcasts against a rank-``rank`` output only along
    ``axis`` (or is a scalar), else None."""
    if value is None or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.int64)


def _scalar(value: np.ndarray | None) -> int | None:
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _absorb_epilogue(n: _Node, rank: int, axis: int, channels: int) -> _Epilogue:
    """Absorb the bias Add and the Requantize after ``n`` where they fit (see the module docstring)."""
    epilogue = _Epilogue(channels)
    node = n.sole_consumer()
    if node is not None and (node.domain, node.op_type) in (("", "Add"), ("ai.onnx", "Add")):
        last = (n.absorbed or [n.proto])[-1].output[0]
        other = [i for i, name in enumerate(node.input) if name != last]
        bias = _per_channel(n.const_operand(node, other[0]), rank, axis, channels) if len(other) == 1 else None
        if bias is not None and n.const_operand(node, other[0]).dtype == np.int32:
            epilogue.bias = bias
            n.absorb(node)
            node = n.sole_consumer()
    if node is None or (node.domain, node.op_type) != (intops.DOMAIN, "Requantize"):
        return epilogue
    multiplier, shift = (_per_channel(n.const_operand(node, i), rank, axis, channels) for i in (1, 2))
    zero_point, qmin, qmax = (_scalar(n.const_operand(node, i)) for i in (3, 4, 5))
    to = onnx.helper.tensor_dtype_to_np_dtype(next(a.i for a in node.attribute if a.name == "to")).name
    if (
        multiplier is None or shift is None or None in (zero_point, qmin, qmax)
        or to not in _OUTPUT_DTYPES or np.any(shift < 1) or np.any(shift > 62)
        or np.any(np.abs(multiplier) >= 2**31)  # the kernels multiply 32 x 32 -> 64 bits
    ):
        return epilogue
    epilogue.multiplier, epilogue.shift = multiplier, shift
    epilogue.requant_dtype, epilogue.bounds = to, np.array([zero_point, qmin, qmax], np.int64)
    n.absorb(node)
    return epilogue


def _requant_args(epilogue: _Epilogue, padded: int) -> list[relax.Expr]:
    """``mult`` (int32), ``half`` and ``shift`` (:func:`requant_constants`), each padded to ``padded``
    channels, and ``bounds``."""
    half, shift = requant_constants(epilogue.shift, epilogue.high_word)

    def pad(values: np.ndarray, dtype, fill: int = 0) -> relax.Expr:
        out = np.full(padded, fill, dtype)
        out[: values.size] = values
        return _const(out)

    # padded channels: the smallest shift of either form (their outputs are cropped away)
    return [pad(epilogue.multiplier, np.int32), pad(half, half.dtype, 1), pad(shift, shift.dtype, 1),
            _const(epilogue.bounds)]


def _column_corr(epilogue: _Epilogue, correction: np.ndarray, padded: int) -> np.ndarray:
    """``bias + correction`` per output channel as int32 (wrapping, as the accumulator does), zero-padded."""
    out = np.zeros(padded, np.int32)
    out[: correction.size] = ((epilogue.bias + correction) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    return out


def _fits(n: _Node) -> bool:
    """Constant int8 weight, int8/uint8 activation, no zero-point operands."""
    return (
        not (n.has(2) or n.has(3))
        and n.is_const(1)
        and n.const(1).dtype == np.int8
        and str(n.arg(0).ty.dtype) in ("int8", "uint8")
    )


def _call(n: _Node, func: tvm.tirx.PrimFunc, args: list, shape: list[int], dtype: str) -> relax.Expr:
    """``call_tir`` of ``func`` (added once per module: equal kernels share one symbol, a different kernel
    under a symbol already taken gets a fresh one)."""
    gv = n.bb.add_func(func, func.attrs["global_symbol"])
    if gv.name_hint != func.attrs["global_symbol"]:
        n.bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return n.emit(relax.call_tir(gv, args, relax.TensorType(shape, dtype)))


def _symbol(dot: DotProduct | TileProduct, kind: str, *parts) -> str:
    return "_".join([f"qc_{dot.name.replace('-', '_')}_{kind}", *(str(p) for p in parts)])


def _pad_k(n: _Node, a: relax.Expr, k: int, multiple: int) -> relax.Expr:
    """``a[batch, M, K]`` zero-padded to a multiple of ``multiple`` columns."""
    kp = -(-k // multiple) * multiple
    if kp == k:
        return a
    batch, m, _ = _shape(a)
    dtype = str(a.ty.dtype)
    return _call(n, pad_columns_func(batch, m, k, kp, dtype, f"qc_pad_columns_{dtype}_{batch}x{m}x{k}x{kp}"), [a],
                 [batch, m, kp], dtype)


def _gemm_call(
    n: _Node, dot: DotProduct | TileProduct, a: relax.Expr, a_dtype: str, packed: relax.Expr, corr: relax.Expr,
    row_corr: relax.Expr, epilogue: _Epilogue, dims: tuple[int, int, int, int, int], tag: str,
) -> relax.Expr:
    """``out[batch, M, N]`` of ``dot``'s GEMM kernel on an already K-padded ``a[batch, M, Kp]``; ``dims`` is
    ``(batch, weight_batch, M, K, N)``."""
    batch, weight_batch, m, k, cols = dims
    np_ = dot.columns(cols)
    out_dtype = epilogue.requant_dtype or "int32"
    name = _symbol(dot, tag, a_dtype, out_dtype, "x".join(str(d) for d in (batch, m, k, cols)))
    out = _call(
        n,
        dot.gemm(m, k, cols, a_dtype, epilogue.requant_dtype, name, batch, weight_batch, epilogue.high_word),
        [a, packed, corr, row_corr, *_requant_args(epilogue, np_)],
        [batch, m, np_],
        out_dtype,
    )
    return out if np_ == cols else n.emit(R.strided_slice(out, axes=[2], begin=[0], end=[cols]))


def _matmul(dot: DotProduct | TileProduct, n: _Node) -> relax.Expr:
    """``a[..., K] x w[K, N]`` (+ epilogue) on ``dot``'s GEMM kernel, ``a`` flattened to rows."""
    if not _fits(n) or n.const(1).ndim != 2:
        return _GENERIC[("", "MatMulInteger")](n)
    a, w, a_dtype = n.arg(0), n.const(1), str(n.arg(0).ty.dtype)
    (k, cols), lead = w.shape, n.shape(0)[:-1]
    dot = dot.for_gemm(k).for_weights(weight_pair_magnitude(w, axis=0))
    rows = math.prod(lead)
    epilogue = _absorb_epilogue(n, len(lead) + 1, len(lead), cols)
    np_ = dot.columns(cols)
    correction = -dot.flip_correction(a_dtype) * w.astype(np.int64).sum(axis=0)
    out = _gemm_call(
        n, dot, _pad_k(n, n.emit(R.reshape(a, [1, rows, k])), k, dot.k_multiple), a_dtype,
        _const(pack_gemm_weight(w, dot.lanes, np_, dot.k_multiple)[None]),
        _const(_column_corr(epilogue, correction, np_)[None]),
        _const(np.zeros((1, rows), np.int32)), epilogue, (1, 1, rows, k, cols), "gemm",
    )
    return R.reshape(out, [*lead, cols])


#: largest K of an activation x activation product on the kernels: every partial sum of the corrected
#: form (products up to 255 * 383 per k) then stays inside int32, as the reference's int32 MatMul does.
_MAX_ACTIVATION_K = 4096


def _widened(n: _Node, name: str) -> tuple[relax.Expr, str, int] | None:
    """``(x, dtype, zp)`` when tensor ``name`` is ``Cast(x, to=int32)`` or ``Sub(Cast(x, to=int32), zp)``
    with an 8-bit ``x`` and a constant scalar ``zp`` in [-255, 255]; else None."""
    zero_point, node = 0, n.producer(name)
    if node is not None and (node.domain, node.op_type) in (("", "Sub"), ("ai.onnx", "Sub")):
        value = _scalar(n.const_operand(node, 1))
        if value is None or not -255 <= value <= 255:
            return None
        zero_point, node = value, n.producer(node.input[0])
    if node is None or node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return None
    if next((a.i for a in node.attribute if a.name == "to"), None) != onnx.TensorProto.INT32:
        return None
    x = n.tensor(node.input[0])
    dtype = str(x.ty.dtype)
    return (x, dtype, zero_point) if dtype in ("int8", "uint8") else None


def _activation_matmul(dot: DotProduct | TileProduct, n: _Node) -> relax.Expr:
    """int32 ``MatMul((a - za), (b - zb))`` of two widened 8-bit activations (attention's Q.K^T and A.V) on
    ``dot``'s GEMM kernel, batched over the leading dimensions, ``b`` packed at run time.

    With ``A' = a + fa`` the bytes the instruction reads (``fa`` the sign-flip offset) and ``B' = b - fb``
    (``fb = 128`` for a uint8 ``b``, fed as int8): ``(a - za) = A' - za'`` and ``(b - zb) = B' - zb'`` with
    ``za' = za + fa``, ``zb' = zb - fb``, so ``sum_k (a - za)(b - zb) = sum_k A'B' - zb' sum_k A' - za' sum_k B'
    + K za' zb'``: the kernel adds the per-row and per-column sums (computed beside it, over the real K) in
    its epilogue; the packed ``B'`` is zero in the padded K, so whatever ``A'`` holds there adds nothing.
    """
    operands = [_widened(n, name) for name in n.proto.input]
    shapes = [n.shape(0), n.shape(1)]
    if (
        None in operands or len(shapes[0]) < 2 or len(shapes[1]) < 2
        or shapes[0][:-2] != shapes[1][:-2] or shapes[0][-1] > _MAX_ACTIVATION_K
    ):
        return _GENERIC[("", "MatMul")](n)
    (a, a_dtype, za), (b, b_dtype, zb) = operands
    lead, (m, k), cols = shapes[0][:-2], shapes[0][-2:], shapes[1][-1]
    dot = dot.for_gemm(k)
    batch, np_ = math.prod(lead), dot.columns(cols)
    fa, fb = dot.flip_correction(a_dtype), (128 if b_dtype == "uint8" else 0)
    za, zb = za + fa, zb - fb
    epilogue = _absorb_epilogue(n, len(lead) + 2, len(lead) + 1, cols)
    a3 = n.emit(R.reshape(a, [batch, m, k]))
    b3 = n.emit(R.reshape(b, [batch, k, cols]))
    a_sums = n.emit(R.sum(R.astype(a3, "int32"), axis=[2]))
    b_sums = n.emit(R.sum(R.astype(b3, "int32"), axis=[1]))
    row_corr = n.emit(R.multiply(R.add(a_sums, _const(np.int32(k * fa))), _const(np.int32(-zb))))
    constant = _column_corr(epilogue, np.full(cols, k * za * zb, np.int64), cols)  # bias + K za' zb'
    col_corr = R.add(R.multiply(R.subtract(b_sums, _const(np.int32(k * fb))), _const(np.int32(-za))),
                     _const(constant))
    if np_ != cols:
        col_corr = R.nn.pad(col_corr, pad_width=[0, 0, 0, np_ - cols], pad_value=0)
    packed = _call(
        n,
        pack_gemm_operand_func(batch, k, cols, b_dtype, dot.lanes, _symbol(dot, "pack", b_dtype, batch, k, cols),
                               np_, dot.k_multiple),
        [b3], [batch, np_ // dot.lanes, -(-k // dot.k_multiple) * dot.k_multiple // 4, dot.lanes, 4], "int8",
    )
    out = _gemm_call(
        n, dot, _pad_k(n, a3, k, dot.k_multiple), a_dtype, packed, n.emit(col_corr), row_corr, epilogue,
        (batch, batch, m, k, cols), "batched_gemm",
    )
    return R.reshape(out, [*lead, m, cols])


def _conv(dot: DotProduct | TileProduct, n: _Node) -> relax.Expr:
    """2-D ConvInteger, ``group == 1`` on :func:`conv2d_func` (on AMX tiles :func:`amx_conv2d_func`, from
    :attr:`TileProduct.min_conv_channels` input channels) and depthwise (``group = C = O``) on
    :func:`depthwise_conv2d_func` (padding done while packing the input); other groupings are lowered
    generically."""
    window = relax_lowering._window(n, 2) if len(n.shape(0)) == 4 else None
    if not _fits(n) or n.const(1).ndim != 4 or window is None:
        return _GENERIC[("", "ConvInteger")](n)
    x, w, a_dtype = n.arg(0), n.const(1), str(n.arg(0).ty.dtype)
    b, c, h, wd = n.shape(0)
    group = n.attr("group", 1)
    depthwise = group == c == w.shape[0] and w.shape[1] == 1 and c > 1
    if group != 1 and not depthwise:
        return _GENERIC[("", "ConvInteger")](n)
    if isinstance(dot, TileProduct) and (depthwise or c < dot.min_conv_channels):
        dot = dot.vector
    if not depthwise:
        dot = dot.for_weights(weight_pair_magnitude(w, axis=1))
    tiled = isinstance(dot, TileProduct)
    geometry = ConvGeometry(
        b, c, h, wd, w.shape[0], (w.shape[2], w.shape[3]),
        tuple(int(v) for v in window["strides"]), tuple(int(v) for v in window["dilation"]),
        tuple(int(v) for v in window["padding"]),
    )
    (oh, ow), wq = geometry.out_size, geometry.plane[1]
    tile = AMX_CONV_TILE if tiled else depthwise_tile(geometry, dot.lanes) if depthwise else None
    op, pp, flat = conv_grid(geometry, dot.lanes, tile)
    epilogue = _absorb_epilogue(n, 4, 1, w.shape[0])
    out_dtype = epilogue.requant_dtype or "int32"
    tag = "x".join(str(v) for v in (b, c, h, wd, *w.shape, *geometry.strides, *geometry.dilations, *geometry.pads))
    name = _symbol(dot, "depthwise_conv2d" if depthwise else "conv2d", a_dtype, out_dtype, tag)
    sh, sw = geometry.strides
    block = 1 if depthwise else 4
    blocks = 16 * -(-c // 64) if tiled else -(-c // block)
    planes = _call(
        n, pack_conv_input_func(geometry, a_dtype, name + "_pack", block, blocks, flat), [x],
        [b, blocks, sh, sw, flat, block], a_dtype,
    )
    if depthwise:
        func = depthwise_conv2d_func(geometry, a_dtype, dot, epilogue.requant_dtype, name, epilogue.high_word)
        weight = _const(pack_depthwise_weight(w, paired=dot.pair_intrinsic is not None))
    elif tiled:
        func = amx_conv2d_func(geometry, a_dtype, dot, epilogue.requant_dtype, name, epilogue.high_word)
        weight = _const(pack_amx_conv_weight(w, op))
    else:
        func = conv2d_func(geometry, a_dtype, dot, epilogue.requant_dtype, name, epilogue.high_word)
        weight = _const(pack_conv_weight(w, op))
    # the sign-flip correction (0 for depthwise, which widens exactly, and for tiles, which read both types)
    flip = 0 if depthwise else dot.flip_correction(a_dtype)
    correction = -flip * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    grid = _call(
        n, func, [planes, weight, _const(_column_corr(epilogue, correction, op)), *_requant_args(epilogue, op)],
        [b, op, pp], out_dtype,
    )
    grid = n.emit(R.strided_slice(grid, axes=[1, 2], begin=[0, 0], end=[w.shape[0], oh * wq]))
    out = n.emit(R.reshape(grid, [b, w.shape[0], oh, wq]))
    return out if wq == ow else R.strided_slice(out, axes=[3], begin=[0], end=[ow])


def int8_kernels(dot: DotProduct | TileProduct) -> dict[tuple[str, str], Callable[[_Node], relax.Expr]]:
    """Converter overrides putting int8 GEMMs and convolutions on ``dot``'s kernels (AMX tiles: on tiles
    where they gain, else on the vector instruction beside them)."""
    return {
        ("", "MatMulInteger"): lambda n: _matmul(dot, n),
        ("", "ConvInteger"): lambda n: _conv(dot, n),
        ("", "MatMul"): lambda n: _activation_matmul(dot, n),
    }
