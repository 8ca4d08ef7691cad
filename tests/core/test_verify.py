"""The integer-region verifier: what it accepts and rejects in final and in staged mode."""

from __future__ import annotations

import numpy as np
import pytest
from core_testkit import ir_model

from qcompiler.errors import QcError
from qcompiler.verify import IntegerRegionError, integer_region_problems, verify_integer_region

#: boundary quantization parameters and integer constants shared by the models below.
PARAMS = {
    "s": np.array(0.1, np.float32),
    "zp": np.array(128, np.uint8),
    "k": np.array(3, np.int32),
    "m": np.array([1 << 30], np.int64),
    "sh": np.array([31], np.int64),
    "zp64": np.array(128, np.int64),
    "lo": np.array(0, np.int64),
    "hi": np.array(255, np.int64),
    "two": np.array(2.0, np.float32),
    "w": np.full((4, 4, 1, 1), 0.5, np.float32),
}


def model(body: str, names: list[str] | None = None, out_shape: str = "1, 4, 2, 2"):
    """A model ``x [1, 4, 2, 2] -> y`` whose ``body`` (one node a line) computes ``y`` from ``x`` and :data:`PARAMS`.

    ``names`` names the nodes in order (the verifier reports nodes by name).
    """
    text = f"agraph (float[1, 4, 2, 2] x) => (float[{out_shape}] y) {{\n{body}\n}}"
    built = ir_model(text, **PARAMS)
    for node, name in zip(built.graph, names or [], strict=bool(names)):
        node.name = name
    return built


#: boundary Q, integer ops only (a standard op and a qc function), boundary DQ.
CLEAN = """
    xq = QuantizeLinear (x, s, zp)
    wide = Cast <to = 6> (xq)
    tripled = Mul (wide, k)
    yq = qc.Requantize <to = 2> (tripled, m, sh, zp64, lo, hi)
    y = DequantizeLinear (yq, s, zp)
"""
#: a float Mul between the boundary Q and DQ, reached through Casts.
FLOAT_MUL = """
    xq = QuantizeLinear (x, s, zp)
    xf = Cast <to = 1> (xq)
    doubled = Mul (xf, two)
    yq = Cast <to = 2> (doubled)
    y = DequantizeLinear (yq, s, zp)
"""
#: a QDQ island: DQ -> float Conv -> Q inside the region.
QDQ_ISLAND = """
    xq = QuantizeLinear (x, s, zp)
    xf = DequantizeLinear (xq, s, zp)
    conv = Conv (xf, w)
    cq = QuantizeLinear (conv, s, zp)
    y = DequantizeLinear (cq, s, zp)
"""
#: a float model: nothing is quantized yet.
FLOAT_MODEL = """
    conv = Conv (x, w)
    y = Relu (conv)
"""


def node_named(problems: list[str], name: str) -> list[str]:
    return [p for p in problems if f"{name} (" in p]


def test_clean_integer_model_passes_in_both_modes():
    clean = model(CLEAN, ["quant", "widen", "triple", "requant", "dequant"])
    assert integer_region_problems(clean) == []
    assert integer_region_problems(clean, staged=True) == []
    verify_integer_region(clean)


def test_final_mode_names_a_float_op_inside_the_region():
    bad = model(FLOAT_MUL, ["quant", "to_float", "float_mul", "to_uint8", "dequant"])
    problems = integer_region_problems(bad)
    assert node_named(problems, "float_mul"), problems
    assert all("float tensor" in p for p in node_named(problems, "float_mul"))
    assert not node_named(problems, "quant") and not node_named(problems, "dequant")
    with pytest.raises(IntegerRegionError, match="float_mul") as error:
        verify_integer_region(bad)
    assert isinstance(error.value, QcError)


def test_a_float_tensor_feeding_an_integer_op_is_reported_in_both_modes():
    bad = model(FLOAT_MUL, ["quant", "to_float", "float_mul", "to_uint8", "dequant"])
    for staged in (False, True):
        problems = node_named(integer_region_problems(bad, staged=staged), "to_uint8")
        assert problems == ["float tensor 'doubled' at to_uint8 (Cast) (doubled) -> (yq)"], staged


def test_staged_mode_accepts_a_qdq_island_but_final_mode_rejects_it():
    island = model(QDQ_ISLAND, ["quant", "inner_dq", "float_conv", "inner_q", "dequant"])
    assert integer_region_problems(island, staged=True) == []
    problems = integer_region_problems(island)
    for name in ("inner_dq", "float_conv", "inner_q"):
        assert node_named(problems, name), (name, problems)
    assert any(p.startswith("QDQ node inside the integer region: inner_dq") for p in problems)
    assert any(p.startswith("op outside qc's integer op set: float_conv") for p in problems)


def test_staged_mode_rejects_a_float_that_does_not_come_from_the_island():
    """A float graph input used inside the region without a boundary QuantizeLinear is not an island value."""
    bypass = """
    xq = QuantizeLinear (x, s, zp)
    xf = DequantizeLinear (xq, s, zp)
    mixed = Add (xf, x)
    yq = QuantizeLinear (mixed, s, zp)
    y = DequantizeLinear (yq, s, zp)
    """
    problems = integer_region_problems(model(bypass, ["quant", "inner_dq", "mixed_add", "inner_q", "dequant"]),
                                       staged=True)
    assert node_named(problems, "mixed_add") == ["float tensor 'xf' at mixed_add (Add) (xf, x) -> (mixed)",
                                                 "float tensor 'x' at mixed_add (Add) (xf, x) -> (mixed)",
                                                 "float tensor 'mixed' at mixed_add (Add) (xf, x) -> (mixed)"]
    assert len(problems) == 3


def test_staged_mode_skips_nodes_before_any_boundary_quantize():
    float_model = model(FLOAT_MODEL, ["conv", "relu"])
    assert integer_region_problems(float_model, staged=True) == []
    assert node_named(integer_region_problems(float_model), "conv")


def test_staged_mode_still_rejects_non_integer_ops_on_integer_tensors():
    body = """
    xq = QuantizeLinear (x, s, zp)
    idx = ArgMax <axis = 1, keepdims = 1> (xq)
    wide = Cast <to = 6> (idx)
    yq = Cast <to = 2> (wide)
    y = DequantizeLinear (yq, s, zp)
    """
    bad = model(body, ["quant", "argmax", "widen", "narrow", "dequant"], out_shape="1, 1, 2, 2")
    problems = integer_region_problems(bad, staged=True)
    assert problems == ["op outside qc's integer op set: argmax (ArgMax) (xq) -> (idx)"]


def test_error_lists_twenty_problems_then_counts_the_rest():
    relus = "\n".join(f"    r{i} = Relu (r{i - 1})" for i in range(1, 15))
    body = f"    r0 = Relu (x)\n{relus}\n    y = Relu (r14)"
    problems = integer_region_problems(model(body))
    assert len(problems) > 20
    with pytest.raises(IntegerRegionError) as error:
        verify_integer_region(model(body))
    message = str(error.value)
    assert message.startswith("the integer region is not integer-only:")
    assert f"... {len(problems) - 20} more" in message
    assert message.count("\n  ") == 21
