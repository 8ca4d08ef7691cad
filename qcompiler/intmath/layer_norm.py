"""Integer square root, LayerNorm and L2 normalization over the last axis: the numpy references.

The integerize passes (``passes/integerize_layer_norm.py``, ``passes/integerize_l2_normalization.py``) emit
exactly this arithmetic as ONNX integer ops; their tests compare both bit for bit. No float square root is
used anywhere (I-BERT's and I-ViT's published code call a float ``sqrt``): the square root is a fixed number
of integer Newton steps, :func:`isqrt`.

LayerNorm of a row of ``N`` codes ``c = x_q - zp_x`` (real ``x = s_x * c``)::

    y   = N*c - sum(c)                      # = N * (c - mean(c)), exact, int32
    v   = sum(y**2)                         # = N**3 * var(c), exact, int64 (< 2**53, see below)
    n   = v * 4**G + eps_int                # eps_int = max(1, round(4**G * eps * N**3 / s_x**2)), n >= 1
    k   = isqrt(n)                          # = floor(2**G * sqrt(N**3 * (var(x) + eps)) / s_x)
    R   = 2**P // k                         # one int64 division per row
    z   = round_shift(y * R, P - G - F)     # = round(2**F * (x - mean) / sqrt(N * (var + eps))), |z| <= 2**F
    out = clamp(round_shift(z * M_j + B_j, S) + zp_y, qmin, qmax)

with ``M_j ~ 2**S * gamma_j * sqrt(N) / (2**F * s_y)`` and ``B_j = round(2**S * beta_j / s_y)`` (one
common shift ``S``), so ``out ~ (gamma_j * (x - mean) / sqrt(var + eps) + beta_j) / s_y + zp_y``.

Ranges. ``|c - mean| <= W = qmax_x - qmin_x`` and, by Popoviciu's inequality, ``sum((c - mean)**2) <=
N * W**2 / 4``, so ``v = N**2 * sum((c - mean)**2) <= N**3 * W**2 / 4``. onnxruntime sums int64 in double,
which is exact below ``2**53``: the passes refuse ``N**3 * W**2 / 4 >= 2**53`` (8-bit codes, ``W = 255``:
``N <= 8213``). ``G`` is the largest shift with ``n < 2**61``, so ``k < 2**31``. Since ``n >= 4**G * y_i**2``,
``k >= 2**G * |y_i|`` and ``|y * R| <= 2**(P - G) <= 2**62``: every product stays inside int64, and
``|z| <= 2**F`` fits int32.

Error (against LayerNorm in exact arithmetic on the dequantized input, in output steps ``s_y``): ``k``
truncates ``sqrt(n)`` by less than one part in ``k`` (``k >= 2**G * sqrt(v)``, so at least ``2**22 /
sqrt(N)`` for any non-constant 8-bit row), ``R`` by one part in ``2**P / k >= 2**31``, ``z`` by half a unit of
``2**-F``, ``M_j`` by one part in ``2**(mantissa_bits - 1)``; with ``F = 24`` their sum stays far below one
output step for any ``|gamma_j| * sqrt(N) / s_y < 2**16``, so the result is the float LayerNorm rounded half
up, off by one step only where the float value lies within that margin of a rounding boundary. A row of equal
codes gives ``y = 0`` and exactly ``round(beta_j / s_y) + zp_y``, as the float LayerNorm does.

L2 normalization (``x / ||x||_2``) is the same without the mean and the affine step: ``n = max(4**G *
sum(c**2), 1)``, ``z = round_shift(c * (2**P // isqrt(n)), P - G - F)``, ``out = requantize(z, m, S)``. A row of
zeros gives ``n = 1``, ``z = 0`` and ``zp_y`` (onnxruntime's LpNormalization also returns 0 there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qcompiler.errors import OverflowRiskError
from qcompiler.qmath import dyadic, dyadic_common_shift, round_shift

__all__ = [
    "ISQRT_STEPS",
    "ISQRT_LIMIT",
    "POWERS_OF_TWO",
    "START_TABLE",
    "RECIPROCAL_BITS",
    "FRACTION_BITS",
    "SUM_LIMIT",
    "NormConstants",
    "isqrt_start",
    "isqrt",
    "layer_norm_constants",
    "l2_normalize_constants",
    "layer_norm",
    "l2_normalize",
]

#: Newton steps of :func:`isqrt` (enough for every ``n < 2**62``; see its proof).
ISQRT_STEPS = 6
#: :func:`isqrt` is exact for ``1 <= n < ISQRT_LIMIT``.
ISQRT_LIMIT = 2**62
#: ``2**0 .. 2**62``: ``count(n < POWERS_OF_TWO) = 63 - bit_length(n)``.
POWERS_OF_TWO = np.array([1 << i for i in range(63)], dtype=np.int64)
#: ``START_TABLE[63 - L] = 2**ceil(L / 2)``: the Newton start for an ``n`` of bit length ``L``.
START_TABLE = np.array([1 << ((63 - count + 1) // 2) for count in range(63)], dtype=np.int64)
#: ``P``: the row reciprocal is ``2**P // k``.
RECIPROCAL_BITS = 62
#: ``F``: fractional bits of the normalized value ``z``.
FRACTION_BITS = 24
#: largest prescaled square sum ``n`` (keeps ``k < 2**31`` and every product inside int64).
SCALED_LIMIT = 2**61
#: onnxruntime's int64 ReduceSum (in double) is exact below this.
SUM_LIMIT = 2**53


def isqrt_start(n: np.ndarray) -> np.ndarray:
    """``2**ceil(L / 2)`` where ``L`` is the bit length of ``n``: a start ``x0 >= sqrt(n)``, ``x0 <= 2 sqrt(n)``.

    ``L`` is found without logarithms, as the emitted graph does: ``63 - L`` is the number of powers of two
    ``2**0 .. 2**62`` greater than ``n`` (``Less`` + ``ReduceSum``), and ``START_TABLE`` is indexed by it.

    >>> isqrt_start(np.array([1, 2, 4, 15, 16, 17]))
    array([2, 2, 4, 4, 8, 8])
    """
    n = np.asarray(n, dtype=np.int64)
    count = np.sum(n[..., None] < POWERS_OF_TWO, axis=-1)
    return START_TABLE[count]


def isqrt(n: np.ndarray, steps: int = ISQRT_STEPS) -> np.ndarray:
    """``floor(sqrt(n))`` for int64 ``1 <= n < 2**62`` by ``steps`` integer Newton steps from :func:`isqrt_start`.

    Each step is ``x <- min(x, (x + n // x) // 2)``. Why ``ISQRT_STEPS = 6`` steps give ``r = floor(sqrt(n))``:

    * Start. ``n`` has bit length ``L``, so ``2**(L-1) <= n < 2**L`` and ``x0 = 2**ceil(L/2)`` satisfies
      ``x0**2 >= 2**L > n`` and ``x0 <= 2**((L+1)/2) <= 2 sqrt(n)``: the relative error
      ``e0 = x0 / sqrt(n) - 1`` is in ``[0, 1]``.
    * Real Newton. ``t_{k+1} = (t_k + n / t_k) / 2`` from ``t0 = x0`` has
      ``e_{k+1} = e_k**2 / (2 (1 + e_k)) <= e_k**2 / 2``, so ``e1 <= 1/4, e2 <= 1/40, e3 <= 3.1e-4,
      e4 <= 4.7e-8, e5 <= 1.1e-15, e6 <= 5.9e-31`` (the cruder ``e_k**2 / 2`` alone gives ``e6 <= 2**-63``).
    * Integer steps stay between ``r`` and ``t_k``. ``floor((x + floor(n / x)) / 2) = floor((x + n / x) / 2)``
      (``x`` is an integer), which is ``>= floor(sqrt(n)) = r`` by the AM-GM inequality; with the ``min`` and
      ``x0 >= r``, every ``x_k >= r``. While ``x_k >= sqrt(n)``: ``g(x) = (x + n / x) / 2`` increases on
      ``[sqrt(n), inf)``, so ``x_k <= t_k`` gives ``x_{k+1} <= g(x_k) <= g(t_k) = t_{k+1}``. Once
      ``x_k < sqrt(n)``, the integer ``x_k`` in ``[r, sqrt(n))`` is ``r``, and ``min`` keeps it there
      (without ``min``, ``n = (r+1)**2 - 1`` would oscillate between ``r`` and ``r + 1``).
    * End. Either some ``x_k`` already equals ``r``, or ``r <= x_6 <= t_6 = sqrt(n) (1 + e6)``.
      ``r + 1 - sqrt(n) >= (r+1) - sqrt((r+1)**2 - 1) > 1 / (2 (r+1))``, so ``t_6 < r + 1`` as soon as
      ``e6 < 1 / (2 (r+1)**2)``, which holds for ``(r+1)**2 <= 2**62 + 2**32 < 2**63`` since
      ``e6 < 2**-64``: ``x_6 = r``. For ``n < 2**53`` (onnxruntime's exact integer sums) one needs
      ``e_K < 2**-55``, and the cruder bound ``e6 <= 2**-63`` already gives it.

    The tests check every ``n < 2**20`` and random ``n < 2**62`` against :func:`math.isqrt`.

    >>> isqrt(np.array([1, 3, 4, 15, 16, 99, 2**52 + 5, 2**62 - 1]))
    array([         1,          1,          2,          3,          4,
                    9,   67108864, 2147483647])
    """
    n = np.asarray(n, dtype=np.int64)
    x = isqrt_start(n)
    for _ in range(steps):
        x = np.minimum(x, (x + n // x) // 2)
    return x


@dataclass(frozen=True)
class NormConstants:
    """The compile-time integers of an integer LayerNorm or L2 normalization over rows of ``length``.

    ``n = max(square_sum * 4**prescale_bits + eps_int, 1)``, ``k = isqrt(n)``, ``R = 2**reciprocal_bits // k``,
    ``z = round_shift(y * R, normalize_shift)``, ``out = clamp(round_shift(z * multipliers + biases, shift)
    + zp_y, qmin, qmax)``.
    """

    length: int
    prescale_bits: int
    eps_int: int
    multipliers: np.ndarray
    biases: np.ndarray
    shift: int
    reciprocal_bits: int = RECIPROCAL_BITS
    fraction_bits: int = FRACTION_BITS
    steps: int = ISQRT_STEPS

    @property
    def normalize_shift(self) -> int:
        """``P - G - F``: the rounding shift that leaves ``F`` fractional bits in ``z``."""
        return self.reciprocal_bits - self.prescale_bits - self.fraction_bits

    def summary(self) -> dict:
        """The scalar constants, as JSON-able ints (for :func:`qcompiler.nonlinear.record`)."""
        return {
            "P": self.reciprocal_bits, "F": self.fraction_bits, "K": self.steps, "G": self.prescale_bits,
            "shift": self.shift, "normalize_shift": self.normalize_shift, "eps_int": self.eps_int,
            "N": self.length,
        }  # fmt: skip


def _prescale_bits(largest_sum: float, eps_real: float, what: str) -> int:
    """The largest ``G`` with ``4**G * (largest_sum + eps_real) + 1 < SCALED_LIMIT``."""
    total = largest_sum + eps_real
    for bits in range(31, -1, -1):
        if 4.0**bits * total + 1.0 < SCALED_LIMIT:
            return bits
    raise OverflowRiskError(f"{what}: epsilon / s_x**2 is too large for an int64 square sum ({total:.3g})")


def layer_norm_constants(
    length: int, x_scale: float, code_width: int, eps: float, gamma: np.ndarray, beta: np.ndarray,
    y_scale: float, mantissa_bits: int = 31, what: str = "LayerNormalization",
) -> NormConstants:
    """Constants of :func:`layer_norm` for rows of ``length`` codes spanning at most ``code_width`` steps.

    Raises :class:`OverflowRiskError` (naming ``what``) when the square sum could reach ``2**53``.

    >>> k = layer_norm_constants(4, 0.1, 255, 1e-5, np.ones(4), np.zeros(4), 0.02)
    >>> k.prescale_bits, k.eps_int, k.normalize_shift, k.shift
    (20, 70368744178, 18, 48)
    """
    n = int(length)
    largest = n**3 * code_width**2 / 4.0
    if n**3 * code_width**2 >= 4 * SUM_LIMIT:
        limit = round((4.0 * SUM_LIMIT / code_width**2) ** (1.0 / 3.0)) + 1
        while limit**3 * code_width**2 >= 4 * SUM_LIMIT:
            limit -= 1
        raise OverflowRiskError(
            f"{what}: rows of {n} elements of {code_width + 1} codes could give a square sum of "
            f"{largest:.3g} >= 2**53 (onnxruntime's int64 sums are exact only below); at most {limit} elements"
        )
    eps_real = float(eps) * n**3 / float(x_scale) ** 2
    bits = _prescale_bits(largest, eps_real, what)
    eps_int = max(1, int(math.floor(4.0**bits * eps_real + 0.5)))
    gamma = np.broadcast_to(np.asarray(gamma, np.float64).reshape(-1), (n,))
    beta = np.broadcast_to(np.asarray(beta, np.float64).reshape(-1), (n,))
    ratios = gamma * math.sqrt(n) / (2.0**FRACTION_BITS * float(y_scale))
    if np.max(np.abs(ratios)) > 0:
        multipliers, shift = dyadic_common_shift(ratios, mantissa_bits)
    else:
        multipliers, shift = np.zeros(n, np.int64), mantissa_bits
    while True:
        biases = np.floor(beta / float(y_scale) * 2.0**shift + 0.5)
        largest_acc = 2.0**FRACTION_BITS * float(np.max(np.abs(multipliers))) + float(np.max(np.abs(biases)))
        if largest_acc < 2.0**62:
            break
        shift -= 1  # a huge beta / s_y: give up multiplier precision rather than overflow
        if shift < 1:
            raise OverflowRiskError(f"{what}: beta / s_y is too large for an int64 accumulator")
        multipliers = np.floor(ratios * 2.0**shift + 0.5).astype(np.int64)
    return NormConstants(n, bits, eps_int, multipliers.astype(np.int64), biases.astype(np.int64), int(shift))


def l2_normalize_constants(
    length: int, code_max: int, y_scale: float, mantissa_bits: int = 31, what: str = "LpNormalization"
) -> NormConstants:
    """Constants of :func:`l2_normalize` for rows of ``length`` codes with ``|c| <= code_max``.

    >>> k = l2_normalize_constants(3, 255, 1 / 127)
    >>> k.prescale_bits, k.normalize_shift, k.multipliers, k.shift
    (21, 17, array([2130706432]), 48)
    """
    largest = float(length) * code_max**2
    if largest >= SUM_LIMIT:
        raise OverflowRiskError(f"{what}: rows of {length} elements could give a square sum >= 2**53")
    bits = _prescale_bits(largest, 0.0, what)
    multiplier, shift = dyadic(1.0 / (2.0**FRACTION_BITS * float(y_scale)), mantissa_bits)
    return NormConstants(int(length), bits, 0, multiplier, np.zeros(1, np.int64), int(shift[0]))


def _normalized(y: np.ndarray, square_sum: np.ndarray, k: NormConstants) -> np.ndarray:
    n = np.maximum(square_sum * (1 << 2 * k.prescale_bits) + k.eps_int, 1)
    root = isqrt(n, k.steps)
    reciprocal = (np.int64(1) << k.reciprocal_bits) // root
    z = round_shift(y * reciprocal, k.normalize_shift)
    return np.clip(z, -(2**31), 2**31 - 1)


def layer_norm(c: np.ndarray, k: NormConstants, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Integer LayerNorm over the last axis of centered codes ``c = x_q - zp_x``; int64 output codes.

    >>> k = layer_norm_constants(4, 0.1, 255, 1e-5, np.ones(4), np.zeros(4), 0.02)
    >>> layer_norm(np.array([[-10, 0, 10, 20], [3, 3, 3, 3]]), k, 0, -128, 127)
    array([[-67, -22,  22,  67],
           [  0,   0,   0,   0]])

    (The float LayerNorm of the first row, ``x = [-1, 0, 1, 2]``, is ``[-1.342, -0.447, 0.447, 1.342]``,
    i.e. codes ``[-67.08, -22.36, 22.36, 67.08]`` at ``s_y = 0.02``.)
    """
    c = np.asarray(c, dtype=np.int64)
    y = k.length * c - c.sum(axis=-1, keepdims=True)
    z = _normalized(y, (y * y).sum(axis=-1, keepdims=True), k)
    acc = z * k.multipliers + k.biases
    return np.clip(round_shift(acc, k.shift) + zero_point, qmin, qmax)


def l2_normalize(c: np.ndarray, k: NormConstants, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Integer ``x / ||x||_2`` over the last axis of centered codes ``c``; int64 output codes.

    >>> k = l2_normalize_constants(3, 255, 1 / 127)
    >>> l2_normalize(np.array([[3, 4, 0], [0, 0, 0]]), k, 0, -127, 127)
    array([[ 76, 102,   0],
           [  0,   0,   0]])

    (``[3, 4, 0] / 5 = [0.6, 0.8, 0]``, i.e. codes ``[76.2, 101.6, 0]`` at ``s_y = 1/127``.)
    """
    c = np.asarray(c, dtype=np.int64)
    z = _normalized(c, (c * c).sum(axis=-1, keepdims=True), k)
    return np.clip(round_shift(z * k.multipliers, k.shift) + zero_point, qmin, qmax)
