"""Hypothesis: qc.Requantize, Div and Mod are bit-exact with onnxruntime on arbitrary integers; and
requantization rounds exact ties and their neighbours half up, both in the generic lowering and in the fused
epilogue of the int8 GEMM kernels.

Each module is compiled once; Hypothesis varies the input values only (compiles cost ~0.3 s each).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from targets_testkit import (
    ONNX_DTYPES,
    assert_bit_exact,
    compile_region,
    node,
    ort_session,
    region,
    requantize,
    requantize_params,
)
from test_int8_kernels import INSTRUCTION_MCPUS
from tvm.tirx import PrimFunc

from qcompiler import intops, qmath
from qcompiler.targets import get_target
from qcompiler.targets.relax_lowering import lower

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: per-channel shifts covering the whole range qc emits (1..MAX_SHIFT).
SHIFTS = np.array([1, 2, 7, 15, 31, 40, qmath.MAX_SHIFT], dtype=np.int64)
#: output dtype -> clamp range of the Requantize node producing it.
REQUANT_OUTPUTS = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}
INT32 = st.integers(-(2**31), 2**31 - 1)


def requantize_model(shifts: np.ndarray, rows: int):
    """``x`` int32 [rows, C] rescaled per channel (last axis) by graph-input multipliers, with one graph-input
    zero point per output dtype."""
    nodes, inits = [], {"shift": shifts}
    for dtype, (qmin, qmax) in REQUANT_OUTPUTS.items():
        inits |= {f"{dtype}_qmin": np.array(qmin, np.int64), f"{dtype}_qmax": np.array(qmax, np.int64)}
        nodes.append(
            node(
                "Requantize",
                ["x", "multiplier", "shift", f"{dtype}_zero_point", f"{dtype}_qmin", f"{dtype}_qmax"],
                [f"y_{dtype}"],
                domain=intops.DOMAIN,
                to=ONNX_DTYPES[dtype],
            )
        )
    inputs = {
        "x": ("int32", (rows, len(shifts))),
        "multiplier": ("int64", (len(shifts),)),
        **{f"{dtype}_zero_point": ("int64", ()) for dtype in REQUANT_OUTPUTS},
    }
    return region(nodes, inputs, [f"y_{d}" for d in REQUANT_OUTPUTS], inits)


def assert_requantize_exact(compiled, shifts, x, multiplier, zero_points: dict) -> None:
    """The compiled module equals onnxruntime and :func:`qmath.requantize` on every output."""
    session, module = compiled
    feeds = {"x": x, "multiplier": multiplier}
    feeds |= {f"{dtype}_zero_point": np.array(zero_points[dtype], np.int64) for dtype in REQUANT_OUTPUTS}
    assert_bit_exact(session, module, feeds)
    for (dtype, (qmin, qmax)), got in zip(REQUANT_OUTPUTS.items(), module.run(feeds), strict=True):
        want = qmath.requantize(x, multiplier, shifts, zero_points[dtype], qmin, qmax, dtype)
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def requantize_compiled(tmp_path_factory):
    model = requantize_model(SHIFTS, rows=4)
    return ort_session(model), compile_region(model, tmp_path_factory.mktemp("requantize"))


@SETTINGS
@given(
    x=arrays(np.int32, (4, len(SHIFTS)), elements=INT32),
    multiplier=arrays(np.int64, (len(SHIFTS),), elements=st.integers(-(2**31) + 1, 2**31 - 1)),
    zero_point=st.integers(-300, 300),
)
def test_requantize_matches_onnxruntime_and_qmath(requantize_compiled, x, multiplier, zero_point):
    zero_points = dict.fromkeys(REQUANT_OUTPUTS, zero_point)
    assert_requantize_exact(requantize_compiled, SHIFTS, x, multiplier, zero_points)


# ---- rounding ties -------------------------------------------------------------------------------------

#: shift -> (accumulator, multiplier) pairs whose product is one below, at, and one above a rounding tie
#: ``u * 2**(shift-1)`` (u odd and below 256, so no output saturates), with multipliers as large as that
#: allows: from shift 24 on in qc's range [2**30, 2**31), mostly within 5% of 2**31 (2**31 - 1 itself at
#: shift 32).
#: Found by factoring ``u * 2**(shift-1) + d`` (sympy.divisors); a missing neighbour has no factors below
#: 2**31. Shift 62 has neither ties (a product of two such factors holds at most 2**60) nor neighbours
#: (2**61 - 1 is prime, 2**61 + 1 is 3 times a prime); its pairs are the closest products there are, 2 below
#: and 4 above the tie (an exhaustive search).
TIES = {
    1: [(1, 252), (1, 253), (1, 254)],
    7: [(1, 16191), (1, 16192), (1, 16193)],
    15: [(1, 4177919), (1, 4177920), (1, 4177921)],
    24: [(1, 2122317823), (1, 2122317824), (1, 2122317825)],
    31: [(65, 2130964543), (128, 2139095040), (99, 2136637771)],
    32: [(1, 2147483647), (256, 2122317824), (257, 2130771713)],
    36: [(2497, 2105342399), (4096, 2139095040), (1027, 2107754155)],
    40: [(7075, 2098008053), (65536, 2122317824), (11623, 2128453207)],
    44: [(95049, 2128482567), (1048576, 2139095040), (460087, 2083897479)],
    48: [(7035707, 2140355085), (16777216, 2122317824), (16622977, 2057345665)],
    52: [(1145257, 1966196071), (268435456, 2139095040), (131102413, 2146985477)],
    55: [(1225880801, 2130784479), (1610612736, 2113929216), (177112627, 2135942395)],
    58: [(738340563, 2147067557), (1073741824, 2013265920), (341459339, 2110283299)],
    60: [(536870912, 1073741824), (1073741824, 1610612736), (315916329, 1824726041)],
    61: [(538917981, 2139326475), (1073741824, 1073741824)],
    62: [(1073741825, 2147483646), (1263665316, 1824726041)],
}
TIE_SHIFTS = np.array([shift for shift, pairs in TIES.items() for _ in pairs], np.int64)
TIE_ACCUMULATORS, TIE_MULTIPLIERS = np.array([pair for pairs in TIES.values() for pair in pairs], np.int64).T
#: lane signs: every other lane negates both factors, so each side has negative accumulators and multipliers.
LANE_SIGNS = np.resize(np.array([1, -1], np.int64), len(TIE_SHIFTS))
#: product sign -> zero point per output dtype: the extreme that leaves the whole 0..+-128 range unclamped.
EXTREME_ZERO_POINTS = {1: {d: qmin for d, (qmin, _) in REQUANT_OUTPUTS.items()},
                       -1: {d: qmax for d, (_, qmax) in REQUANT_OUTPUTS.items()}}


def tie_lanes(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(accumulators, multipliers) of the tie table, all products of sign ``side``."""
    return side * LANE_SIGNS * TIE_ACCUMULATORS, LANE_SIGNS * TIE_MULTIPLIERS


def test_tie_table_holds_ties_and_their_neighbours():
    """Each product is ``u * 2**(s-1) + d`` with u odd below 256 and |d| <= 1 (d in {-2, 4} at shift 62)."""
    product = TIE_ACCUMULATORS * TIE_MULTIPLIERS
    u = 2 * (product >> TIE_SHIFTS) + 1
    offset = product - (u << (TIE_SHIFTS - 1))
    assert np.all(u < 256)
    assert set(offset[TIE_SHIFTS < 62]) == {-1, 0, 1} and set(offset[TIE_SHIFTS == 62]) == {-2, 4}
    assert set(u[offset == 0] % 4) == {1, 3}  # ties that half-even rounds down on each side (see below)


def assert_unsaturated(product: np.ndarray, zero_points: dict) -> None:
    """Every output of the tie lanes' ``product`` lies inside its clamp range before clamping."""
    for dtype, (qmin, qmax) in REQUANT_OUTPUTS.items():
        unclamped = qmath.round_shift(product, TIE_SHIFTS) + zero_points[dtype]
        assert np.all((qmin <= unclamped) & (unclamped <= qmax)), dtype


@pytest.fixture(scope="module")
def ties_compiled(tmp_path_factory):
    model = requantize_model(TIE_SHIFTS, rows=1)
    return ort_session(model), compile_region(model, tmp_path_factory.mktemp("ties"))


@pytest.mark.parametrize("side", [1, -1], ids=["positive", "negative"])
def test_requantize_rounds_ties_half_up(ties_compiled, side):
    """Exact ties and their +-1 neighbours at shifts 1..62, zero points at the extremes, nothing saturated.

    Each wrong rounding rule fails here: truncation toward zero and a shift without the half term round
    positive ties down; half-away-from-zero rounds negative ties down; half-even rounds down the positive ties
    with u % 4 == 1 (k + 0.5, k even) and the negative ones with u % 4 == 3; an off-by-one half term
    (2**(s-1) +- 1) or a double rounding (gemmlowp-style: round to 31 bits, then shift) rounds a tie or one of
    its neighbours the other way. (Checked by mutating the lowering: each rule fails at least one side.)
    """
    accumulators, multipliers = tie_lanes(side)
    assert_unsaturated(accumulators * multipliers, EXTREME_ZERO_POINTS[side])
    x = accumulators.astype(np.int32)[None]
    assert_requantize_exact(ties_compiled, TIE_SHIFTS, x, multipliers, EXTREME_ZERO_POINTS[side])


#: (side, dtype) of each chain of the fused model, in output order.
FUSED_CHAINS = [(side, dtype) for side in (1, -1) for dtype in ("int8", "uint8")]


#: which tie lanes each form of the epilogue gets: all shifts (64-bit form), or those >= 33 only (32-bit form).
EPILOGUE_FORMS = {"64-bit": TIE_SHIFTS >= 1, "high-word": TIE_SHIFTS >= 33}


def fused_ties_model(lanes: np.ndarray) -> tuple:
    """MatMulInteger -> Add(bias) -> Requantize per :data:`FUSED_CHAINS` entry, each fused into one GEMM
    kernel; the bias makes the accumulators at input ``a`` those of :func:`tie_lanes` (the ``lanes`` mask of
    them). Returns (model, a)."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (1, 16), dtype=np.uint8)
    w = rng.integers(-128, 128, (16, int(lanes.sum())), dtype=np.int8)
    nodes, inits = [], {"w": w}
    for i, (side, dtype) in enumerate(FUSED_CHAINS):
        accumulators, multipliers = (values[lanes] for values in tie_lanes(side))
        inits[f"bias{i}"] = (accumulators - a.astype(np.int64) @ w).astype(np.int32)
        inits |= requantize_params(f"rq{i}", multipliers, TIE_SHIFTS[lanes], EXTREME_ZERO_POINTS[side][dtype],
                                   *REQUANT_OUTPUTS[dtype])
        nodes += [
            node("MatMulInteger", ["a", "w"], [f"acc{i}"]),
            node("Add", [f"acc{i}", f"bias{i}"], [f"biased{i}"]),
            requantize(f"biased{i}", f"y{i}", f"rq{i}", to=dtype),
        ]
    return region(nodes, {"a": ("uint8", a.shape)}, [f"y{i}" for i in range(len(FUSED_CHAINS))], inits), a


def _half_dtypes(module) -> set[str]:
    """The dtypes of the ``half`` argument of the GEMM kernels in a lowered module."""
    return {str(param.dtype) for func in module.functions.values() if isinstance(func, PrimFunc)
            for param in func.params if getattr(param, "name", None) == "half"}


@pytest.mark.parametrize("form", list(EPILOGUE_FORMS))
@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
def test_fused_gemm_epilogue_rounds_ties_half_up(mcpu, form, tmp_path):
    """The tie table through the requantization epilogue of each dot-product family's GEMM kernels, in both
    forms of the epilogue (the 32-bit one needs every shift >= 33)."""
    lanes = EPILOGUE_FORMS[form]
    target = get_target("x86", mcpu=mcpu)
    model, a = fused_ties_model(lanes)
    lowered = lower(model, target.kernels())
    assert "int64" not in lowered["main"].script()  # every Requantize is in a kernel
    assert _half_dtypes(lowered) == {"int32" if form == "high-word" else "int64"}
    for side in (1, -1):
        assert_unsaturated(np.multiply(*tie_lanes(side)), EXTREME_ZERO_POINTS[side])
    module = target.load(tmp_path, target.compile(model, tmp_path))
    assert_bit_exact(model, module, {"a": a})
    for got, (side, dtype) in zip(module.run({"a": a}), FUSED_CHAINS, strict=True):
        accumulators, multipliers = (values[lanes] for values in tie_lanes(side))
        qmin, qmax = REQUANT_OUTPUTS[dtype]
        want = qmath.requantize(accumulators, multipliers, TIE_SHIFTS[lanes], EXTREME_ZERO_POINTS[side][dtype],
                                qmin, qmax, dtype)
        np.testing.assert_array_equal(got[0], want)


@settings(max_examples=2000, deadline=None)
@given(x=INT32, multiplier=st.integers(-(2**31) + 1, 2**31 - 1), shift=st.integers(33, qmath.MAX_SHIFT))
def test_high_word_requantization_identity(x, multiplier, shift):
    """The 32-bit form of the kernels' epilogue: ``(P + 2**(s-1)) >> s == ((P >> 32) + 2**(s-33)) >> (s-32)``
    for ``P = x * multiplier``, with the inner sum inside int32 (Python integers: exact)."""
    product = x * multiplier
    high = (product >> 32) + (1 << (shift - 33))
    assert -(2**31) <= high < 2**31
    assert (product + (1 << (shift - 1))) >> shift == high >> (shift - 32)


# ---- Div and Mod ---------------------------------------------------------------------------------------


def div_mod_model():
    """Div, Mod (floor) and Mod (fmod=1) on int8 and int32 tensors, the divisor being a tensor too."""
    nodes, outputs = [], []
    for dtype in ("int8", "int32"):
        for op, attrs in (("Div", {}), ("Mod", {}), ("Mod", {"fmod": 1})):
            out = f"{op}{attrs.get('fmod', '')}_{dtype}"
            nodes.append(node(op, [f"a_{dtype}", f"b_{dtype}"], [out], **attrs))
            outputs.append(out)
    return region(nodes, {f"{k}_{d}": (d, (16,)) for d in ("int8", "int32") for k in "ab"}, outputs)


@pytest.fixture(scope="module")
def div_mod_compiled(tmp_path_factory):
    model = div_mod_model()
    return ort_session(model), compile_region(model, tmp_path_factory.mktemp("div_mod"))


def nonzero(dtype):
    info = np.iinfo(dtype)
    return arrays(dtype, (16,), elements=st.integers(int(info.min), int(info.max)).filter(bool))


@SETTINGS
@given(
    a8=arrays(np.int8, (16,)),
    b8=nonzero(np.int8),
    a32=arrays(np.int32, (16,), elements=INT32),
    b32=nonzero(np.int32),
)
def test_div_mod_match_onnxruntime(div_mod_compiled, a8, b8, a32, b32):
    session, module = div_mod_compiled
    assert_bit_exact(session, module, {"a_int8": a8, "b_int8": b8, "a_int32": a32, "b_int32": b32})


def test_div_mod_minimum_by_minus_one_wraps_without_trapping(div_mod_compiled):
    """x86 idiv faults on ``min / -1``; onnxruntime wraps to ``min``; the compiled code must too."""
    session, module = div_mod_compiled
    feeds = {
        f"{k}_{d}": np.resize(np.array(v, d), 16)
        for d in ("int8", "int32")
        for k, v in (("a", [np.iinfo(d).min, np.iinfo(d).min, 7]), ("b", [-1, 1, -1]))
    }
    assert_bit_exact(session, module, feeds)
