"""Converters that lower ``MatMulInteger`` / ``ConvInteger`` with their epilogue onto the int8 kernels of
:mod:`qcompiler.targets.int8_kernels`, for any target whose capability table names a :class:`DotProduct`.

The converter fuses the chain of sole consumers that the integer passes emit after a GEMM or convolution:

    ``MatMulInteger | ConvInteger`` -> [``Add`` of a constant int32 per-channel bias]
    -> [``qc.Requantize`` with constant per-channel multiplier/shift and scalar zero point and clamp]

into one kernel, so nothing in between reaches memory. Anything that does not fit (a non-constant or
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
from qcompiler.targets.int8_kernels import (
    ConvGeometry,
    DotProduct,
    Requant,
    conv2d_func,
    conv_grid,
    gemm_func,
    pack_conv_input_func,
    pack_conv_weight,
    pack_gemm_weight,
)

__all__ = ["int8_kernels"]

R = relax.op
_Node = relax_lowering._Node
_const = relax_lowering._const

#: the generic converters, captured before any override is installed (fallbacks call these).
_GENERIC = dict(relax_lowering.CONVERTERS)

_OUTPUT_DTYPES = {"uint8", "int8"}


class _Epilogue:
    """Per-channel bias and requantization absorbed from the nodes after a GEMM/convolution."""

    def __init__(self, channels: int):
        self.bias = np.zeros(channels, np.int64)
        self.requant: Requant | None = None
        self.multiplier = np.zeros(channels, np.int64)
        self.shift = np.ones(channels, np.int64)


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
    ):
        return epilogue
    epilogue.multiplier, epilogue.shift = multiplier, shift
    epilogue.requant = Requant(zero_point, qmin, qmax, to)
    n.absorb(node)
    return epilogue


def _epilogue_args(epilogue: _Epilogue, correction: np.ndarray, padded: int) -> list[relax.Expr]:
    """``corr, mult, half, shift`` constants, each padded to ``padded`` channels."""

    def pad(values: np.ndarray, dtype, fill: int = 0) -> relax.Expr:
        out = np.full(padded, fill, dtype)
        out[: values.size] = values
        return _const(out)

    corr = ((epilogue.bias + correction) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)  # int32 wrap
    return [
        pad(corr, np.int32),
        pad(epilogue.multiplier, np.int64),
        pad(np.left_shift(np.int64(1), epilogue.shift - 1), np.int64),
        pad(epilogue.shift, np.int64, 1),
    ]


def _fits(n: _Node) -> bool:
    """Constant int8 weight, int8/uint8 activation, no zero-point operands."""
    return (
        not (n.has(2) or n.has(3))
        and n.is_const(1)
        and n.const(1).dtype == np.int8
        and str(n.arg(0).ty.dtype) in ("int8", "uint8")
    )


def _call(n: _Node, func: tvm.tirx.PrimFunc, args: list, shape: list[int], dtype: str) -> relax.Expr:
    """``call_tir`` of ``func``; kernels that differ only in baked constants get distinct symbols."""
    gv = n.bb.add_func(func, func.attrs["global_symbol"])
    if gv.name_hint != func.attrs["global_symbol"]:
        n.bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return n.emit(relax.call_tir(gv, args, relax.TensorType(shape, dtype)))


def _matmul(dot: DotProduct, n: _Node) -> relax.Expr:
    """``a[..., K] x w[K, N]`` (+ epilogue) on :func:`gemm_func`, ``a`` flattened to rows."""
    if not _fits(n) or n.const(1).ndim != 2:
        return _GENERIC[("", "MatMulInteger")](n)
    a, w, a_dtype = n.arg(0), n.const(1), str(n.arg(0).ty.dtype)
    (k, cols), lead = w.shape, n.shape(0)[:-1]
    rows, kp, np_ = math.prod(lead), -(-k // 4) * 4, -(-cols // dot.lanes) * dot.lanes
    epilogue = _absorb_epilogue(n, len(lead) + 1, len(lead), cols)
    out_dtype = epilogue.requant.dtype if epilogue.requant else "int32"
    name = f"qc_{dot.name.replace('-', '_')}_gemm_{a_dtype}_{out_dtype}_{rows}x{k}x{cols}"
    flat = a if len(lead) == 1 else n.emit(R.reshape(a, [rows, k]))
    if kp != k:
        flat = n.emit(R.nn.pad(flat, pad_width=[0, 0, 0, kp - k], pad_value=0))
    correction = -dot.flip_correction(a_dtype) * w.astype(np.int64).sum(axis=0)
    out = _call(
        n,
        gemm_func(rows, k, cols, a_dtype, dot, epilogue.requant, name),
        [flat, _const(pack_gemm_weight(w, dot.lanes)), *_epilogue_args(epilogue, correction, np_)],
        [rows, np_],
        out_dtype,
    )
    if np_ != cols:
        out = n.emit(R.strided_slice(out, axes=[1], begin=[0], end=[cols]))
    return out if len(lead) == 1 else R.reshape(out, [*lead, cols])


def _conv(dot: DotProduct, n: _Node) -> relax.Expr:
    """2-D ConvInteger with ``group == 1`` and no padding (qc pads explicitly) on :func:`conv2d_func`."""
    window = relax_lowering._window(n, 2) if len(n.shape(0)) == 4 else None
    if (
        not _fits(n) or n.const(1).ndim != 4 or window is None
        or n.attr("group", 1) != 1 or any(int(p) for p in window["padding"])
    ):
        return _GENERIC[("", "ConvInteger")](n)
    x, w, a_dtype = n.arg(0), n.const(1), str(n.arg(0).ty.dtype)
    b, c, h, wd = n.shape(0)
    geometry = ConvGeometry(
        b, c, h, wd, w.shape[0], (w.shape[2], w.shape[3]),
        tuple(int(v) for v in window["strides"]), tuple(int(v) for v in window["dilation"]),
    )
    (oh, ow), (hq, wq) = geometry.out_size, geometry.plane
    op, pp, flat = conv_grid(geometry, dot.lanes)
    epilogue = _absorb_epilogue(n, 4, 1, w.shape[0])
    out_dtype = epilogue.requant.dtype if epilogue.requant else "int32"
    tag = "x".join(str(v) for v in (b, c, h, wd, *w.shape, *geometry.strides, *geometry.dilations))
    name = f"qc_{dot.name.replace('-', '_')}_conv2d_{a_dtype}_{out_dtype}_{tag}"
    sh, sw = geometry.strides
    planes = _call(
        n, pack_conv_input_func(geometry, a_dtype, dot.lanes, name + "_pack"), [x],
        [b, -(-c // 4), sh, sw, flat, 4], a_dtype,
    )
    correction = -dot.flip_correction(a_dtype) * w.reshape(w.shape[0], -1).astype(np.int64).sum(axis=1)
    grid = _call(
        n,
        conv2d_func(geometry, a_dtype, dot, epilogue.requant, name),
        [planes, _const(pack_conv_weight(w)), *_epilogue_args(epilogue, correction, op)],
        [b, op, pp],
        out_dtype,
    )
    grid = n.emit(R.strided_slice(grid, axes=[1, 2], begin=[0, 0], end=[w.shape[0], oh * wq]))
    out = n.emit(R.reshape(grid, [b, w.shape[0], oh, wq]))
    return out if wq == ow else R.strided_slice(out, axes=[3], begin=[0], end=[ow])


def int8_kernels(dot: DotProduct) -> dict[tuple[str, str], Callable[[_Node], relax.Expr]]:
    """Converter overrides putting int8 GEMMs and convolutions on ``dot``'s kernels."""
    return {
        ("", "MatMulInteger"): lambda n: _matmul(dot, n),
        ("", "ConvInteger"): lambda n: _conv(dot, n),
    }
