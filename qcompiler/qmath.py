"""Pure quantization arithmetic: affine quantization parameters and dyadic requantization.

Everything here is a small pure function over numpy values. These functions are the executable
specification of qc's integer semantics; the ONNX integer ops in :mod:`qcompiler.intops` and every target
lowering must agree with them bit for bit.

Rounding rule (used everywhere qc rescales an integer): **round half up**, that is
``round_shift(v, s) = floor((v + 2**(s-1)) / 2**s)`` for ``s >= 1``, an arithmetic right shift by ``s`` after
adding half of the divisor. Ties go towards +inf: ``round_shift(-3, 1) == -1`` and ``round_shift(3, 1) == 2``.
"""

from __future__ import annotations

import math

import numpy as np

from qcompiler.errors import OverflowRiskError

__all__ = [
    "DTYPE_RANGES",
    "MAX_SHIFT",
    "affine_qparams",
    "symmetric_qparams",
    "weight_scales",
    "weight_codes",
    "packed_bytes",
    "quantize",
    "dequantize",
    "dyadic",
    "dyadic_common_shift",
    "round_shift",
    "requantize",
    "code_range",
]

#: inclusive integer range of each quantized dtype; int8 weights use the symmetric range [-127, 127].
DTYPE_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}

def code_range(dtype: str, bits: int = 8) -> tuple[int, int]:
    """Inclusive code range of a ``bits``-wide activation stored in ``dtype`` (uint8 or int8).

    >>> code_range("uint8", 4), code_range("int8", 6)
    ((0, 15), (-32, 31))
    """
    qmin, qmax = DTYPE_RANGES[dtype]
    if bits >= 8:
        return qmin, qmax
    return (0, 2**bits - 1) if qmin == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


#: largest right shift qc emits: keeps ``2**shift`` and the rounding term inside int64.
MAX_SHIFT = 62


def affine_qparams(rmin: float, rmax: float, dtype: str = "uint8", bits: int = 8) -> tuple[float, int]:
    """Scale and zero point mapping the real range [rmin, rmax] (widened to hold 0) onto ``dtype``.

    ``scale = (rmax - rmin) / (qmax - qmin)`` and ``zero_point = clamp(round(qmin - rmin / scale))``, so that
    real 0 is exactly representable (padding and ReLU depend on it). A degenerate range gets scale 1.
    ``bits < 8`` narrows the code range (:func:`code_range`); codes stay stored in ``dtype``.

    >>> affine_qparams(-1.0, 3.0, "uint8")
    (0.01568627450980392, 64)
    >>> affine_qparams(0.0, 0.0, "int8")
    (1.0, 0)
    """
    qmin, qmax = code_range(dtype, bits)
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmax - rmin <= 0.0:
        return 1.0, 0 if qmin < 0 else qmin
    scale = (rmax - rmin) / (qmax - qmin)
    zero_point = int(np.clip(round(qmin - rmin / scale), qmin, qmax))
    return scale, zero_point


def symmetric_qparams(absmax: np.ndarray | float, bits: int = 8) -> np.ndarray:
    """Symmetric scale(s) ``absmax / (2**(bits-1) - 1)`` with zero point 0 (HAWQ-V3 weights).

    A zero ``absmax`` (an all-zero channel) gets scale 1 so the channel quantizes to zeros.

    >>> symmetric_qparams(np.array([1.27, 0.0]))
    array([0.01, 1.  ])
    """
    absmax = np.asarray(absmax, dtype=np.float64)
    scale = absmax / (2 ** (bits - 1) - 1)
    return np.where(scale > 0, scale, 1.0)


def weight_scales(weight: np.ndarray, axis: int, bits: int = 8, per_channel: bool = True) -> np.ndarray:
    """Symmetric scale of each channel along ``axis`` of ``weight`` (float64); with ``per_channel=False``
    every channel gets the scale of the tensor's largest magnitude."""
    peak = np.max(np.abs(weight), axis=tuple(i for i in range(weight.ndim) if i != axis))
    return symmetric_qparams(peak if per_channel else np.full_like(peak, peak.max()), bits)


def weight_codes(weight: np.ndarray, scale: np.ndarray, axis: int, bits: int = 8) -> np.ndarray:
    """``weight`` rounded to ``bits``-bit symmetric codes ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` with one
    ``scale`` per channel along ``axis``, stored as int8."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    qmax = 2 ** (bits - 1) - 1
    return np.clip(np.rint(weight / np.reshape(scale, shape)), -qmax, qmax).astype(np.int8)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits packed densely: ``ceil(count * bits / 8)``."""
    return -(-count * bits // 8)


def quantize(x: np.ndarray, scale, zero_point, dtype: str) -> np.ndarray:
    """ONNX QuantizeLinear: ``clamp(round_half_even(x / scale) + zero_point)`` cast to ``dtype``.

    >>> quantize(np.array([0.0, 0.5, 1.5, 9.0]), 1.0, 0, "int8")
    array([0, 0, 2, 9], dtype=int8)
    """
    qmin, qmax = DTYPE_RANGES[dtype]
    scaled = np.rint(np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32))
    shifted = scaled.astype(np.float64) + np.asarray(zero_point, dtype=np.float64)
    return np.clip(np.nan_to_num(shifted, nan=0.0), qmin, qmax).astype(dtype)


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    diff = (np.asarray(q).astype(np.int32) - np.asarray(zero_point, dtype=np.int32)).astype(np.float32)
    return diff * np.asarray(scale, dtype=np.float32)


def dyadic(ratio: np.ndarray | float, mantissa_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Dyadic approximation ``ratio ~= multiplier / 2**shift`` as HAWQ-V3's ``batch_frexp`` computes it.

    ``frexp`` gives ``ratio = m * 2**e`` with ``m`` in [0.5, 1); then ``multiplier = round_half_up(m * 2**B)``
    and ``shift = B - e`` with ``B = mantissa_bits``. A mantissa that rounds up to ``2**B`` is halved. When
    ``shift`` would exceed :data:`MAX_SHIFT` the mantissa is shortened (precision lost only for ratios below
    ``2**(B - MAX_SHIFT)``); ``shift < 1`` (a ratio of ``2**(B-1)`` or more) is an overflow risk and raises.
    Negative ratios keep their sign in the multiplier; zero gives multiplier 0 and shift 1.

    >>> dyadic(0.75)
    (array([1610612736]), array([31]))
    >>> dyadic(np.array([1.0, -0.1]), mantissa_bits=15)
    (array([ 16384, -26214]), array([14, 18]))
    """
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if not np.all(np.isfinite(ratio)):
        raise OverflowRiskError(f"requantization ratio is not finite: {ratio}")
    mant, exp = np.frexp(np.abs(ratio))
    multiplier = np.floor(mant * 2.0**mantissa_bits + 0.5).astype(np.int64)
    shift = mantissa_bits - exp.astype(np.int64)
    full = multiplier == 2**mantissa_bits
    multiplier = np.where(full, multiplier // 2, multiplier)
    shift = np.where(full, shift - 1, shift)
    excess = np.maximum(shift - MAX_SHIFT, 0)
    multiplier = np.where(excess > 0, (multiplier + (1 << np.minimum(excess, 62)) // 2) >> np.minimum(excess, 62), multiplier)
    shift = shift - excess
    zero = multiplier == 0
    shift = np.where(zero, 1, shift)
    if np.any(shift < 1):
        raise OverflowRiskError(
            f"requantization ratio {float(np.max(np.abs(ratio))):.3g} is too large for a dyadic multiplier "
            f"with {mantissa_bits} mantissa bits; the output range is far narrower than the input's"
        )
    return np.sign(ratio).astype(np.int64) * multiplier, shift


def dyadic_common_shift(ratios: np.ndarray, mantissa_bits: int = 31) -> tuple[np.ndarray, int]:
    """Multipliers sharing one shift: ``ratios[i] ~= multipliers[i] / 2**shift``.

    Used where several rescaled terms are summed before one rounding (residual Add, Concat-free adds):
    the shift is the largest that keeps every ``|multiplier| < 2**mantissa_bits``.

    >>> dyadic_common_shift(np.array([0.5, 0.25]), mantissa_bits=8)
    (array([128,  64]), 8)
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    largest = float(np.max(np.abs(ratios)))
    if not math.isfinite(largest) or largest == 0.0:
        raise OverflowRiskError(f"cannot rescale by ratios {ratios}")
    _, exp = math.frexp(largest)
    shift = min(mantissa_bits - exp, MAX_SHIFT)
    if shift < 1:
        raise OverflowRiskError(f"rescale ratio {largest:.3g} too large for a dyadic multiplier")
    multipliers = np.floor(ratios * 2.0**shift + 0.5).astype(np.int64)
    if np.max(np.abs(multipliers)) >= 2**mantissa_bits:  # the largest rounded up to 2**mantissa_bits
        shift -= 1
        if shift < 1:
            raise OverflowRiskError(f"rescale ratio {largest:.3g} too large for a dyadic multiplier")
        multipliers = np.floor(ratios * 2.0**shift + 0.5).astype(np.int64)
    return multipliers, shift


def round_shift(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``floor((value + 2**(shift-1)) / 2**shift)`` in int64: qc's rounding rule (round half up).

    >>> round_shift(np.array([-3, -2, 3, 5]), 1)
    array([-1, -1,  2,  3])
    """
    value = np.asarray(value, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (value + (np.int64(1) << (shift - 1))) >> shift


def requantize(acc: np.ndarray, multiplier, shift, zero_point: int, qmin: int, qmax: int, dtype: str) -> np.ndarray:
    """``clamp(round_shift(acc * multiplier, shift) + zero_point, qmin, qmax)`` cast to ``dtype``.

    The reference semantics of the ``qc.Requantize`` op. ``multiplier`` and ``shift`` broadcast against
    ``acc`` (per output channel). The int64 product cannot overflow when ``|acc| < 2**31`` and
    ``|multiplier| < 2**31``.

    >>> requantize(np.array([1000, -1000]), 1610612736, 36, 10, 0, 255, "uint8")
    array([33,  0], dtype=uint8)
    """
    product = np.asarray(acc, dtype=np.int64) * np.asarray(multiplier, dtype=np.int64)
    out = round_shift(product, shift) + np.int64(zero_point)
    return np.clip(out, qmin, qmax).astype(dtype)
