"""Integer GELU: I-ViT ShiftGELU and I-BERT i-GELU as pure numpy references, with their per-layer constants.

Both take the centered input codes ``x = x_q - zp_x`` (int32, ``|x| <= 255`` for 8-bit inputs; the real
input is ``s * x``) and return an int32 accumulator ``acc`` whose real value is ``acc * acc_scale``; the
integerize pass ends with one ``qc.Requantize(acc, acc_scale / s_out)``. Every step below is one integer op
of :class:`qcompiler.passes.integerize_gelu.IntegerizeGeluPass` (``>>`` is ``qc.ShiftRight``, a floor;
``<<`` is ``qc.ShiftLeft``; divisions have non-negative quotients, so truncation is the floor).

**shift** (I-ViT ShiftGELU, ``GELU(x) ~ x * sigmoid(alpha * x)``, ``alpha = 1.702`` by default):

* ``t = -(|x| << u)`` (the input up-scaling shift ``u`` gives the exponent ``2**u`` times more resolution).
* ShiftExp of ``t``: ``t = t + (t >> 1) - (t >> 4)`` (I-ViT's shift sum ``1.4375 ~ log2 e``);
  ``t = max(t, n * x0)``; ``q = t // x0``; ``r = t - q * x0``; ``E = ((r >> 1) - x0) << (n - q)``, so that
  ``E ~ |x0| * 2**n * exp(-alpha * s * |x|)``. ``x0`` is the integer standing for ``-1`` (in base-2
  exponent units) after the shift sum: ``alpha`` **and** the shift sum's error are folded into it,
  ``x0 = floor(-2**u * 1.4375 / (alpha * s * log2 e))`` (I-ViT folds 1.702 the same way; it does not
  correct 1.4375). ``n`` is the exponent bit budget: exponentials below ``2**-n`` are clamped.
* ``D = |x0| << n`` stands for ``exp(0)``. Sigmoid without a row maximum: ``sigmoid(z) = D / (D + E)`` for
  ``x >= 0`` and ``E / (D + E)`` for ``x < 0`` (elementwise stabilization with ``exp(-|z|)``; I-ViT subtracts
  the row maximum instead, which loses the negative inputs of rows with a large maximum).
* ``sig = (num << K) // (D + E)`` in int64 (``K = SIGMOID_BITS``), then ``acc = x * sig``;
  ``acc_scale = s / 2**K``. Budget: ``|x0| * 2**(n + 1) < 2**31`` keeps the exponential in int32.

**poly** (I-BERT i-GELU, ``GELU(x) = x * (1 + erf(x / sqrt 2)) / 2``, ``erf(z) ~ sign(z) * (1 - A * (min(|z|,
B) - B)**2)`` with ``A = 0.2888``, ``B = 1.769``, that is I-BERT's ``a = -A``, ``b = -B``):

* The erf argument ``x / sqrt 2`` is ``(x << u) * s_e`` with ``s_e = s / (sqrt 2 * 2**u)``;
  ``b_int = round(B / s_e)``, ``c_int = round(1 / (A * s_e**2))`` (I-BERT floors ``b / s`` and ``1 / (a s**2)``).
* ``m = min(|x| << u, b_int)``; ``erf_int = sign(x) * ((c_int - (m - b_int)**2) >> p)`` in int64, with scale
  ``s_erf = A * s_e**2 * 2**p``: ``p`` is the polynomial scale exponent (I-BERT's fixed ``>> 14``).
  The shift applies to the magnitude, so the integer erf stays odd (I-BERT shifts the signed value).
* ``acc = x * (erf_int + one_int)`` with ``one_int = round(1 / s_erf)``; ``acc_scale = s * s_erf / 2``.
  Budget: ``2 * one_int * 255 < 2**31`` (an int32 product) sets the smallest ``p`` for a given ``u``.

>>> x = np.array([-200, -40, -1, 0, 1, 40, 200], np.int32)         # codes at s = 0.02: -4.0 ... 4.0
>>> c = shift_constants(0.02)
>>> c
{'alpha': 1.702, 'n': 15, 'u': 10, 'x0': -29974}
>>> acc = shift_gelu(x, **c)
>>> acc.tolist()
[-15000, -539120, -32360, 0, 33175, 2082280, 13092000]
>>> np.round(acc * 0.02 / 2**SIGMOID_BITS, 4).tolist()     # GELU: -0.0001 -0.1695 -0.0098 0 0.0102 0.6305 3.9999
[-0.0046, -0.1645, -0.0099, 0.0, 0.0101, 0.6355, 3.9954]
>>> p = poly_constants(0.02)
>>> p
{'b_int': 64045, 'c_int': 4538504155, 'one_int': 2216066, 'p': 11, 'u': 9}
>>> acc = poly_gelu(x, **p)
>>> acc.tolist()
[0, -37068560, -1970919, 0, 2461213, 140216720, 886426400]
>>> np.round(acc * poly_acc_scale(0.02, p), 4).tolist()    # erf's jump at 0 (+-0.096) shows at x = +-0.02
[0.0, -0.1673, -0.0089, 0.0, 0.0111, 0.6327, 4.0]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SIGMOID_BITS",
    "DEFAULT_SHIFT",
    "gelu",
    "shift_constants",
    "shift_exp",
    "shift_gelu",
    "shift_acc_scale",
    "poly_constants",
    "poly_gelu",
    "poly_acc_scale",
]

#: fixed-point bits of the ShiftGELU sigmoid (``sig`` in [0, 2**16]).
SIGMOID_BITS = 16
#: ShiftGELU defaults: I-ViT's 1.702 and an exponent budget of 15 bits (``u`` is the largest that fits).
DEFAULT_SHIFT = {"alpha": 1.702, "n": 15}



_LOG2E = math.log2(math.e)
_SHIFT_SUM = 1.4375  # t + (t >> 1) - (t >> 4)
_INT32_MAX = 2**31 - 1
_A, _B = 0.2888, 1.769
_MAX_CODE = 255  # largest |x - zp| of an 8-bit input


def gelu(x: np.ndarray) -> np.ndarray:
    """The float GELU ``x * (1 + erf(x / sqrt 2)) / 2`` in float64 (the function both methods approximate)."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


# ---- ShiftGELU ---------------------------------------------------------------------------------------------


def _x0(scale: float, alpha: float, u: int) -> int:
    return min(-1, math.floor(-(2.0**u) * _SHIFT_SUM / (alpha * scale * _LOG2E)))


def shift_constants(scale: float, alpha: float = 1.702, n: int = 15, u: int | None = None) -> dict | None:
    """ShiftGELU constants for input scale ``scale``: ``u`` defaults to the largest within the int32 budget.

    Returns ``None`` when no ``u >= 0`` fits (``n`` too large for this scale).

    >>> shift_constants(0.05, n=20)
    {'alpha': 1.702, 'n': 20, 'u': 6, 'x0': -750}
    """
    if u is None:
        fits = [v for v in range(0, 21) if abs(_x0(scale, alpha, v)) * 2 ** (n + 1) <= _INT32_MAX]
        if not fits:
            return None
        u = max(fits)
    x0 = _x0(scale, alpha, u)
    if abs(x0) * 2 ** (n + 1) > _INT32_MAX or (_MAX_CODE << u) * 2 > _INT32_MAX:
        return None
    return {"alpha": float(alpha), "n": int(n), "u": int(u), "x0": int(x0)}


def shift_exp(t: np.ndarray, x0: int, n: int) -> np.ndarray:
    """I-ViT ShiftExp of ``t <= 0`` (int32): ``|x0| * 2**n * 2**(t * 1.4375 / -x0)`` approximately.

    >>> shift_exp(np.array([0, -100, -1000], np.int32), x0=-100, n=8).tolist()
    [25600, 9984, 100]
    """
    t = np.asarray(t, np.int32)
    t = t + (t >> 1) - (t >> 4)
    t = np.maximum(t, np.int32(n * x0))
    q = t // np.int32(x0)
    r = t - q * np.int32(x0)
    e = (r >> 1) - np.int32(x0)
    return (e << (np.int32(n) - q)).astype(np.int32)


def shift_gelu(x: np.ndarray, alpha: float, n: int, u: int, x0: int) -> np.ndarray:
    """ShiftGELU accumulator (int32) of centered codes ``x``; real value ``acc * s / 2**SIGMOID_BITS``.

    ``alpha`` is already folded into ``x0`` (it is accepted so that a :func:`shift_constants` dict unpacks).
    """
    x = np.asarray(x, np.int32)
    t = -(np.abs(x) << np.int32(u))
    e = shift_exp(t, x0, n)
    d = np.int32(-x0) << np.int32(n)
    num = np.where(x < 0, e, d).astype(np.int64)
    sig = (num << SIGMOID_BITS) // (e + d).astype(np.int64)
    return x * sig.astype(np.int32)


def shift_acc_scale(scale: float, constants: dict | None = None) -> float:
    """Real value of one unit of the ShiftGELU accumulator."""
    return float(scale) / 2**SIGMOID_BITS


# ---- i-GELU ------------------------------------------------------------------------------------------------


def poly_constants(scale: float, u: int | None = None, p: int | None = None) -> dict | None:
    """i-GELU constants for input scale ``scale``; ``p`` defaults to the smallest within the int32 budget.

    ``u`` defaults to the smallest up-scaling giving ``b_int >= 2**15``. ``None`` when ``p`` does not fit.

    >>> poly_constants(0.1, u=0)
    {'b_int': 25, 'c_int': 693, 'one_int': 693, 'p': 0, 'u': 0}
    """
    if u is None:
        u = next(v for v in range(0, 31) if _B * math.sqrt(2.0) * 2**v / scale >= 2**15)
    s_e = scale / (math.sqrt(2.0) * 2**u)
    b_int = round(_B / s_e)
    c_int = round(1.0 / (_A * s_e**2))
    if c_int >= 2**62 or b_int >= 2**31 or (_MAX_CODE << u) >= 2**31:
        return None
    if p is None:
        p = next(v for v in range(0, 63) if 2 * round(2.0**-v / (_A * s_e**2)) * _MAX_CODE <= _INT32_MAX)
    one_int = round(2.0**-p / (_A * s_e**2))
    if one_int < 1 or 2 * one_int * _MAX_CODE > _INT32_MAX:
        return None
    return {"b_int": int(b_int), "c_int": int(c_int), "one_int": int(one_int), "p": int(p), "u": int(u)}


def poly_gelu(x: np.ndarray, b_int: int, c_int: int, one_int: int, p: int, u: int) -> np.ndarray:
    """i-GELU accumulator (int32) of centered codes ``x``; real value ``acc * poly_acc_scale(s, constants)``."""
    x = np.asarray(x, np.int32)
    wide = x.astype(np.int64)
    m = np.minimum(np.abs(wide) << np.int64(u), np.int64(b_int))
    d = m - np.int64(b_int)
    mag = (np.int64(c_int) - d * d) >> np.int64(p)
    erf = np.sign(wide) * mag
    total = (erf + np.int64(one_int)).astype(np.int32)
    return x * total


def poly_acc_scale(scale: float, constants: dict) -> float:
    """Real value of one unit of the i-GELU accumulator: ``s * s_erf / 2``."""
    s_e = scale / (math.sqrt(2.0) * 2 ** constants["u"])
    return float(scale) * _A * s_e**2 * 2.0 ** constants["p"] / 2
