"""Hypothesis: qc.Requantize, Div and Mod are bit-exact with onnxruntime on arbitrary integers.

Each module is compiled once; Hypothesis varies the input values only (compiles cost ~0.3 s each).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from targets_testkit import ONNX_DTYPES, assert_bit_exact, compile_region, node, ort_session, region

from qcompiler import intops, qmath

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: per-channel shifts covering the whole range qc emits (1..MAX_SHIFT).
SHIFTS = np.array([1, 2, 7, 15, 31, 40, qmath.MAX_SHIFT], dtype=np.int64)
#: output dtype -> clamp range of the Requantize node producing it.
REQUANT_OUTPUTS = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}
INT32 = st.integers(-(2**31), 2**31 - 1)


def requantize_model():
    """``x`` int32 [4, 7] rescaled per channel (last axis) by graph-input multipliers and zero point."""
    nodes, inits = [], {"shift": SHIFTS}
    for dtype, (qmin, qmax) in REQUANT_OUTPUTS.items():
        inits |= {f"{dtype}_qmin": np.array(qmin, np.int64), f"{dtype}_qmax": np.array(qmax, np.int64)}
        nodes.append(
            node(
                "Requantize",
                ["x", "multiplier", "shift", "zero_point", f"{dtype}_qmin", f"{dtype}_qmax"],
                [f"y_{dtype}"],
                domain=intops.DOMAIN,
                to=ONNX_DTYPES[dtype],
            )
        )
    inputs = {
        "x": ("int32", (4, len(SHIFTS))),
        "multiplier": ("int64", (len(SHIFTS),)),
        "zero_point": ("int64", ()),
    }
    return region(nodes, inputs, [f"y_{d}" for d in REQUANT_OUTPUTS], inits)


@pytest.fixture(scope="module")
def requantize_compiled(tmp_path_factory):
    model = requantize_model()
    return ort_session(model), compile_region(model, tmp_path_factory.mktemp("requantize"))


@SETTINGS
@given(
    x=arrays(np.int32, (4, len(SHIFTS)), elements=INT32),
    multiplier=arrays(np.int64, (len(SHIFTS),), elements=st.integers(-(2**31) + 1, 2**31 - 1)),
    zero_point=st.integers(-300, 300),
)
def test_requantize_matches_onnxruntime_and_qmath(requantize_compiled, x, multiplier, zero_point):
    session, module = requantize_compiled
    feeds = {"x": x, "multiplier": multiplier, "zero_point": np.array(zero_point, np.int64)}
    assert_bit_exact(session, module, feeds)
    for (dtype, (qmin, qmax)), got in zip(REQUANT_OUTPUTS.items(), module.run(feeds), strict=True):
        np.testing.assert_array_equal(
            got, qmath.requantize(x, multiplier, SHIFTS, zero_point, qmin, qmax, dtype)
        )


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
