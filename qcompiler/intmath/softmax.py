"""Integer Softmax on the last axis: the numpy reference of ``IntegerizeSoftmaxPass`` and of the log-coded
attention probabilities of ``IntegerizeLogAttentionPass``.

Input: integer codes ``x`` (real ``s * (x - zp)``; the zero point cancels) and an optional boolean ``keep``
(broadcast against ``x``; ``False`` = masked). Every step is integer arithmetic on int32/int64 arrays:

1. ``d = clip(max_kept(x) - x, 0, D)``: the distance to the row maximum over kept positions (``D`` = the
   largest code distance, ``qmax - qmin`` of the input).
2. ``e = exp_int(d)`` with value ``~ E * exp(-s * d)`` (``E = e(0)``, at most :data:`EXP_LIMIT`) by one of
   :data:`METHODS`: ``table`` (a table of ``round(2**16 exp(-s d))``), ``shift`` (I-ViT ShiftExp) or
   ``poly`` (I-BERT i-exp). Masked positions get ``e = 0`` exactly.
3. ``S = sum(e)`` (int64), ``R = floor(2**K / max(S, 1))`` with ``K =`` :data:`RECIPROCAL_BITS`: the ONE
   integer division per row. ``A = e * R`` is the probability in fixed point (``A / 2**K``); ``sum(A) <= 2**K``.
4. Output codes: uniform ``y = clamp(round_half_up(A * steps / 2**K) + zp, qmin, qmax)`` (scale
   ``1 / steps``, ``steps = qmax - zp``), or log codes (:func:`log2_codes`, :func:`log_sqrt2_codes`).

Bounds: ``S <= T * E <= 2**40`` (:data:`SUM_LIMIT`, ``T`` the row length) keeps ``R``'s relative floor
error below ``2**-14`` and ``A * steps < 2**62``; a fully masked row has ``S = 0``, so ``R = 2**K`` and every
probability is 0 (its float Softmax would be uniform or NaN). Worked example (uniform uint8 output)::

    >>> x = np.array([[10, 9, 0, 12]])
    >>> c = table_constants(0.25, 256)
    >>> a = probabilities(x, c)
    >>> uniform_codes(a, 255, 0, 0, 255)
    array([[ 73,  57,   6, 120]])
    >>> np.round(255 * softmax_float(0.25 * x), 2)
    array([[ 72.66,  56.59,   5.96, 119.79]])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "METHODS",
    "EXP_BITS",
    "EXP_LIMIT",
    "SUM_LIMIT",
    "RECIPROCAL_BITS",
    "TableExp",
    "ShiftExp",
    "PolyExp",
    "table_constants",
    "shift_constants",
    "poly_constants",
    "candidates",
    "default_constants",
    "distances",
    "exp_int",
    "probabilities",
    "uniform_codes",
    "log2_thresholds",
    "log_sqrt2_thresholds",
    "log2_codes",
    "log_sqrt2_codes",
    "log_code_count",
    "log_attention",
    "softmax_float",
    "mse",
    "choose",
]

METHODS = ("table", "shift", "poly")
#: fixed-point bits of the exponential table: ``e(d) = round(2**EXP_BITS * exp(-s * d))``.
EXP_BITS = 16
#: largest ``e(0)`` of any method: exponentials and the poly's square stay in int32.
EXP_LIMIT = 2**30
#: largest row sum ``T * e(0)``: the reciprocal keeps 14 significant bits, ``A * 255`` stays in int64.
SUM_LIMIT = 2**40
#: ``R = floor(2**RECIPROCAL_BITS / S)``.
RECIPROCAL_BITS = 54
#: masked positions' stand-in for the row maximum (below any int8/uint8 code minus the zero point).
_LOW = -(2**20)
#: the largest input up-scaling shift the shift/poly methods consider.
MAX_UPSCALE = 8
#: I-BERT's second-order fit of exp on (-ln2, 0]: ``exp(p) ~ a (p + b)**2 + c``.
POLY_A, POLY_B, POLY_C = 0.3585, 1.353, 0.344
#: the largest shift amount of qc.ShiftRight on int32 (``shift < 31``).
_MAX_SHIFT32 = 30


@dataclass(frozen=True)
class TableExp:
    """``e = table[d]`` (int32 table indexed by the code distance)."""

    table: np.ndarray

    @property
    def e0(self) -> int:
        return int(self.table[0])

    def record(self) -> dict:
        return {"exp_bits": EXP_BITS, "entries": int(self.table.size)}


@dataclass(frozen=True)
class ShiftExp:
    """I-ViT ShiftExp with an input up-scaling shift ``m``: ``dm = d << m`` (scale ``s / 2**m``),
    ``t = dm + (dm >> 1) - (dm >> 4)`` (``~ 1.4375 dm``, log2(e) by shifts), ``x0 = floor(2**m / s)`` (the
    integer standing for 1 in t's units), ``q = t // x0``, ``r = t - q x0``,
    ``e = ((x0 - (r >> 1)) << n) >> min(q, 30)``: ``2**-r/x0 ~ 1 - r/(2 x0)``, then ``2**(n-q)`` by shifts
    (past ``q = n`` the right shift keeps halving towards 0 instead of I-ViT's clamp at ``q = n``)."""

    m: int
    n: int
    x0: int

    @property
    def e0(self) -> int:
        return self.x0 << self.n

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PolyExp:
    """I-BERT i-exp with an input up-scaling shift ``m``: ``dm = d << m`` (scale ``s' = s / 2**m``),
    ``x0 = floor(ln2 / s')``, ``z = dm // x0``, ``r = dm - z x0`` (``p = -r s'`` in (-ln2, 0]),
    ``e = ((b_int - r)**2 + c_int) >> min(z, 30)`` with ``b_int = floor(b / s')``,
    ``c_int = floor(c / (a s'**2))``: ``L(p) = a (p + b)**2 + c`` at scale ``a s'**2``."""

    m: int
    x0: int
    b_int: int
    c_int: int

    @property
    def e0(self) -> int:
        return self.b_int**2 + self.c_int

    def record(self) -> dict:
        return asdict(self)


Constants = TableExp | ShiftExp | PolyExp


def table_constants(scale: float, codes: int) -> TableExp:
    """The exponential table for an input of ``codes`` codes at ``scale``.

    >>> table_constants(0.5, 4).table
    array([65536, 39750, 24109, 14623], dtype=int32)
    """
    return TableExp(np.rint(2.0**EXP_BITS * np.exp(-np.float64(scale) * np.arange(codes))).astype(np.int32))


def shift_constants(scale: float, m: int, n: int) -> ShiftExp:
    """ShiftExp constants; ``x0 = floor(2**m / scale)``.

    >>> shift_constants(0.1, 2, 15)
    ShiftExp(m=2, n=15, x0=40)
    """
    return ShiftExp(m, n, int(math.floor(2.0**m / scale)))


def poly_constants(scale: float, m: int) -> PolyExp:
    """i-exp constants at the up-scaled input scale ``scale / 2**m``.

    >>> poly_constants(0.1, 2)
    PolyExp(m=2, x0=27, b_int=54, c_int=1535)
    """
    s = scale / 2.0**m
    return PolyExp(m, int(math.floor(math.log(2.0) / s)), int(math.floor(POLY_B / s)),
                   int(math.floor(POLY_C / (POLY_A * s * s))))


def _limit(row: int) -> int:
    return min(EXP_LIMIT, SUM_LIMIT // max(row, 1))


def candidates(method: str, scale: float, codes: int, row: int) -> list[Constants]:
    """Every admissible constant set of ``method`` for rows of ``row`` elements (``T e(0) <= 2**40``).

    Empty when none fits (the row is too long); ``table`` has exactly one.
    """
    limit = _limit(row)
    if method == "table":
        table = table_constants(scale, codes)
        return [table] if table.e0 <= limit else []
    found: list[Constants] = []
    for m in range(MAX_UPSCALE + 1):
        if (codes - 1) << m >= 2**27:  # dm and t stay in int32
            break
        if method == "shift":
            x0 = shift_constants(scale, m, 0).x0
            if x0 < 2:
                continue
            top = (limit // x0).bit_length() - 1
            found += [shift_constants(scale, m, n) for n in range(max(0, top - 6), top + 1)]
        elif method == "poly":
            c = poly_constants(scale, m)
            if c.x0 >= 1 and c.e0 <= limit:
                found.append(c)
        else:
            raise ValueError(f"unknown Softmax method {method!r}; expected one of {METHODS}")
    return found


def default_constants(method: str, scale: float, codes: int, row: int) -> Constants | None:
    """The constants used without calibration samples: the best on synthetic rows (uniform random codes)."""
    rows = np.random.default_rng(0).integers(0, codes, size=(64, max(2, min(row, 64))))
    return choose(method, scale, codes, row, rows, None)[0]


def distances(x: np.ndarray, keep: np.ndarray | None, codes: int) -> np.ndarray:
    """``clip(max over kept positions of x - x, 0, codes - 1)`` in int32 (step 1).

    >>> distances(np.array([[3, 7, 5]]), np.array([[True, False, True]]), 256)
    array([[2, 0, 0]], dtype=int32)
    """
    xi = np.asarray(x).astype(np.int32)
    kept = xi if keep is None else np.where(keep, xi, np.int32(_LOW))
    d = kept.max(axis=-1, keepdims=True) - xi
    return d if keep is None else np.clip(d, 0, codes - 1).astype(np.int32)


def exp_int(d: np.ndarray, c: Constants) -> np.ndarray:
    """``e ~ e(0) * exp(-s d)`` in int32 (step 2).

    >>> d = np.array([0, 1, 10, 40])
    >>> exp_int(d, shift_constants(0.1, 2, 15)).tolist(), exp_int(d, poly_constants(0.1, 2)).tolist()
    ([1310720, 1212416, 507904, 25600], [4451, 4035, 1608, 74])
    >>> np.round(np.exp(-0.1 * d), 4).tolist()
    [1.0, 0.9048, 0.3679, 0.0183]
    """
    d = np.asarray(d).astype(np.int32)
    if isinstance(c, TableExp):
        return c.table[d]
    dm = d << c.m
    if isinstance(c, ShiftExp):
        t = dm + (dm >> 1) - (dm >> 4)
        q = t // c.x0
        r = t - q * c.x0
        v = (c.x0 - (r >> 1)) << c.n
        return (v >> np.minimum(q, _MAX_SHIFT32)).astype(np.int32)
    z = dm // c.x0
    r = dm - z * c.x0
    w = c.b_int - r
    return ((w * w + c.c_int) >> np.minimum(z, _MAX_SHIFT32)).astype(np.int32)


def probabilities(x: np.ndarray, c: Constants, keep: np.ndarray | None = None, codes: int = 256) -> np.ndarray:
    """Fixed-point probabilities ``A = e * floor(2**K / max(S, 1))`` (int64, ``A / 2**K ~ softmax``).

    ``codes`` is the number of input codes (``D + 1``); masked positions (``keep`` False) give 0 exactly.
    """
    x = np.asarray(x)
    if keep is not None:
        keep = np.broadcast_to(keep, x.shape)
    e = exp_int(distances(x, keep, codes), c).astype(np.int64)
    if keep is not None:
        e = np.where(keep, e, np.int64(0))
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)
    return e * (np.int64(2**RECIPROCAL_BITS) // total)


def uniform_codes(a: np.ndarray, steps: int, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """``clamp(floor((A * steps + 2**(K-1)) / 2**K) + zp, qmin, qmax)``: qc.Requantize of ``A``.

    >>> uniform_codes(np.array([2**53, 2**54]), 255, 0, 0, 255)
    array([128, 255])
    """
    y = (np.asarray(a, np.int64) * np.int64(steps) + np.int64(2 ** (RECIPROCAL_BITS - 1))) >> RECIPROCAL_BITS
    return np.clip(y + zp, qmin, qmax)


def log_code_count(bits: int) -> int:
    """``Q = 2**bits - 1``: codes ``0 .. Q-1`` are values, code ``Q`` means probability 0."""
    return 2**bits - 1


def log2_thresholds(bits: int) -> np.ndarray:
    """``T_j = floor(2**(K - j - 1/2)) + 1`` for j < Q: ``A < T_j`` iff ``A / 2**K < 2**-(j + 1/2)``, exactly
    (``2**(2K-2j-1)`` is no square, so ``A < sqrt`` iff ``A <= isqrt``).

    >>> int(log2_thresholds(4)[0]) == math.isqrt(2**107) + 1
    True
    """
    k = RECIPROCAL_BITS
    return np.array([_root(2 * k - 2 * j - 1, 2) + 1 for j in range(log_code_count(bits))], np.int64)


def log_sqrt2_thresholds(bits: int) -> np.ndarray:
    """``T_j = floor(2**(K - (2j + 1)/4)) + 1``: ``A < T_j`` iff ``A / 2**K < 2**-((j + 1/2) / 2)``, exactly."""
    k = RECIPROCAL_BITS
    return np.array([_root(4 * k - 2 * j - 1, 4) + 1 for j in range(log_code_count(bits))], np.int64)


def _root(exponent: int, degree: int) -> int:
    """``floor(2**(exponent / degree))`` exactly, for degree 2 or 4 (0 below ``2**0``)."""
    if exponent < 0:
        return 0
    root = math.isqrt(2**exponent)
    return root if degree == 2 else math.isqrt(root)


def log2_codes(a: np.ndarray, bits: int) -> np.ndarray:
    """FQ-ViT log2 codes ``q = min(round(-log2(A / 2**K)), Q)`` rounded in the log domain (``Q`` = zero).

    ``q`` counts the thresholds ``A`` is below, ``q = #{j < Q : A < T_j}``.

    >>> k = RECIPROCAL_BITS
    >>> log2_codes(np.array([2**k, 2**k // 2, 2**(k - 3) * 3 // 2, 0]), 4).tolist()
    [0, 1, 2, 15]
    """
    return _count_below(a, log2_thresholds(bits))


def log_sqrt2_codes(a: np.ndarray, bits: int) -> np.ndarray:
    """RepQ-ViT log-sqrt2 codes ``q = min(round(-2 log2(A / 2**K)), Q)`` (code ``Q`` = zero).

    >>> k = RECIPROCAL_BITS
    >>> log_sqrt2_codes(np.array([2**k, 2**k // 2, int(2**(k - 1.5)), 0]), 4).tolist()
    [0, 2, 3, 15]
    """
    return _count_below(a, log_sqrt2_thresholds(bits))


def _count_below(a: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.int64)
    return (a[..., None] < thresholds).sum(axis=-1).astype(np.int32)


def log_attention(codes: np.ndarray, v: np.ndarray, quantizer: str, bits: int, kmax: int) -> tuple:
    """The shift-based A·V of log codes ``codes`` [.., Ti, Tj] and centered ``v`` [.., Tj, C] (int32).

    log2: ``acc = sum_j v_j << (kmax - q_j)`` over codes ``q_j <= kmax`` (others, and the zero code, add
    nothing), so ``A·V ~ acc / 2**kmax``; returns ``(acc,)``. log-sqrt2: code ``q`` is ``2**-(q/2)`` =
    ``2**-ceil(q/2)`` times ``sqrt(2)`` when odd; even and odd codes with ``ceil(q/2) <= kmax`` are summed
    apart, ``A·V ~ (even + sqrt(2) odd) / 2**kmax``; returns ``(even, odd)``.

    >>> q = np.array([[0, 1, 15]])
    >>> v = np.array([[4], [8], [100]])
    >>> log_attention(q, v, "log2", 4, 2)
    (array([[32]], dtype=int32),)
    >>> log_attention(q, v, "log-sqrt2", 4, 2)
    (array([[16]], dtype=int32), array([[16]], dtype=int32))
    """
    q = np.asarray(codes).astype(np.int32)[..., :, :, None]
    v = np.asarray(v).astype(np.int32)[..., None, :, :]
    zero = log_code_count(bits)
    exponent = q if quantizer == "log2" else (q + 1) >> 1
    live = (q < zero) & (exponent <= kmax)
    terms = np.where(live, v << np.clip(kmax - exponent, 0, kmax), 0).astype(np.int32)
    if quantizer == "log2":
        return (terms.sum(axis=-2, dtype=np.int32),)
    odd = (q & 1) == 1
    return (np.where(odd, 0, terms).sum(axis=-2, dtype=np.int32), np.where(odd, terms, 0).sum(axis=-2, dtype=np.int32))


def softmax_float(x: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The float64 Softmax over the last axis, masked positions 0 (a fully masked row is all 0)."""
    x = np.asarray(x, np.float64)
    keep = np.ones(x.shape, bool) if keep is None else np.broadcast_to(keep, x.shape)
    peak = np.where(keep, x, -np.inf).max(axis=-1, keepdims=True)
    e = np.where(keep, np.exp(np.where(keep, x - np.where(np.isfinite(peak), peak, 0), 0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def mse(x: np.ndarray, keep: np.ndarray | None, scale: float, c: Constants, codes: int) -> float:
    """Mean squared error of ``A / 2**K`` against the float Softmax of ``scale * x`` (probability units)."""
    got = probabilities(x, c, keep, codes).astype(np.float64) / 2.0**RECIPROCAL_BITS
    return float(np.mean((got - softmax_float(scale * np.asarray(x, np.float64), keep)) ** 2))


def choose(method: str, scale: float, codes: int, row: int, x: np.ndarray,
           keep: np.ndarray | None) -> tuple[Constants | None, float | None]:
    """The admissible constants of ``method`` with the smallest :func:`mse` on codes ``x`` (rows on the last
    axis) and that error; ``(None, None)`` when no constant set fits rows of ``row`` elements."""
    best, error = None, None
    for c in candidates(method, scale, codes, row):
        err = mse(x, keep, scale, c, codes)
        if error is None or err < error:
            best, error = c, err
    return best, error
