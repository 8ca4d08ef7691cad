"""The ONNX bodies of qc's integer functions, run by onnxruntime, agree bit for bit with their reference.

One model per dtype combination is built once and reused; Hypothesis varies only the values fed to it.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from core_testkit import PROPERTY, onnx_model, session
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qcompiler import intops
from qcompiler.qmath import DTYPE_RANGES, MAX_SHIFT, requantize

OUT_DTYPES = ("uint8", "int8", "int32")


@functools.cache
def requantize_session(x_dtype: str, out_dtype: str):
    """``y = qc.Requantize<to=out_dtype>(x [N, C], multiplier [C], shift [C], zero_point, qmin, qmax)``."""
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype))
    return session(
        onnx_model(
            f"""
            agraph ({x_dtype}[N, C] x, int64[C] multiplier, int64[C] shift, int64 zero_point, int64 qmin,
                    int64 qmax) => ({out_dtype}[N, C] y) {{
                y = {intops.DOMAIN}.Requantize <to = {to}> (x, multiplier, shift, zero_point, qmin, qmax)
            }}
            """
        )
    )


@functools.cache
def lookup_session(x_dtype: str, table_dtype: str):
    """``y = qc.LookupTable(x [N, C], table [T], index_offset [C])``."""
    return session(
        onnx_model(
            f"""
            agraph ({x_dtype}[N, C] x, {table_dtype}[T] table, int32[C] index_offset) => ({table_dtype}[N, C] y) {{
                y = {intops.DOMAIN}.LookupTable (x, table, index_offset)
            }}
            """
        )
    )


@st.composite
def requantize_feeds(draw):
    """Accumulators and per-channel parameters with ``|x * multiplier| < 2**62`` (the documented domain)."""
    x_dtype = draw(st.sampled_from(["int32", "int64"]))
    out_dtype = draw(st.sampled_from(OUT_DTYPES))
    x_bits = draw(st.integers(1, 31 if x_dtype == "int32" else 61))
    m_bits = 62 - x_bits
    rows, channels = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    x = draw(arrays(np.dtype(x_dtype), (rows, channels), elements=st.integers(-(2**x_bits) + 1, 2**x_bits - 1)))
    multiplier = draw(arrays(np.int64, channels, elements=st.integers(-(2**m_bits) + 1, 2**m_bits - 1)))
    shift = draw(arrays(np.int64, channels, elements=st.integers(1, MAX_SHIFT)))
    lo, hi = DTYPE_RANGES[out_dtype]
    qmin, qmax = sorted(draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2)))
    feeds = {"x": x, "multiplier": multiplier, "shift": shift}
    feeds |= {k: np.array(v, np.int64) for k, v in [("zero_point", draw(st.integers(lo, hi))), ("qmin", qmin), ("qmax", qmax)]}
    return x_dtype, out_dtype, feeds


@PROPERTY
@given(requantize_feeds())
def test_requantize_body_matches_qmath(case):
    x_dtype, out_dtype, feeds = case
    (got,) = requantize_session(x_dtype, out_dtype).run(None, feeds)
    expected = requantize(feeds["x"], feeds["multiplier"], feeds["shift"], int(feeds["zero_point"]),
                          int(feeds["qmin"]), int(feeds["qmax"]), out_dtype)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_requantize_body_rounds_ties_half_up(out_dtype):
    feeds = {
        "x": np.array([[-3, 3, -1, 1, -5, 5]], np.int32).reshape(6, 1),
        "multiplier": np.array([1], np.int64),
        "shift": np.array([1], np.int64),
        "zero_point": np.array(0, np.int64),
        "qmin": np.array(-100, np.int64) if out_dtype != "uint8" else np.array(0, np.int64),
        "qmax": np.array(100, np.int64),
    }
    (got,) = requantize_session("int32", out_dtype).run(None, feeds)
    expected = [-1, 2, 0, 1, -2, 3] if out_dtype != "uint8" else [0, 2, 0, 1, 0, 3]
    assert got.ravel().tolist() == expected


#: index offset that maps a value of each input dtype onto the start of its 256-entry table.
_BASE = {"uint8": 0, "int8": 128}


@st.composite
def lookup_feeds(draw):
    """Per-channel 256-entry tables laid end to end, selected by a per-channel index offset."""
    x_dtype = draw(st.sampled_from(["uint8", "int8"]))
    table_dtype = draw(st.sampled_from(OUT_DTYPES))
    rows, channels = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(arrays(np.dtype(x_dtype), (rows, channels)))
    table = draw(arrays(np.dtype(table_dtype), 256 * channels))
    offset = (_BASE[x_dtype] + 256 * np.arange(channels)).astype(np.int32)
    return x_dtype, table_dtype, {"x": x, "table": table, "index_offset": offset}


@PROPERTY
@given(lookup_feeds())
def test_lookup_table_body_matches_take(case):
    x_dtype, table_dtype, feeds = case
    (got,) = lookup_session(x_dtype, table_dtype).run(None, feeds)
    expected = np.take(feeds["table"], feeds["x"].astype(np.int32) + feeds["index_offset"])
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_function_protos_cover_the_documented_functions():
    protos = intops.function_protos()
    assert [(p.domain, p.name) for p in protos] == [(intops.DOMAIN, name) for name in intops.QC_FUNCTIONS]
    for proto in protos:
        body_ops = {node.op_type for node in proto.node} - {"Constant"}
        assert body_ops <= intops.STANDARD_INTEGER_OPS, f"{proto.name} uses ops outside the integer set"


def test_standard_integer_ops_exist_in_the_onnx_opset():
    unknown = sorted(op for op in intops.STANDARD_INTEGER_OPS if not onnx.defs.has(op, intops.ONNX_OPSET))
    assert unknown == []


@pytest.mark.parametrize(
    ("domain", "op_type", "expected"),
    [
        ("", "Add", True),
        ("ai.onnx", "ConvInteger", True),
        ("", "MatMulInteger", True),
        ("", "Conv", False),
        ("", "MatMul", True),  # int32 x int32 (activation x activation)
        ("", "QuantizeLinear", False),
        ("", "DequantizeLinear", False),
        ("", "Softmax", False),
        ("qc", "Requantize", True),
        ("qc", "LookupTable", True),
        ("qc", "Add", False),
        ("", "Requantize", False),
        ("com.microsoft", "Requantize", False),
        ("com.microsoft", "QLinearConv", False),
    ],
)
def test_is_integer_op(domain, op_type, expected):
    assert intops.is_integer_op(domain, op_type) is expected


@functools.cache
def shift_session(dtype: str):
    """``left = qc.ShiftLeft(x, s)``, ``right = qc.ShiftRight(x, s)``."""
    return session(
        onnx_model(
            f"""
            agraph ({dtype}[N] x, {dtype}[N] s) => ({dtype}[N] left, {dtype}[N] right) {{
                left = {intops.DOMAIN}.ShiftLeft (x, s)
                right = {intops.DOMAIN}.ShiftRight (x, s)
            }}
            """
        )
    )


@PROPERTY
@given(st.sampled_from(["int32", "int64"]).flatmap(
    lambda dtype: st.tuples(
        st.just(dtype),
        arrays(np.dtype(dtype), 8),
        arrays(np.dtype(dtype), 8, elements=st.integers(0, np.iinfo(dtype).bits - 2)),
    )))
def test_shift_bodies_are_arithmetic_shifts(case):
    """The ONNX bodies (Pow, Mul, floor Mod, Div) are numpy's shifts: wrapping left, flooring right."""
    dtype, x, s = case
    left, right = shift_session(dtype).run(None, {"x": x, "s": s})
    np.testing.assert_array_equal(left, np.left_shift(x, s))
    np.testing.assert_array_equal(right, np.right_shift(x, s))
