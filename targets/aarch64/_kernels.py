"""sdot kernels: int8 MatMulInteger and 2-D ConvInteger as a GEMM tensorized with ``dot_4x4_i8i8s32_sdot``.

Each kernel is one TIR prim func, added to the Relax module with ``bb.add_func`` and called with
``relax.call_tir`` in place of the generic converter. It computes ``out[m, n] = sum_k a[m, k] * w[k, n]`` in
int32, exactly:

* the weight (an initializer) is packed at compile time to ``[Np/4, Kp/4, 4, 4]`` (``wp[no, ko, ni, ki] =
  w[4 ko + ki, 4 no + ni]``), zero-padded to ``Kp``, ``Np``, multiples of 4, so each 4x4 tile is one
  contiguous 16-byte load;
* ``sdot`` multiplies int8 by int8. A uint8 activation is fed as ``a - 128`` (exact in int8) and the
  accumulator gets ``128 * colsum(w)`` back: ``sum a w = sum (a - 128) w + 128 sum w``. int32 arithmetic
  wraps, so the identity holds modulo 2**32 too;
* the reduction padding reads ``0`` (its weights are zero anyway); a convolution's spatial padding reads the
  value 0 of the input dtype (``-128`` after the shift), as ConvInteger without a zero point pads.

Converters fall back to the generic lowering (:data:`~qcompiler.targets.relax_lowering.CONVERTERS`) when a
node does not fit: a non-constant or non-int8 weight, an activation that is not int8/uint8, grouped or non-2-D
convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax, te
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

from qcompiler.targets import relax_lowering

__all__ = ["SDOT_INTRINSIC", "SDOT_KERNELS", "pack_weight", "sdot_conv2d_func", "sdot_matmul_func"]

#: our registration of TVM's ``dot_4x4_i8i8s32_sdot`` (same description and implementation). Importing
#: ``tvm.s_tir.tensor_intrin.arm_cpu`` to get TVM's would cost about 90 s: it builds every SME intrinsic.
SDOT_INTRINSIC = "qc_dot_4x4_i8i8s32_sdot"


@T.prim_func(s_tir=True)
def _sdot_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    """``C[i] += sum_k int32(A[k]) * int32(B[i, k])`` for a 4-vector A and a 4x4 tile B."""
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i, k in T.grid(4, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _sdot_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    """One ``sdot v.4s, b.16b, a.4b[0]``: A's 4 bytes broadcast to each 4-lane group of the 16-byte tile."""
    A = T.match_buffer(a, (4,), "int8", offset_factor=1)
    B = T.match_buffer(b, (4, 4), "int8", offset_factor=1)
    C = T.match_buffer(c, (4,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a_word = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_vec = T.reinterpret(T.broadcast(a_word, 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            a_vec,
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


TensorIntrin.register(SDOT_INTRINSIC, _sdot_desc, _sdot_impl, override=True)

R = relax.op

#: the generic converters, captured before any override is installed (fallbacks call these).
_GENERIC = dict(relax_lowering.CONVERTERS)

#: activation dtype -> value subtracted to make it int8 (the correction adds ``shift * colsum(w)`` back).
_SHIFT = {"int8": 0, "uint8": 128}

#: rows of the output computed together (each row reuses the loaded 4x4 weight tiles).
_ROW_BLOCK = (4, 2, 1)
#: 4-column groups computed together (each reuses the broadcast activation).
_COLUMN_BLOCK = (4, 2, 1)


def _round4(n: int) -> int:
    return -(-n // 4) * 4


def pack_weight(w: np.ndarray) -> np.ndarray:
    """``w[K, N]`` int8 -> ``wp[Np/4, Kp/4, 4, 4]`` with ``wp[no, ko, ni, ki] = w[4 ko + ki, 4 no + ni]``.

    >>> pack_weight(np.arange(6, dtype=np.int8).reshape(2, 3))[0, 0]
    array([[0, 3, 0, 0],
           [1, 4, 0, 0],
           [2, 5, 0, 0],
           [0, 0, 0, 0]], dtype=int8)
    """
    k, n = w.shape
    padded = np.zeros((_round4(k), _round4(n)), np.int8)
    padded[:k, :n] = w
    return np.ascontiguousarray(padded.reshape(_round4(k) // 4, 4, _round4(n) // 4, 4).transpose(2, 0, 3, 1))


def _correction(w: np.ndarray, a_dtype: str) -> np.ndarray:
    """``shift * colsum(w)`` in int32 (wrapping like the accumulator)."""
    return (np.int64(_SHIFT[a_dtype]) * w.astype(np.int64).sum(axis=0)).astype(np.int32)


def _to_int8(value: te.Tensor, a_dtype: str) -> tvm.tirx.PrimExpr:
    return (value.astype("int32") - _SHIFT[a_dtype]).astype("int8")


def _gemm(a_s8: te.Tensor, k: int, n: int) -> tuple[te.Tensor, te.Tensor]:
    """The packed weight placeholder and ``C[M, Np] = a_s8[M, Kp] . w`` in int32."""
    rows, kp = (int(d) for d in a_s8.shape)
    np_ = _round4(n)
    w = te.placeholder((np_ // 4, kp // 4, 4, 4), "int8", name="w")
    r = te.reduce_axis((0, kp), name="k")
    c = te.compute(
        (rows, np_),
        lambda i, j: te.sum(
            a_s8[i, r].astype("int32") * w[j // 4, r // 4, j % 4, r % 4].astype("int32"), axis=r
        ),
        name="C",
    )
    return w, c


def _schedule(func: tvm.tirx.PrimFunc, rows: int, columns: int, name: str) -> tvm.tirx.PrimFunc:
    """Tile C as rows x (4-column groups) x 4, reduce over k in 4s, tensorize the 4x4 tile with sdot."""
    sch = Schedule(func.with_attr("global_symbol", name))
    block = sch.get_sblock("C")
    i, j, r = sch.get_loops(block)
    row_block = next(b for b in _ROW_BLOCK if rows % b == 0)
    column_block = next(b for b in _COLUMN_BLOCK if (columns // 4) % b == 0)
    io, ii = sch.split(i, [None, row_block])
    jo, jj, ji = sch.split(j, [None, column_block, 4])
    ro, ri = sch.split(r, [None, 4])
    sch.reorder(io, jo, ro, ii, jj, ji, ri)
    sch.parallel(io)  # before tensorize: parallelizing a tensorized nest is a ScheduleError
    sch.decompose_reduction(block, ro)
    sch.tensorize(ji, SDOT_INTRINSIC)
    return sch.mod[next(iter(sch.mod.get_global_vars())).name_hint]


def sdot_matmul_func(m: int, k: int, n: int, a_dtype: str, name: str) -> tvm.tirx.PrimFunc:
    """``out[M, N] int32 = a[M, K] . w[K, N] + corr[N]``; args ``(a, packed w, corr, out)``."""
    a = te.placeholder((m, k), a_dtype, name="a")
    kp = _round4(k)
    a_s8 = te.compute(
        (m, kp),
        lambda i, r: te.if_then_else(
            r < k, _to_int8(a[i, tvm.te.min(r, k - 1)], a_dtype), tvm.tirx.const(0, "int8")
        ),
        name="a_s8",
    )
    w, c = _gemm(a_s8, k, n)
    corr = te.placeholder((n,), "int32", name="corr")
    out = te.compute((m, n), lambda i, j: c[i, j] + corr[j], name="out")
    return _schedule(te.create_prim_func([a, w, corr, out]), m, _round4(n), name)


def _conv_geometry(x_shape, w_shape, strides, pads, dilations) -> tuple[int, int]:
    (_, _, h, wd), (_, _, kh, kw) = x_shape, w_shape
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return oh, ow


def sdot_conv2d_func(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
    a_dtype: str,
    name: str,
) -> tvm.tirx.PrimFunc:
    """NCHW ConvInteger (group 1) as im2col + sdot GEMM; args ``(x, packed w, corr, out[B, O, OH, OW])``.

    ``pads`` is ONNX order ``(top, left, bottom, right)``.
    """
    batch, channels, h, wd = x_shape
    o, _, kh, kw = w_shape
    oh, ow = _conv_geometry(x_shape, w_shape, strides, pads, dilations)
    k = channels * kh * kw
    x = te.placeholder(tuple(x_shape), a_dtype, name="x")

    def gather(i, r):
        b, y, z = i // (oh * ow), i % (oh * ow) // ow, i % ow
        c, dy, dx = r // (kh * kw), r % (kh * kw) // kw, r % kw
        row = y * strides[0] - pads[0] + dy * dilations[0]
        col = z * strides[1] - pads[1] + dx * dilations[1]
        inside = tvm.tirx.all(row >= 0, row < h, col >= 0, col < wd)
        clamp = tvm.te.min(tvm.te.max(row, 0), h - 1), tvm.te.min(tvm.te.max(col, 0), wd - 1)
        value = te.if_then_else(
            inside, x[b, tvm.te.min(c, channels - 1), clamp[0], clamp[1]], tvm.tirx.const(0, a_dtype)
        )
        return te.if_then_else(r < k, _to_int8(value, a_dtype), tvm.tirx.const(0, "int8"))

    rows = batch * oh * ow
    a_s8 = te.compute((rows, _round4(k)), gather, name="a_s8")
    w, c = _gemm(a_s8, k, o)
    corr = te.placeholder((o,), "int32", name="corr")
    out = te.compute((batch, o, oh, ow), lambda b, j, y, z: c[(b * oh + y) * ow + z, j] + corr[j], name="out")
    return _schedule(te.create_prim_func([x, w, corr, out]), rows, _round4(o), name)


# ---- converters (relax_lowering._Node -> relax.Expr) ---------------------------------------------------------

Converter = Callable[[relax_lowering._Node], relax.Expr]


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _fits(n: relax_lowering._Node) -> bool:
    """Constant int8 weight, int8/uint8 activation, no zero-point operands."""
    return (
        not (n.has(2) or n.has(3))
        and n.is_const(1)
        and n.const(1).dtype == np.int8
        and _dtype(n.arg(0)) in _SHIFT
    )


def _call(
    n: relax_lowering._Node, func: tvm.tirx.PrimFunc, name: str, args: list, shape: list[int]
) -> relax.Expr:
    gv = n.bb.add_func(func, name)
    return n.emit(relax.call_tir(gv, args, relax.TensorType(shape, "int32")))


def _matmul(n: relax_lowering._Node) -> relax.Expr:
    """MatMulInteger ``a[..., K] x w[K, N]`` through :func:`sdot_matmul_func` (``a`` flattened to rows)."""
    if not _fits(n) or n.const(1).ndim != 2:
        return _GENERIC[("", "MatMulInteger")](n)
    a, w, a_dtype = n.arg(0), n.const(1), _dtype(n.arg(0))
    (k, cols), lead = w.shape, n.shape(0)[:-1]
    rows = math.prod(lead)
    name = f"qc_sdot_matmul_{a_dtype}_{rows}x{k}x{cols}"
    func = sdot_matmul_func(rows, k, cols, a_dtype, name)
    flat = a if len(lead) == 1 else n.emit(R.reshape(a, [rows, k]))
    out = _call(
        n,
        func,
        name,
        [flat, relax_lowering._const(pack_weight(w)), relax_lowering._const(_correction(w, a_dtype))],
        [rows, cols],
    )
    return out if len(lead) == 1 else R.reshape(out, [*lead, cols])


def _conv(n: relax_lowering._Node) -> relax.Expr:
    """2-D ConvInteger with ``group == 1`` through :func:`sdot_conv2d_func`."""
    if not _fits(n) or n.const(1).ndim != 4 or n.attr("group", 1) != 1 or len(n.shape(0)) != 4:
        return _GENERIC[("", "ConvInteger")](n)
    window = relax_lowering._window(n, 2)
    strides, pads, dilations = (
        tuple(int(v) for v in window[key]) for key in ("strides", "padding", "dilation")
    )
    x_shape, w = tuple(n.shape(0)), n.const(1)
    a_dtype = _dtype(n.arg(0))
    oh, ow = _conv_geometry(x_shape, w.shape, strides, pads, dilations)
    tag = "x".join(str(v) for v in (*x_shape, *w.shape, *strides, *pads, *dilations))
    name = f"qc_sdot_conv2d_{a_dtype}_{tag}"
    func = sdot_conv2d_func(x_shape, w.shape, strides, pads, dilations, a_dtype, name)
    matrix = w.reshape(w.shape[0], -1).T  # [C*KH*KW, O], k = (c, kh, kw) as the im2col gather orders it
    return _call(
        n,
        func,
        name,
        [
            n.arg(0),
            relax_lowering._const(pack_weight(matrix)),
            relax_lowering._const(_correction(matrix, a_dtype)),
        ],
        [x_shape[0], w.shape[0], oh, ow],
    )


#: converter overrides for targets whose ``dot_product`` is "sdot".
SDOT_KERNELS: dict[tuple[str, str], Converter] = {
    ("", "MatMulInteger"): _matmul,
    ("", "ConvInteger"): _conv,
}
