"""Int8 GEMM and convolution kernels on Intel AMX tiles (``tdpb[su][su]d``), with the fused requantization
epilogue of :mod:`qcompiler.targets.int8_kernels` (same arguments, same integers).

One AMX instruction ``C += A . B`` multiplies a tile ``A[16 rows, 64 bytes]`` by ``B[16 rows, 64 bytes]``
read as 16 quads of 4 bytes: ``C[r, c] += sum_{q<16, t<4} A[r, 4q + t] * B[q, 4c + t]`` over int32 ``C[16,
16]``, wrapping modulo 2**32 as ``vpdpbusd`` does. Each operand is signed or unsigned by the instruction
chosen (``tdpbusd``: A uint8, B int8; ``tdpbssd``: both int8; ``tdpbsud``: A int8, B uint8), so activations
of either 8-bit type are read as they are: no sign flip, no correction term.

* **GEMM** ``a[M, K] x w[K, N]``: A is 16 rows of ``a`` (K padded to a multiple of 64 by the caller), B is
  the weight packed ``wp[N/16, K/4, 16, 4]`` (:func:`~qcompiler.targets.int8_kernels.pack_gemm_weight`
  with 16 lanes: the layout ``vpdpbusd`` reads). The last row tile may hold fewer than 16 rows: the tile
  configuration says so, and AMX neither reads nor writes the rows past it.
* **Convolution** (NCHW, group 1): A is 16 output channels x 64 input channels of the weight of one tap
  (packed by :func:`pack_amx_conv_weight`); B is 16 channel quads x 16 output pixels of the stride-phase planes of
  :func:`~qcompiler.targets.int8_kernels.pack_conv_input_func` (``xp[.., C/4, sh, sw, F, 4]``: 16
  consecutive pixels of one quad are 64 contiguous bytes, quads one plane apart), so C is ``[channels,
  pixels]``, the output layout.

Each parallel task computes 2 x 2 (or fewer) C tiles over the whole reduction, stores each to a stack
scratch tile and applies the epilogue from there. The tile configuration is per thread, so every task
loads its own (``ldtilecfg``) and releases the tiles at its end. Linux hands out AMX state only to a
process that asks (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, Linux >= 5.16): every kernel
asks first (an idempotent system call, well under a microsecond), so a library runs wherever it is loaded
(Python, the C++ runner, a tuning or RPC worker) without any set-up.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools

import numpy as np
import tvm
from tvm.script import tirx as T

from qcompiler.targets.int8_kernels import (
    AVX512_VNNI,
    SHIFT_DTYPES,
    ConvGeometry,
    DotProduct,
    _ceil,
    _epilogue,
    _kernel_cache,
    conv_grid,
)

__all__ = [
    "AMX_CONV_TILE",
    "AMX_INT8",
    "TileProduct",
    "amx_conv2d_func",
    "amx_gemm_func",
    "amx_permitted",
    "pack_amx_conv_weight",
]

#: x86-64 Linux: ``syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``.
_ARCH_PRCTL, _REQ_XCOMP_PERM, _XTILEDATA = 158, 0x1023, 18
#: tile registers of a task: C tiles 0..3 (``2 i + j``), A tiles 4, 5, B tiles 6, 7.
_C, _A, _B = 0, 4, 6
#: the convolution's C tiles per task: (output channels, pixel tiles of 16).
AMX_CONV_TILE = (32, 2)


@dataclasses.dataclass(frozen=True)
class TileProduct:
    """AMX int8 tiles: K in chunks of :attr:`k_multiple`, 16 int32 columns per tile; :attr:`vector` is the
    dot-product instruction of the same CPU, for the kernels that gain nothing from tiles (depthwise
    convolutions, convolutions of few input channels)."""

    name: str
    vector: DotProduct
    lanes: int = 16
    k_multiple: int = 64
    #: columns (GEMM) and output channels (convolution) are padded to two tiles.
    column_multiple: int = 32
    #: convolutions with fewer input channels stay on :attr:`vector` (padding C to 64 would multiply zeros).
    min_conv_channels: int = 48
    #: GEMMs of at most this K stay on :attr:`vector`: one chunk of tiles does not repay setting them up and
    #: the round trip of the accumulators through memory (measured: attention's K = 32 and 64 run faster
    #: on VNNI, K = 192 faster on tiles).
    max_vector_k: int = 64

    def instruction(self, a_dtype: str, b_dtype: str) -> str:
        """The AMX instruction (LLVM intrinsic name without ``llvm.x86.``) multiplying an ``a_dtype`` A tile
        by a ``b_dtype`` B tile."""
        sign = {"uint8": "u", "int8": "s"}
        return f"tdpb{sign[a_dtype]}{sign[b_dtype]}d"

    # the GEMM protocol of DotProduct, so that the lowering treats both alike

    def flip_correction(self, activation_dtype: str) -> int:
        """0: tiles read activations of either 8-bit type as they are."""
        return 0

    def for_weights(self, pair_magnitude: int) -> TileProduct:
        return self

    def for_gemm(self, k: int) -> TileProduct | DotProduct:
        """The kernels for a GEMM of reduction length ``k``: tiles, or :attr:`vector` up to
        :attr:`max_vector_k`."""
        return self.vector if k <= self.max_vector_k else self

    def columns(self, n: int) -> int:
        """``Np``: ``n`` padded to :attr:`column_multiple`."""
        return self.column_multiple * _ceil(n, self.column_multiple)

    def gemm(self, m: int, k: int, n: int, a_dtype: str, requant_dtype: str | None, name: str, batch: int = 1,
             weight_batch: int = 1, high_word: bool = False) -> tvm.tirx.PrimFunc:
        """The GEMM kernel on tiles (:func:`amx_gemm_func`)."""
        return amx_gemm_func(m, k, n, a_dtype, self, requant_dtype, name, batch, weight_batch, high_word)


#: AMX-INT8 (Sapphire Rapids and later), beside AVX-512 VNNI.
AMX_INT8 = TileProduct("amx-int8", AVX512_VNNI)


@functools.cache
def amx_permitted() -> bool:
    """Whether this process may use AMX tiles (asks the kernel once, as every AMX kernel does on each call;
    a grant lasts for the process)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_ARCH_PRCTL, _REQ_XCOMP_PERM, _XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def _u8(value: int):
    return T.uint8(value)


def _intrin(name: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


@T.macro
def _request_tiles():
    T.evaluate(T.call_extern("int64", "syscall", T.int64(_ARCH_PRCTL), T.int64(_REQ_XCOMP_PERM),
                             T.int64(_XTILEDATA)))


@T.macro
def _configure(cfg, row_tiles, col_tiles, rows0, rows1):
    """Palette 1; every used tile 64 bytes wide; C and A tiles of row tile ``i`` have ``rows_i`` rows, B
    tiles 16 (``cfg``: the 64-byte ``ldtilecfg`` operand)."""
    for byte in range(64):
        cfg[byte] = _u8(0)
    cfg[0] = _u8(1)
    for i in T.unroll(row_tiles):
        for j in T.unroll(col_tiles):
            cfg[16 + 2 * (_C + 2 * i + j)] = _u8(64)
            cfg[48 + _C + 2 * i + j] = T.Cast("uint8", T.Select(i == 0, rows0, rows1))
        cfg[16 + 2 * (_A + i)] = _u8(64)
        cfg[48 + _A + i] = T.Cast("uint8", T.Select(i == 0, rows0, rows1))
    for j in T.unroll(col_tiles):
        cfg[16 + 2 * (_B + j)] = _u8(64)
        cfg[48 + _B + j] = _u8(16)
    _intrin("ldtilecfg", T.address_of(cfg[0]))


def pack_amx_conv_weight(w: np.ndarray, out_channels: int) -> np.ndarray:
    """``w[O, C, KH, KW]`` int8 -> ``wa[Op/16, KH, KW, Cp/64, 16, 64]``, ``wa[oo, dy, dx, cc, oi, ci] = w[16 oo
    + oi, 64 cc + ci, dy, dx]``, zero-padded to ``Op = out_channels`` and ``Cp`` a multiple of 64: every A
    tile is 1 KiB of consecutive bytes, read in the order the kernel reads them."""
    o, c, kh, kw = w.shape
    chunks = _ceil(c, 64)
    padded = np.zeros((out_channels, 64 * chunks, kh, kw), np.int8)
    padded[:o, :c] = w
    tiles = padded.reshape(out_channels // 16, 16, chunks, 64, kh, kw).transpose(0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(tiles)


@_kernel_cache
def amx_gemm_func(
    m: int,
    k: int,
    n: int,
    a_dtype: str,
    tiles: TileProduct,
    requant_dtype: str | None,
    name: str,
    batch: int = 1,
    weight_batch: int = 1,
    high_word: bool = False,
) -> tvm.tirx.PrimFunc:
    """:func:`~qcompiler.targets.int8_kernels.gemm_func` on AMX tiles: same arguments and result, with ``Kp``
    a multiple of 64 and ``Np`` of :attr:`TileProduct.column_multiple`."""
    kp, np_ = tiles.k_multiple * _ceil(k, tiles.k_multiple), tiles.columns(n)
    lanes, chunks = tiles.lanes, kp // tiles.k_multiple
    instruction = tiles.instruction(a_dtype, "int8")
    store = _epilogue(requant_dtype, lanes, channel_lanes=True, high_word=high_word)
    out_dtype = requant_dtype or "int32"
    row_tiles, col_pairs = _ceil(m, 16), np_ // 32
    pair_tasks = row_tiles // 2 * col_pairs
    per_batch = pair_tasks + row_tiles % 2 * col_pairs

    @T.macro
    def task(a, wp, corr, row_corr, mult, half, shift, bounds, out, b, row0, count, col0):
        cfg = T.alloc_buffer((64,), "uint8", scope="global")  # small global: a stack array
        scratch = T.alloc_buffer((16, 16), "int32", scope="global")
        _configure(cfg, count, 2, T.min(m - row0, 16), T.min(m - row0 - 16, 16))
        for i in T.unroll(count):
            for j in T.unroll(2):
                _intrin("tilezero", _u8(_C + 2 * i + j))
        for kc in range(chunks):
            for i in T.unroll(count):
                _intrin("tileloadd64", _u8(_A + i), T.address_of(a[b, row0 + 16 * i, kc * 64]), T.int64(kp))
            for j in T.unroll(2):
                _intrin("tileloadd64", _u8(_B + j),
                        T.address_of(wp[b % weight_batch, col0 // 16 + j, kc * 16, 0, 0]), T.int64(64))
            for i in T.unroll(count):
                for j in T.unroll(2):
                    _intrin(instruction, _u8(_C + 2 * i + j), _u8(_A + i), _u8(_B + j))
        for i in T.unroll(count):
            for j in T.unroll(2):
                _intrin("tilestored64", _u8(_C + 2 * i + j), T.address_of(scratch[0, 0]), T.int64(64))
                for r in range(T.min(m - row0 - 16 * i, 16)):
                    store(
                        out, [b, row0 + 16 * i + r, T.ramp(col0 + 16 * j, 1, lanes)],
                        scratch[r, T.ramp(0, 1, lanes)] + corr[b % weight_batch, T.ramp(col0 + 16 * j, 1, lanes)]
                        + T.broadcast(row_corr[b, row0 + 16 * i + r], lanes),
                        mult, half, shift, bounds, T.ramp(col0 + 16 * j, 1, lanes),
                    )
        _intrin("tilerelease")

    @T.prim_func(s_tir=True)
    def gemm(
        a: T.Buffer((batch, m, kp), a_dtype),
        wp: T.Buffer((weight_batch, np_ // lanes, kp // 4, lanes, 4), "int8"),
        corr: T.Buffer((weight_batch, np_), "int32"),
        row_corr: T.Buffer((batch, m), "int32"),
        mult: T.Buffer((np_,), "int32"),
        half: T.Buffer((np_,), SHIFT_DTYPES[high_word]),
        shift: T.Buffer((np_,), SHIFT_DTYPES[high_word]),
        bounds: T.Buffer((3,), "int64"),
        out: T.Buffer((batch, m, np_), out_dtype),
    ):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        _request_tiles()
        for bt in T.parallel(batch * per_batch):
            if bt % per_batch < pair_tasks:
                task(a, wp, corr, row_corr, mult, half, shift, bounds, out, bt // per_batch,
                     bt % per_batch // col_pairs * 32, 2, bt % per_batch % col_pairs * 32)
            else:
                task(a, wp, corr, row_corr, mult, half, shift, bounds, out, bt // per_batch,
                     (row_tiles - 1) * 16, 1, (bt % per_batch - pair_tasks) * 32)

    return gemm


@_kernel_cache
def amx_conv2d_func(
    geometry: ConvGeometry, a_dtype: str, tiles: TileProduct, requant_dtype: str | None, name: str,
    high_word: bool = False,
) -> tvm.tirx.PrimFunc:
    """:func:`~qcompiler.targets.int8_kernels.conv2d_func` on AMX tiles: args ``(xp, wa, corr, mult, half,
    shift, bounds, out)``, ``xp`` packed with ``C/4`` padded to a multiple of 16 quads and the flat length of
    :func:`~qcompiler.targets.int8_kernels.conv_grid` at :data:`AMX_CONV_TILE`, ``wa`` from
    :func:`pack_amx_conv_weight`; ``out[B, Op, Pp]`` on the padded grid as there."""
    g, lanes = geometry, tiles.lanes
    (kh, kw), (sh, sw), (dh, dw), wq = g.kernel, g.strides, g.dilations, g.plane[1]
    quads = 16 * _ceil(g.channels, 64)
    op, pp, flat = conv_grid(g, lanes, AMX_CONV_TILE)
    instruction = tiles.instruction("int8", a_dtype)
    store = _epilogue(requant_dtype, lanes, channel_lanes=False, high_word=high_word)
    out_dtype = requant_dtype or "int32"
    channel_pairs, pixel_pairs = op // 32, pp // 32

    @T.prim_func(s_tir=True)
    def conv(
        xp: T.Buffer((g.batch, quads, sh, sw, flat, 4), a_dtype),
        wa: T.Buffer((op // 16, kh, kw, quads // 16, 16, 64), "int8"),
        corr: T.Buffer((op,), "int32"),
        mult: T.Buffer((op,), "int32"),
        half: T.Buffer((op,), SHIFT_DTYPES[high_word]),
        shift: T.Buffer((op,), SHIFT_DTYPES[high_word]),
        bounds: T.Buffer((3,), "int64"),
        out: T.Buffer((g.batch, op, pp), out_dtype),
    ):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        _request_tiles()
        for t in T.parallel(g.batch * channel_pairs * pixel_pairs):
            cfg = T.alloc_buffer((64,), "uint8", scope="global")  # small global: a stack array
            scratch = T.alloc_buffer((16, 16), "int32", scope="global")
            _configure(cfg, 2, 2, 16, 16)
            for i in T.unroll(2):
                for j in T.unroll(2):
                    _intrin("tilezero", _u8(_C + 2 * i + j))
            for qc in range(quads // 16):
                for dy in range(kh):
                    for dx in range(kw):
                        for i in T.unroll(2):
                            _intrin("tileloadd64", _u8(_A + i),
                                    T.address_of(wa[t // pixel_pairs % channel_pairs * 2 + i, dy, dx, qc, 0, 0]),
                                    T.int64(64))
                        for j in T.unroll(2):
                            _intrin("tileloadd64", _u8(_B + j),
                                    T.address_of(xp[t // (channel_pairs * pixel_pairs), qc * 16, dy * dh % sh,
                                                    dx * dw % sw, t % pixel_pairs * 32 + 16 * j
                                                    + dy * dh // sh * wq + dx * dw // sw, 0]),
                                    T.int64(sh * sw * flat * 4))
                        for i in T.unroll(2):
                            for j in T.unroll(2):
                                _intrin(instruction, _u8(_C + 2 * i + j), _u8(_A + i), _u8(_B + j))
            for i in T.unroll(2):
                for j in T.unroll(2):
                    _intrin("tilestored64", _u8(_C + 2 * i + j), T.address_of(scratch[0, 0]), T.int64(64))
                    for r in range(16):
                        store(out, [t // (channel_pairs * pixel_pairs), t // pixel_pairs % channel_pairs * 32 + 16 * i + r,
                                    T.ramp(t % pixel_pairs * 32 + 16 * j, 1, lanes)],
                              scratch[r, T.ramp(0, 1, lanes)]
                              + T.broadcast(corr[t // pixel_pairs % channel_pairs * 32 + 16 * i + r], lanes),
                              mult, half, shift, bounds, t // pixel_pairs % channel_pairs * 32 + 16 * i + r)
            _intrin("tilerelease")

    return conv
