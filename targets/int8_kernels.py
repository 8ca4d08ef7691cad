"""Register-blocked int8 GEMM and convolution kernels with a fused requantization epilogue, one family for
every CPU with a 4-way int8 dot-product instruction (x86 ``vpdpbusd``, ARM ``sdot``) or, on AVX2, its exact
emulation by ``vpmaddwd`` (by ``vpmaddubsw`` for weights small enough that it cannot saturate).

A :class:`DotProduct` names the instruction: ``acc[l] += sum_{t<4} a[4l + t] * b[4l + t]`` over ``lanes``
int32 lanes, ``a`` of dtype :attr:`DotProduct.a_dtype` and ``b`` int8. The kernels are plain TIR loop nests
written here (no schedule search): the accumulator tile lives in registers, the reduction is the innermost
loop, the outer tile loop runs in parallel, and the epilogue applies, per output channel,

    ``v = acc + corr``; with a requantization: ``y = clamp(((int64(v) * mult + half) >> shift) + zp,
    qmin, qmax)`` cast to the output dtype (``half = 2**(shift - 1)``),

which is ``MatMulInteger/ConvInteger -> Add(bias) -> qc.Requantize`` exactly, so the int32 accumulators
never reach memory and no int64 tensor exists.

Exactness of the operand handling:

* An activation whose dtype is not ``a_dtype`` is fed with its sign bit flipped (``a ^ 0x80``): as the other
  8-bit type that is ``a + 128`` (int8 -> uint8) or ``a - 128`` (uint8 -> int8), exactly. ``corr`` gets
  ``-128 * colsum(w)`` or ``+128 * colsum(w)`` back; int32 arithmetic wraps, so the identity holds modulo
  2**32 too, as the accumulator does.
* Weights are zero-padded to whole tiles (K to a multiple of 4, channels to whole vectors), so padded
  positions add ``x * 0`` for whatever ``x`` is read there.

Two layouts, one per operator:

* **GEMM** (``MatMulInteger``, activation ``a[M, K]`` row-major): 4 bytes of a row are broadcast to every
  lane, the weight is packed ``wp[N/L, K/4, L, 4]`` so one vector holds L columns x 4 k. Output lanes run
  along N.
* **Convolution** (NCHW, group 1, any kernel, stride, dilation): the input is repacked into stride phases
  ``xp[C/4, sh, sw, Hq * Wq (+pad), 4]`` (``xp[c4, ph, pw, i * Wq + j, t] = x[4 c4 + t, i sh + ph,
  j sw + pw]``, zero outside). Tap ``(dy, dx)`` of output pixel ``p = y * Wq + x`` then reads plane
  ``((dy dh) % sh, (dx dw) % sw)`` at ``p + ((dy dh) // sh) * Wq + (dx dw) // sw``: L consecutive output
  pixels read one contiguous vector, whatever the stride. The weight of one output channel is broadcast.
  Output lanes run along the pixels of that padded grid ``[OH, Wq]``; the caller crops it to ``[OH, OW]``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

__all__ = [
    "AVX2",
    "AVX2_NARROW",
    "AVX512_VNNI",
    "AVX_VNNI",
    "ConvGeometry",
    "DotProduct",
    "NarrowPairwiseDotProduct",
    "PairwiseDotProduct",
    "SDOT",
    "SHIFT_DTYPES",
    "conv2d_func",
    "conv_grid",
    "conv_tile",
    "depthwise_conv2d_func",
    "depthwise_tile",
    "gemm_columns",
    "gemm_func",
    "high_word_shifts",
    "pack_conv_input_func",
    "pack_conv_weight",
    "pack_depthwise_weight",
    "pack_gemm_operand_func",
    "pack_gemm_weight",
    "pad_columns_func",
    "requant_constants",
    "weight_pair_magnitude",
]


@dataclasses.dataclass(frozen=True)
class DotProduct:
    """A 4-way int8 dot-product instruction over ``lanes`` int32 lanes (``a_dtype`` x int8 -> int32)."""

    name: str
    lanes: int
    a_dtype: str
    llvm_intrinsic: str
    #: the 2-way int16 multiply-add the depthwise kernel pairs taps on (``vpdpwssd``, which accumulates, or
    #: ``vpmaddwd``); None: it multiplies widened int32 lanes instead.
    pair_intrinsic: str | None = None
    #: the GEMM's K is padded to a multiple of this (one instruction's bytes per lane).
    k_multiple = 4

    @property
    def a_vector(self) -> str:
        """The vector dtype of one operand (4 bytes per lane)."""
        return f"int8x{4 * self.lanes}"

    def flip_correction(self, activation_dtype: str) -> int:
        """What feeding ``a ^ 0x80`` adds to each activation (0 when the dtype is already ``a_dtype``)."""
        if activation_dtype == self.a_dtype:
            return 0
        return 128 if activation_dtype == "int8" else -128

    def for_weights(self, pair_magnitude: int) -> DotProduct:
        """The instruction for a constant weight whose largest ``|w[2p]| + |w[2p + 1]|`` over the pairs of
        consecutive reduction positions (K of a GEMM, input channels of a convolution) is
        ``pair_magnitude``: this one, unless a faster one is exact for such weights."""
        return self

    def for_gemm(self, k: int) -> DotProduct:
        """The kernels for a GEMM of reduction length ``k``: this instruction's."""
        return self

    def columns(self, n: int) -> int:
        """``Np``: the padded column count of a GEMM output with ``n`` columns (:func:`gemm_columns`)."""
        return gemm_columns(n, self.lanes)

    def gemm(self, m: int, k: int, n: int, a_dtype: str, requant_dtype: str | None, name: str, batch: int = 1,
             weight_batch: int = 1, high_word: bool = False) -> tvm.tirx.PrimFunc:
        """The GEMM kernel on this instruction (:func:`gemm_func`)."""
        return gemm_func(m, k, n, a_dtype, self, requant_dtype, name, batch, weight_batch, high_word)

    def pair_call(self, acc, x, w):
        """``acc[l] + x[2l] w[2l] + x[2l + 1] w[2l + 1]`` on int16 vectors of ``2 * lanes`` (needs
        :attr:`pair_intrinsic`)."""
        madd = T.llvm_lookup_intrinsic_id(self.pair_intrinsic)
        if "vpdpwssd" in self.pair_intrinsic:
            return T.call_llvm_pure_intrin(madd, acc, x, w, dtype=f"int32x{self.lanes}")
        return acc + T.call_llvm_pure_intrin(madd, x, w, dtype=f"int32x{self.lanes}")

    def call(self, acc, a, b):
        """``acc + dot4(a, b)`` as a TIR expression (``a``, ``b``: byte vectors of :attr:`a_vector`)."""
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(self.llvm_intrinsic), acc, a, b, dtype=f"int32x{self.lanes}"
        )


@dataclasses.dataclass(frozen=True)
class PairwiseDotProduct(DotProduct):
    """The 4-way dot product from a 2-way int16 multiply-add ``m(x, y)[l] = x[2l] y[2l] + x[2l+1] y[2l+1]``
    (``vpmaddwd``; ``a_dtype`` uint8), for CPUs without a 4-way instruction.

    Each 32-bit lane of ``a`` and ``b`` holds bytes ``4l .. 4l+3``, i.e. the 16-bit halves ``2l``, ``2l+1``.
    ``lo(h)`` is the low byte of a half widened to 16 bits (zero-extended for ``a``, sign-extended for
    ``b``), ``hi(h)`` the high byte, so ``m(lo a, lo b)[l] = a[4l] b[4l] + a[4l+2] b[4l+2]`` and
    ``m(hi a, hi b)[l] = a[4l+1] b[4l+1] + a[4l+3] b[4l+3]``, and their sum is the 4-way dot. Exact: the
    operands lie in [0, 255] and [-128, 127], so each ``m`` is at most 2 * 255 * 128 in magnitude (``vpmaddwd``
    only wraps when all four operands are -32768), and ``acc + dot`` wraps modulo 2**32 as ``vpdpbusd`` does.
    (``vpmaddubsw``, the one-instruction u8 x s8 pair product, saturates at 16 bits: not exact in general;
    :class:`NarrowPairwiseDotProduct` uses it where the weights make it exact.)
    """

    def for_weights(self, pair_magnitude: int) -> DotProduct:
        return AVX2_NARROW if pair_magnitude <= AVX2_NARROW.max_pair_magnitude else self

    def call(self, acc, a, b):
        halves = 2 * self.lanes
        ua = T.reinterpret(a, dtype=f"uint16x{halves}")
        sb = T.reinterpret(b, dtype=f"int16x{halves}")
        eight_u, eight_s = T.broadcast(T.uint16(8), halves), T.broadcast(T.int16(8), halves)
        a_lo = T.reinterpret(ua & T.broadcast(T.uint16(0xFF), halves), dtype=f"int16x{halves}")
        a_hi = T.reinterpret(ua >> eight_u, dtype=f"int16x{halves}")
        b_lo, b_hi = (sb << eight_s) >> eight_s, sb >> eight_s
        madd = T.llvm_lookup_intrinsic_id(self.llvm_intrinsic)
        dtype = f"int32x{self.lanes}"
        return (acc + T.call_llvm_pure_intrin(madd, a_lo, b_lo, dtype=dtype)
                + T.call_llvm_pure_intrin(madd, a_hi, b_hi, dtype=dtype))


@dataclasses.dataclass(frozen=True)
class NarrowPairwiseDotProduct(DotProduct):
    """The 4-way dot product as ``vpmaddubsw`` (u8 x s8 byte pairs summed into saturating int16) followed by
    ``vpmaddwd`` with ones (adjacent int16 pairs summed into int32), for constant weights whose pairs are
    small: 3 instructions per vector where :class:`PairwiseDotProduct` needs 8.

    ``vpmaddubsw`` lane ``h`` is ``sat16(a[2h] b[2h] + a[2h+1] b[2h+1])`` and the ``vpmaddwd`` by ones adds
    lanes ``2l`` and ``2l+1``, so the result is the 4-way dot of bytes ``4l .. 4l+3`` whenever nothing
    saturates. With ``a`` in [0, 255] and ``|b[2h]| + |b[2h+1]| <= 128`` (:attr:`max_pair_magnitude`) each
    pair sum is at most ``255 * 128 = 32640 < 2**15`` in magnitude, and each product alone fits as well, so
    the instruction is exact. Every weight of 7 bits or fewer (``|w| <= 64``) qualifies, whatever the
    activations; an 8-bit weight only where its pairs happen to be small. Zero padding adds ``x * 0``.
    """

    #: the largest ``|w[2p]| + |w[2p + 1]|`` for which ``vpmaddubsw`` cannot saturate.
    max_pair_magnitude = 128

    def call(self, acc, a, b):
        halves = 2 * self.lanes
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), a, b,
                                        dtype=f"int16x{halves}")
        return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(self.llvm_intrinsic), pairs,
                                             T.broadcast(T.int16(1), halves), dtype=f"int32x{self.lanes}")


def weight_pair_magnitude(w: np.ndarray, axis: int) -> int:
    """The largest ``|w[.., 2p, ..]| + |w[.., 2p + 1, ..]|`` along ``axis`` (an odd length is zero-padded):
    what :meth:`DotProduct.for_weights` decides on.

    >>> weight_pair_magnitude(np.array([[100, -3], [-28, 5], [7, 0]], np.int8), axis=0)
    128
    """
    magnitude = np.abs(w.astype(np.int32))
    if magnitude.shape[axis] % 2:
        magnitude = np.concatenate([magnitude, np.zeros_like(np.take(magnitude, [0], axis=axis))], axis=axis)
    even = np.take(magnitude, range(0, magnitude.shape[axis], 2), axis=axis)
    odd = np.take(magnitude, range(1, magnitude.shape[axis], 2), axis=axis)
    return int((even + odd).max(initial=0))


#: AVX-512 VNNI ``vpdpbusd zmm``: 16 lanes, uint8 x int8.
AVX512_VNNI = DotProduct("avx512-vnni", 16, "uint8", "llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.vpdpwssd.512")
#: AVX-VNNI ``vpdpbusd ymm`` (VEX-encoded, CPUs without AVX-512): 8 lanes, uint8 x int8.
AVX_VNNI = DotProduct("avx-vnni", 8, "uint8", "llvm.x86.avx512.vpdpbusd.256", "llvm.x86.avx512.vpdpwssd.256")
#: AVX2 ``vpmaddwd ymm`` pairs (:class:`PairwiseDotProduct`): 8 lanes, uint8 x int8.
AVX2 = PairwiseDotProduct("avx2", 8, "uint8", "llvm.x86.avx2.pmadd.wd", "llvm.x86.avx2.pmadd.wd")
#: AVX2 ``vpmaddubsw`` + ``vpmaddwd ymm`` (:class:`NarrowPairwiseDotProduct`): 8 lanes, uint8 x small int8.
AVX2_NARROW = NarrowPairwiseDotProduct("avx2-narrow", 8, "uint8", "llvm.x86.avx2.pmadd.wd",
                                       "llvm.x86.avx2.pmadd.wd")
#: Arm ``sdot v.4s, v.16b, v.16b`` (the dotprod extension): 4 lanes, int8 x int8.
SDOT = DotProduct("sdot", 4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8")


#: (output channels, pixel vectors) convolution register tiles of 12 accumulators, in order of preference.
_CONV_TILES = ((4, 3), (6, 2), (12, 1))
#: the depthwise kernel's tiles: one channel, pixel vectors enough to hide the multiply-add's latency, in
#: order of preference (fewer vectors only where they pad the grid less).
_DEPTHWISE_TILES = ((1, 4), (1, 3), (1, 2))


#: kernel builders are pure functions of hashable arguments: a model with many equal layers (a transformer's
#: blocks) parses each distinct kernel once per process, and the Relax module holds each once.
_kernel_cache = functools.lru_cache(maxsize=512)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def pack_gemm_weight(w: np.ndarray, lanes: int, columns: int | None = None, k_multiple: int = 4) -> np.ndarray:
    """``w[K, N]`` int8 -> ``wp[Np/L, Kp/4, L, 4]``, ``wp[no, ko, ni, t] = w[4 ko + t, L no + ni]``, zero-padded
    to ``Np = columns`` (default :func:`gemm_columns`) and ``Kp`` a multiple of ``k_multiple``.

    >>> pack_gemm_weight(np.arange(6, dtype=np.int8).reshape(2, 3), 4)[0, 0]
    array([[0, 3, 0, 0],
           [1, 4, 0, 0],
           [2, 5, 0, 0],
           [0, 0, 0, 0]], dtype=int8)
    """
    k, n = w.shape
    kp, np_ = k_multiple * _ceil(k, k_multiple), columns or gemm_columns(n, lanes)
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = w
    return np.ascontiguousarray(padded.reshape(kp // 4, 4, np_ // lanes, lanes).transpose(2, 0, 3, 1))


def pack_conv_weight(w: np.ndarray, out_channels: int) -> np.ndarray:
    """``w[O, C, KH, KW]`` int8 -> ``wp[Op, C4, KH, KW, 4]`` (``wp[o, c4, dy, dx, t] = w[o, 4 c4 + t, dy, dx]``),
    zero-padded to ``Op = out_channels`` (from :func:`conv_grid`)."""
    o, c, kh, kw = w.shape
    padded = np.zeros((out_channels, 4 * _ceil(c, 4), kh, kw), np.int8)
    padded[:o, :c] = w
    return np.ascontiguousarray(padded.reshape(padded.shape[0], -1, 4, kh, kw).transpose(0, 1, 3, 4, 2))


#: the dtype of the ``half`` and ``shift`` arguments, by :func:`_epilogue`'s ``high_word``.
SHIFT_DTYPES = {False: "int64", True: "int32"}


def high_word_shifts(shift: np.ndarray) -> bool:
    """Whether every shift allows the 32-bit form of the requantization (:func:`_epilogue`)."""
    return bool(np.all(shift >= 33))


def requant_constants(shift: np.ndarray, high_word: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(half, shift)`` as the epilogue takes them: ``(2**(s - 1), s)`` as int64, or with ``high_word``
    ``(2**(s - 33), s - 32)`` as int32."""
    shift = shift.astype(np.int64)
    if high_word:
        return np.left_shift(1, shift - 33).astype(np.int32), (shift - 32).astype(np.int32)
    return np.left_shift(np.int64(1), shift - 1), shift


def _epilogue(requant_dtype: str | None, lanes: int, channel_lanes: bool, high_word: bool = False):
    """A TIR macro ``store(out, index, v, mult, half, shift, bounds, j)``: the epilogue on ``v = acc + corr``
    for channels ``j``, a ramp when ``channel_lanes`` (GEMM: lanes are channels), else one scalar channel
    (convolution: lanes are pixels); ``index`` is the output index tuple whose last entry is the lane ramp.
    ``bounds = (zp, qmin, qmax)`` is a buffer, not baked in, so that layers differing only in their zero
    point share one kernel.

    ``mult`` is int32 (qc's multipliers have at most 31 bits), so the product is a 32 x 32 -> 64-bit one
    (``vpmuldq``), not a full 64-bit multiply: the same integers, computed in fewer instructions.

    The zero point is added after the clamp, in 8 bits: with ``r = (v * mult + half) >> shift``,
    ``clamp(r + zp, qmin, qmax) = clamp(r, qmin - zp, qmax - zp) + zp`` for all integers, and that sum lies
    in ``[qmin, qmax]``, inside the output dtype, so adding ``zp`` modulo 256 to the truncated byte (as
    uint8: unsigned adds wrap) gives exactly its bits. This saves the two 64-bit adds per vector and
    narrows the clamped value in one step.

    ``high_word`` (every shift ``s >= 33``, :func:`high_word_shifts`): only the product is 64-bit. With
    ``P = v * mult``, floor division by ``2**s`` is floor division by ``2**32`` and then by ``2**(s - 32)``,
    and ``2**(s - 1)`` is a multiple of ``2**32``, so ``(P + 2**(s - 1)) >> s = (hi + 2**(s - 33)) >> (s -
    32)`` with ``hi = P >> 32``, the product's high word. ``|v| <= 2**31`` and ``|mult| < 2**31`` give
    ``|hi| <= 2**30``, and ``2**(s - 33) <= 2**29`` for ``s <= 62``, so the sum cannot overflow int32, and the
    shift, the clamp and the narrowing all run on one int32 vector instead of two int64 ones. ``half`` and
    ``shift`` then hold ``2**(s - 33)`` and ``s - 32`` as int32 (:func:`requant_constants`).
    """
    wide = f"int64x{lanes}" if channel_lanes else "int64"
    scaled_dtype = SHIFT_DTYPES[high_word]

    def scaled(v, mult, half, shift, j):
        """``(v * mult + half) >> shift``, in the form ``high_word`` chooses."""
        product = T.Cast(f"int64x{lanes}", v) * T.Cast(wide, mult[j])
        if high_word:
            return (T.Cast(f"int32x{lanes}", product >> T.broadcast(T.int64(32), lanes)) + half[j]) >> shift[j]
        return (product + half[j]) >> shift[j]

    @T.macro
    def store(out, index, v, mult, half, shift, bounds, j):
        if requant_dtype is None:
            out[index] = v
        else:
            out[index] = T.reinterpret(
                T.Cast(
                    f"uint8x{lanes}",
                    T.max(
                        T.min(scaled(v, mult, half, shift, j),
                              T.broadcast(T.Cast(scaled_dtype, bounds[2] - bounds[0]), lanes)),
                        T.broadcast(T.Cast(scaled_dtype, bounds[1] - bounds[0]), lanes),
                    ),
                ) + T.broadcast(T.Cast("uint8", bounds[0] & T.int64(0xFF)), lanes),
                dtype=f"{requant_dtype}x{lanes}",
            )

    return store


def _broadcast_word(buffer, index, flip: int, lanes: int):
    """4 bytes at ``buffer[index]`` (sign bits flipped when ``flip``) broadcast to every lane, as bytes."""
    word = T.reinterpret(buffer.vload(index, f"{buffer.dtype}x4"), dtype="int32")
    if flip:
        word = word ^ T.int32(-0x7F7F7F80)  # 0x80808080
    return T.reinterpret(T.broadcast(word, lanes), dtype=f"int8x{4 * lanes}")


def _flip_vector(value, flip: int, lanes: int):
    """A byte vector with every sign bit flipped when ``flip``."""
    if not flip:
        return value
    words = T.reinterpret(value, dtype=f"int32x{lanes}") ^ T.broadcast(T.int32(-0x7F7F7F80), lanes)
    return T.reinterpret(words, dtype=f"int8x{4 * lanes}")


#: (rows, column vectors) register tiles of 12 accumulators, in order of preference.
_GEMM_TILES = ((4, 3), (3, 4), (6, 2), (12, 1))


def _gemm_blocking(n: int, lanes: int) -> tuple[int, int, int]:
    """``(mr, nr, blocks)``: the register tile wasting the fewest padded column vectors, and how many
    column vectors the padded output has (a multiple of ``nr``)."""
    vectors = _ceil(n, lanes)
    mr, nr = min(_GEMM_TILES, key=lambda tile: _ceil(vectors, tile[1]) * tile[1])
    return mr, nr, _ceil(vectors, nr) * nr


def gemm_columns(n: int, lanes: int) -> int:
    """``Np``: the padded column count of a GEMM output with ``n`` columns (whole register tiles)."""
    return _gemm_blocking(n, lanes)[2] * lanes


@_kernel_cache
def gemm_func(
    m: int,
    k: int,
    n: int,
    a_dtype: str,
    dot: DotProduct,
    requant_dtype: str | None,
    name: str,
    batch: int = 1,
    weight_batch: int = 1,
    high_word: bool = False,
) -> tvm.tirx.PrimFunc:
    """``out[b, M, Np] = epilogue(a[b] . w[b % weight_batch] + corr[b % weight_batch] + row_corr[b])``.

    Args ``(a, wp, corr, row_corr, mult, half, shift, bounds, out)``: ``a[batch, M, Kp]`` already padded to
    ``Kp = ceil(K / 4) * 4`` columns (the caller pads), ``wp[weight_batch, Np/L, Kp/4, L, 4]`` packed by
    :func:`pack_gemm_weight` (or :func:`pack_gemm_operand_func` at run time), ``corr[weight_batch, Np]``
    per column and ``row_corr[batch, M]`` per row (int32), ``mult[Np]`` (int32), ``half``/``shift[Np]`` and ``bounds = (zp, qmin, qmax)`` (int64). The
    output has ``Np`` (:func:`gemm_columns`) columns (the caller crops to N); without ``requant_dtype`` it is the int32
    ``v`` and the last three arrays are unused.
    """
    lanes = dot.lanes
    kp = 4 * _ceil(k, 4)
    mr, nr, blocks = _gemm_blocking(n, lanes)
    np_ = blocks * lanes
    flip = dot.flip_correction(a_dtype)
    store = _epilogue(requant_dtype, lanes, channel_lanes=True, high_word=high_word)
    out_dtype = requant_dtype or "int32"
    column_tiles, full_rows = blocks // nr, m // mr * mr
    tiles = m // mr * column_tiles
    per_batch = tiles + (m - full_rows) * column_tiles

    @T.macro
    def tile(a, wp, corr, row_corr, mult, half, shift, bounds, out, b, row0, rows, block0):
        acc = T.alloc_buffer((rows, nr, lanes), "int32", scope="global")  # small global: a stack array
        for i, j in T.grid(rows, nr):
            acc[i, j, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
        for ko in range(kp // 4):
            for i in T.unroll(rows):
                for j in T.unroll(nr):
                    acc[i, j, T.ramp(0, 1, lanes)] = dot.call(
                        acc[i, j, T.ramp(0, 1, lanes)],
                        _broadcast_word(a, [b, row0 + i, ko * 4], flip, lanes),
                        wp.vload([b % weight_batch, block0 + j, ko, 0, 0], dot.a_vector),
                    )
        for i, j in T.grid(rows, nr):
            store(
                out, [b, row0 + i, T.ramp((block0 + j) * lanes, 1, lanes)],
                acc[i, j, T.ramp(0, 1, lanes)] + corr[b % weight_batch, T.ramp((block0 + j) * lanes, 1, lanes)]
                + T.broadcast(row_corr[b, row0 + i], lanes),
                mult, half, shift, bounds, T.ramp((block0 + j) * lanes, 1, lanes),
            )

    @T.prim_func(s_tir=True)
    def gemm(
        a: T.Buffer((batch, m, kp), a_dtype),
        wp: T.Buffer((weight_batch, blocks, kp // 4, lanes, 4), "int8"),
        corr: T.Buffer((weight_batch, np_), "int32"),
        row_corr: T.Buffer((batch, m), "int32"),
        mult: T.Buffer((np_,), "int32"),
        half: T.Buffer((np_,), SHIFT_DTYPES[high_word]),
        shift: T.Buffer((np_,), SHIFT_DTYPES[high_word]),
        bounds: T.Buffer((3,), "int64"),
        out: T.Buffer((batch, m, np_), out_dtype),
    ):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        # (no named temporaries: TVMScript would store each one in a buffer)
        for bt in T.parallel(batch * per_batch):
            if bt % per_batch < tiles:
                tile(a, wp, corr, row_corr, mult, half, shift, bounds, out, bt // per_batch,
                     bt % per_batch // column_tiles * mr, mr, bt % per_batch % column_tiles * nr)
            else:
                tile(a, wp, corr, row_corr, mult, half, shift, bounds, out, bt // per_batch,
                     full_rows + (bt % per_batch - tiles) // column_tiles, 1,
                     (bt % per_batch - tiles) % column_tiles * nr)

    return gemm


@_kernel_cache
def pad_columns_func(batch: int, m: int, k: int, kp: int, dtype: str, name: str) -> tvm.tirx.PrimFunc:
    """``a[batch, M, K] -> out[batch, M, Kp]``, zero-filled past K (a GEMM operand padded to whole
    instructions): one row per parallel iteration, two plain loops LLVM vectorizes (a generic pad tests
    every element)."""

    @T.prim_func(s_tir=True)
    def pad(a: T.Buffer((batch, m, k), dtype), out: T.Buffer((batch, m, kp), dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        with T.sblock("root"):  # (Relax's layout analysis requires a root block)
            for row in T.parallel(batch * m):
                for j in range(k):
                    out[row // m, row % m, j] = a[row // m, row % m, j]
                for j in range(kp - k):
                    out[row // m, row % m, k + j] = T.Cast(dtype, 0)

    return pad


@_kernel_cache
def pack_gemm_operand_func(
    batch: int, k: int, n: int, b_dtype: str, lanes: int, name: str, columns: int | None = None, k_multiple: int = 4
) -> tvm.tirx.PrimFunc:
    """Run-time :func:`pack_gemm_weight` of an activation ``b[batch, K, N]`` -> ``bp[batch, Np/L, Kp/4, L, 4]``
    as int8 (a uint8 ``b`` with its sign bit flipped, i.e. ``b - 128``), zero-padded (``columns``,
    ``k_multiple``: as there)."""
    kp, blocks = k_multiple * _ceil(k, k_multiple), (columns or gemm_columns(n, lanes)) // lanes
    b = te.placeholder((batch, k, n), b_dtype, name="b")

    def value(bt, no, ko, ni, t):
        row, col = ko * 4 + t, no * lanes + ni
        raw = b[bt, tvm.te.min(row, k - 1), tvm.te.min(col, n - 1)]
        signed = (raw.astype("int32") - 128).astype("int8") if b_dtype == "uint8" else raw
        return te.if_then_else(tvm.tirx.all(row < k, col < n), signed, tvm.tirx.const(0, "int8"))

    bp = te.compute((batch, blocks, kp // 4, lanes, 4), value, name="bp")
    return te.create_prim_func([b, bp]).with_attr("global_symbol", name)


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution of an NCHW input ``[B, C, H, W]``, zero-padded by ``pads`` (ONNX order: top, left,
    bottom, right), by ``[O, C, KH, KW]`` weights."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def padded(self) -> tuple[int, int]:
        """``(H, W)`` after padding."""
        top, left, bottom, right = self.pads
        return self.height + top + bottom, self.width + left + right

    @property
    def out_size(self) -> tuple[int, int]:
        """``(OH, OW)``."""
        (kh, kw), (sh, sw), (dh, dw), (h, w) = self.kernel, self.strides, self.dilations, self.padded
        return (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1

    @property
    def plane(self) -> tuple[int, int]:
        """``(Hq, Wq)``: rows and columns of one stride phase of the padded input."""
        return _ceil(self.padded[0], self.strides[0]), _ceil(self.padded[1], self.strides[1])

    def tap_offset(self, dy: int, dx: int) -> tuple[int, int, int]:
        """``(phase_h, phase_w, flat offset)`` of tap ``(dy, dx)`` in the phase planes."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        return (dy * dh) % sh, (dx * dw) % sw, (dy * dh) // sh * self.plane[1] + (dx * dw) // sw


def conv_tile(geometry: ConvGeometry, lanes: int, tiles: tuple[tuple[int, int], ...] = _CONV_TILES) -> tuple[int, int]:
    """``(output channels, pixel vectors)`` of the register tile (of ``tiles``, the first among equals)
    computing the fewest padded outputs."""
    pixels = geometry.out_size[0] * geometry.plane[1]

    def padded(tile: tuple[int, int]) -> int:
        ob, pb = tile
        return _ceil(geometry.out_channels, ob) * ob * _ceil(pixels, pb * lanes) * pb * lanes

    return min(tiles, key=padded)


def depthwise_tile(geometry: ConvGeometry, lanes: int) -> tuple[int, int]:
    """The register tile of :func:`depthwise_conv2d_func` for ``geometry`` (e.g. a 7 x 7 output on an 11-wide
    grid, 77 pixels: 3 vectors of 16, padded to 96, not 4 padded to 128)."""
    return conv_tile(geometry, lanes, _DEPTHWISE_TILES)


def conv_grid(geometry: ConvGeometry, lanes: int, tile: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """``(Op, Pp, F)``: padded output channels, padded grid pixels and the phase planes' flat length, for
    register tiles ``tile`` (default :func:`conv_tile`)."""
    oh, _ = geometry.out_size
    ob, pb = tile or conv_tile(geometry, lanes)
    pixels = oh * geometry.plane[1]
    pp = pb * lanes * _ceil(pixels, pb * lanes)
    kh, kw = geometry.kernel
    reach = max(geometry.tap_offset(dy, dx)[2] for dy in range(kh) for dx in range(kw))
    return ob * _ceil(geometry.out_channels, ob), pp, pp + reach


@_kernel_cache
def pack_conv_input_func(
    geometry: ConvGeometry, a_dtype: str, name: str, block: int, blocks: int, flat: int
) -> tvm.tirx.PrimFunc:
    """``x[B, C, H, W] -> xp[B, blocks, sh, sw, flat, block]`` (phase planes of ``flat`` pixels, from
    :func:`conv_grid`; zero-filled, see the module docstring) with channel blocks of ``block`` channels: 4
    for :func:`conv2d_func`, 1 for :func:`depthwise_conv2d_func`; ``blocks >= C / block`` (blocks past the
    channels are zeros). The convolution's padding becomes zeros here. Parallel over (batch, channel
    block); rows and columns are loops of their own (no index division)."""
    g = geometry
    (sh, sw), (hq, wq) = g.strides, g.plane
    zero = tvm.tirx.const(0, a_dtype)  # ConvInteger without a zero point pads with 0
    top, left = g.pads[:2]

    @T.prim_func(s_tir=True)
    def pack(x: T.Buffer((g.batch, g.channels, g.height, g.width), a_dtype),
             xp: T.Buffer((g.batch, blocks, sh, sw, flat, block), a_dtype)):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        with T.sblock("root"):  # (Relax's reshape analysis requires a root block of a layout change)
            for bq in T.parallel(g.batch * blocks):
                for ph, pw, i, j, t in T.grid(sh, sw, hq, wq, block):
                    xp[bq // blocks, bq % blocks, ph, pw, i * wq + j, t] = T.if_then_else(
                        bq % blocks * block + t < g.channels
                        and top <= i * sh + ph and i * sh + ph < top + g.height
                        and left <= j * sw + pw and j * sw + pw < left + g.width,
                        x[bq // blocks, T.min(bq % blocks * block + t, g.channels - 1),
                          T.max(T.min(i * sh + ph - top, g.height - 1), 0),
                          T.max(T.min(j * sw + pw - left, g.width - 1), 0)],
                        zero,
                    )
                for ph, pw, f, t in T.grid(sh, sw, flat - hq * wq, block):
                    xp[bq // blocks, bq % blocks, ph, pw, hq * wq + f, t] = zero

    return pack


@_kernel_cache
def conv2d_func(
    geometry: ConvGeometry, a_dtype: str, dot: DotProduct, requant_dtype: str | None, name: str,
    high_word: bool = False,
) -> tvm.tirx.PrimFunc:
    """``out[B, Op, Pp] = epilogue(conv(xp, wp) + corr)`` on the padded grid; args ``(xp, wp, corr, mult,
    half, shift, bounds, out)``, per-channel arrays of ``Op`` entries. The caller crops ``[:, :O, :OH * Wq]``."""
    g, lanes = geometry, dot.lanes
    (kh, kw), (sh, sw) = g.kernel, g.strides
    c4 = _ceil(g.channels, 4)
    op, pp, flat = conv_grid(g, lanes)
    ob, pb = conv_tile(g, lanes)
    flip = dot.flip_correction(a_dtype)
    out_dtype = requant_dtype or "int32"
    store = _epilogue(requant_dtype, lanes, channel_lanes=False, high_word=high_word)
    (dh, dw), wq = g.dilations, g.plane[1]
    channel_blocks, pixel_blocks = op // ob, pp // (pb * lanes)

    @T.prim_func(s_tir=True)
    def conv(
        xp: T.Buffer((g.batch, c4, sh, sw, flat, 4), a_dtype),
        wp: T.Buffer((op, c4, kh, kw, 4), "int8"),
        corr: T.Buffer((op,), "int32"),
        mult: T.Buffer((op,), "int32"),
        half: T.Buffer((op,), SHIFT_DTYPES[high_word]),
        shift: T.Buffer((op,), SHIFT_DTYPES[high_word]),
        bounds: T.Buffer((3,), "int64"),
        out: T.Buffer((g.batch, op, pp), out_dtype),
    ):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        # (no named temporaries: TVMScript would store each one in a buffer)
        for t in T.parallel(g.batch * channel_blocks * pixel_blocks):
            acc = T.alloc_buffer((ob, pb, lanes), "int32", scope="global")  # small global: a stack array
            for i, j in T.grid(ob, pb):
                acc[i, j, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
            for q in range(c4):
                for dy in T.unroll(kh):
                  for dx in T.unroll(kw):
                    for j in T.unroll(pb):
                        for i in T.unroll(ob):
                            acc[i, j, T.ramp(0, 1, lanes)] = dot.call(
                                acc[i, j, T.ramp(0, 1, lanes)],
                                _flip_vector(
                                    T.reinterpret(
                                        xp.vload([t // (channel_blocks * pixel_blocks), q, dy * dh % sh, dx * dw % sw,
                                                  t % pixel_blocks * (pb * lanes) + j * lanes
                                                  + dy * dh // sh * wq + dx * dw // sw, 0],
                                                 f"{a_dtype}x{4 * lanes}"),
                                        dtype=dot.a_vector),
                                    flip, lanes,
                                ),
                                _broadcast_word(wp, [t // pixel_blocks % channel_blocks * ob + i, q, dy, dx, 0], 0,
                                                lanes),
                            )
            for i, j in T.grid(ob, pb):
                store(out, [t // (channel_blocks * pixel_blocks), t // pixel_blocks % channel_blocks * ob + i,
                            T.ramp(t % pixel_blocks * (pb * lanes) + j * lanes, 1, lanes)],
                      acc[i, j, T.ramp(0, 1, lanes)] + T.broadcast(corr[t // pixel_blocks % channel_blocks * ob + i],
                                                                   lanes),
                      mult, half, shift, bounds, t // pixel_blocks % channel_blocks * ob + i)

    return conv


def pack_depthwise_weight(w: np.ndarray, paired: bool) -> np.ndarray:
    """``w[C, 1, KH, KW]`` int8 -> int32 words ``[C, taps]``: one tap's value each,
    or, ``paired``, taps ``2p`` and ``2p + 1`` as the int16 halves of word ``p`` (low half first, the missing
    partner of an odd last tap 0).

    >>> pack_depthwise_weight(np.array([-1, 2, 3], np.int8).reshape(1, 1, 1, 3), paired=True).view(np.int16)
    array([[-1,  2,  3,  0]], dtype=int16)
    """
    taps = w.reshape(w.shape[0], -1).astype(np.int32)
    if not paired:
        return taps
    halves = np.zeros((taps.shape[0], 2 * _ceil(taps.shape[1], 2)), np.int16)
    halves[:, : taps.shape[1]] = taps
    return halves.view(np.int32)


@_kernel_cache
def depthwise_conv2d_func(
    geometry: ConvGeometry, a_dtype: str, dot: DotProduct, requant_dtype: str | None, name: str,
    high_word: bool = False,
) -> tvm.tirx.PrimFunc:
    """Depthwise convolution (``group = C = O``): ``out[B, C, Pp] = epilogue(conv(xp, w) + corr)`` on the
    padded grid, on int32 lanes of ``dot``. Each output channel reads one input channel, so there is no
    4-way sum for a dot-product instruction. With :attr:`DotProduct.pair_intrinsic`, two taps' pixels are
    interleaved and widened exactly to int16 (``[x_a[0], x_b[0], x_a[1], x_b[1], ...]``) and one 2-way
    multiply-add adds both taps of a pixel: every product fits int16 (``|x| <= 255``, ``|w| <= 128``) and
    the pair sum int32, and ``vpdpwssd`` wraps modulo 2**32 as the reference's int32 sum does. Without it,
    the activations are widened to int32 and multiplied by the broadcast weight.

    Args ``(xp, w, corr, mult, half, shift, bounds, out)``: ``xp`` from :func:`pack_conv_input_func` with
    channel blocks of 1, ``w`` from :func:`pack_depthwise_weight` (paired when ``dot`` pairs), per-channel
    arrays of C entries. The caller crops ``[:, :, :OH * Wq]``.
    """
    g, lanes = geometry, dot.lanes
    (kh, kw), (sh, sw), (dh, dw), wq = g.kernel, g.strides, g.dilations, g.plane[1]
    tile = depthwise_tile(g, lanes)
    _, pp, flat = conv_grid(g, lanes, tile)
    pb = tile[1]
    out_dtype = requant_dtype or "int32"
    store = _epilogue(requant_dtype, lanes, channel_lanes=False, high_word=high_word)
    pixel_blocks = pp // (pb * lanes)
    paired = dot.pair_intrinsic is not None
    taps = kh * kw
    words = _ceil(taps, 2) if paired else taps
    interleave = [i // 2 + lanes * (i % 2) for i in range(2 * lanes)]

    def pixels(xp, t, j, tap):
        """``lanes`` pixels of block ``j`` of task ``t`` read by tap number ``tap``."""
        return xp.vload([t // (g.channels * pixel_blocks), t // pixel_blocks % g.channels,
                  tap // kw * dh % sh, tap % kw * dw % sw,
                  t % pixel_blocks * (pb * lanes) + j * lanes + tap // kw * dh // sh * wq + tap % kw * dw // sw, 0],
                 f"{a_dtype}x{lanes}")

    @T.prim_func(s_tir=True)
    def depthwise(
        xp: T.Buffer((g.batch, g.channels, sh, sw, flat, 1), a_dtype),
        w: T.Buffer((g.channels, words), "int32"),
        corr: T.Buffer((g.channels,), "int32"),
        mult: T.Buffer((g.channels,), "int32"),
        half: T.Buffer((g.channels,), SHIFT_DTYPES[high_word]),
        shift: T.Buffer((g.channels,), SHIFT_DTYPES[high_word]),
        bounds: T.Buffer((3,), "int64"),
        out: T.Buffer((g.batch, g.channels, pp), out_dtype),
    ):
        T.func_attr({"global_symbol": name, "tir.noalias": True})
        # (no named temporaries: TVMScript would store each one in a buffer)
        for t in T.parallel(g.batch * g.channels * pixel_blocks):
            acc = T.alloc_buffer((pb, lanes), "int32", scope="global")  # small global: a stack array
            for j in T.unroll(pb):
                acc[j, T.ramp(0, 1, lanes)] = T.broadcast(T.int32(0), lanes)
            if paired:
                for q in T.unroll(words):
                    for j in T.unroll(pb):
                        acc[j, T.ramp(0, 1, lanes)] = dot.pair_call(
                            acc[j, T.ramp(0, 1, lanes)],
                            T.Cast(f"int16x{2 * lanes}", T.Shuffle(
                                [pixels(xp, t, j, 2 * q), pixels(xp, t, j, T.min(2 * q + 1, taps - 1))], interleave)),
                            T.reinterpret(T.broadcast(w[t // pixel_blocks % g.channels, q], lanes),
                                          dtype=f"int16x{2 * lanes}"),
                        )
            else:
                for tap in T.unroll(taps):
                    for j in T.unroll(pb):
                        acc[j, T.ramp(0, 1, lanes)] = acc[j, T.ramp(0, 1, lanes)] + T.Cast(
                            f"int32x{lanes}", pixels(xp, t, j, tap)
                        ) * T.broadcast(w[t // pixel_blocks % g.channels, tap], lanes)
            for j in T.serial(pb):
                store(out, [t // (g.channels * pixel_blocks), t // pixel_blocks % g.channels,
                            T.ramp(t % pixel_blocks * (pb * lanes) + j * lanes, 1, lanes)],
                      acc[j, T.ramp(0, 1, lanes)] + T.broadcast(corr[t // pixel_blocks % g.channels], lanes),
                      mult, half, shift, bounds, t // pixel_blocks % g.channels)

    return depthwise
