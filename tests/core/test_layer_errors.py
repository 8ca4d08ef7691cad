"""Per-layer error (``qcompiler.layer_errors``): the float -> integer tensor mapping, SQNR against a hand
computation, worst-first order, fused nodes reported under their owner."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.errors import CalibrationError
from qcompiler.layer_errors import layer_errors, table_rows
from qcompiler.qmath import dequantize, quantize
from qcompiler.report import build_report

RNG = np.random.default_rng(0)
WEIGHT = (0.5 * RNG.standard_normal((4, 4))).astype(np.float32)
SAMPLES = RNG.standard_normal((4, 4)).astype(np.float32)  # 4 samples; the models' batch is 2
#: scales: the Relu output fine, the Abs output deliberately coarse (its error dominates), the sum fine.
SCALES = {"r": 1 / 64, "b": 0.5, "y": 1 / 32}


def model(nodes: list[onnx.NodeProto], **initializers: np.ndarray) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(np.asarray(a), name) for name, a in initializers.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def float_model() -> onnx.ModelProto:
    """``y = Relu(x @ w) + Abs(x)``: the MatMul output is absorbed by its Relu (fused, no integer tensor)."""
    return model([oh.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                  oh.make_node("Relu", ["h"], ["r"], name="act"),
                  oh.make_node("Abs", ["x"], ["b"], name="coarse"),
                  oh.make_node("Add", ["r", "b"], ["y"], name="out")], w=WEIGHT)


def quantized_model() -> onnx.ModelProto:
    """The QDQ form of :func:`float_model` as ``InsertQDQPass`` writes it (the output renamed ``y_float``, its
    DequantizeLinear named ``y``). It stands in for the integer model too: its Q nodes are named like the
    integer nodes that write each integer tensor (``<owner>/<op>``): the Relu's by ``fc``, as the integer ops of
    a Relu fused into its MatMul are."""
    def qdq(value: str, owner: str, out: str) -> list[onnx.NodeProto]:
        name = value.removesuffix("_float")
        return [oh.make_node("QuantizeLinear", [value, f"s_{name}", "zp"], [f"{name}_q"], name=f"{owner}/quantize"),
                oh.make_node("DequantizeLinear", [f"{name}_q", f"s_{name}", "zp"], [out], name=f"{name}/dequantize")]

    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"], name="fc"), oh.make_node("Relu", ["h"], ["r"], name="act"),
             *qdq("r", "fc", "r_dq"), oh.make_node("Abs", ["x"], ["b"], name="coarse"), *qdq("b", "coarse", "b_dq"),
             oh.make_node("Add", ["r_dq", "b_dq"], ["y_float"], name="out"), *qdq("y_float", "out", "y")]
    scales = {f"s_{k}": np.array(v, np.float32) for k, v in SCALES.items()}
    return model(nodes, w=WEIGHT, zp=np.array(0, np.uint8), **scales)


def fake_quant(x: np.ndarray, scale: float) -> np.ndarray:
    return dequantize(quantize(x, scale, 0, "uint8"), scale, 0)


def sqnr(x: np.ndarray, x_hat: np.ndarray) -> float:
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    return 10 * math.log10(np.sum(x * x) / np.sum((x - x_hat) ** 2))


def hand_computed() -> dict[str, float]:
    """SQNR of each row by hand, from numpy: node -> dB."""
    r, b = np.maximum(SAMPLES @ WEIGHT, 0), np.abs(SAMPLES)
    r_hat, b_hat = fake_quant(r, SCALES["r"]), fake_quant(b, SCALES["b"])
    return {"act": sqnr(r, r_hat), "coarse": sqnr(b, b_hat), "out": sqnr(r + b, fake_quant(r_hat + b_hat, SCALES["y"]))}


@pytest.fixture(scope="module")
def errors() -> dict:
    qdq = quantized_model()
    return layer_errors(float_model(), qdq, qdq, {"x": SAMPLES, "labels": np.zeros(4)})


def test_sqnr_and_relative_error_match_a_hand_computation(errors):
    expected = hand_computed()
    assert errors["samples"] == 4
    for row in errors["layers"]:
        assert row["sqnr_db"] == pytest.approx(expected[row["node"]], rel=1e-5), row["node"]
        assert row["rel_l2"] == pytest.approx(10 ** (-expected[row["node"]] / 20), rel=1e-5)


def test_rows_are_worst_first_and_the_coarse_layer_leads(errors):
    sqnrs = [row["sqnr_db"] for row in errors["layers"]]
    assert sqnrs == sorted(sqnrs)
    assert errors["layers"][0]["node"] == "coarse"
    assert errors["layers"][0]["int_range"] == [0.0, 127.5]  # 255 codes of 0.5
    assert errors["layers"][0]["float_range"] == [float(np.abs(SAMPLES).min()), float(np.abs(SAMPLES).max())]


def test_a_fused_node_is_reported_under_its_owner_and_an_absorbed_value_has_no_row(errors):
    rows = {row["node"]: row for row in errors["layers"]}
    assert sorted(rows) == ["act", "coarse", "out"]  # no row for fc: its output h has no integer tensor
    act = rows["act"]
    assert (act["owner"], act["owner_op_type"], act["tensor"], act["int_tensor"]) == ("fc", "MatMul", "r", "r_q")
    assert act["weight_range"] == [float(WEIGHT.min()), float(WEIGHT.max())]
    assert rows["coarse"]["weight_range"] is None
    assert (rows["out"]["tensor"], rows["out"]["int_tensor"]) == ("y", "y_q")  # a graph output, renamed in QDQ
    ops = {cells[1]: cells[2] for cells in table_rows(errors["layers"])}
    assert ops == {"fc": "MatMul+Relu", "coarse": "Abs", "out": "Add"}


def test_results_are_deterministic_and_limited_to_the_requested_samples(errors):
    qdq = quantized_model()
    assert layer_errors(float_model(), qdq, qdq, {"x": SAMPLES}) == errors
    assert layer_errors(float_model(), qdq, qdq, {"x": SAMPLES}, samples=2)["samples"] == 2


def test_missing_inputs_are_one_clear_error():
    qdq = quantized_model()
    with pytest.raises(CalibrationError, match=r"lacks input\(s\) \['x'\]"):
        layer_errors(float_model(), qdq, qdq, {"image": SAMPLES})


def test_the_compile_pipeline_maps_every_activation_and_agrees_with_the_report():
    """Through qc's own quantization: ``Relu(x @ w1) @ w2``, the first MatMul fused into its Relu."""
    proto = model([oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                   oh.make_node("Relu", ["h"], ["r"], name="act"),
                   oh.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], w1=WEIGHT, w2=WEIGHT.T.copy())
    calibration = {"x": np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)}
    q = quantize_model(proto, calibration, CompileConfig())
    errors = layer_errors(q.float_model, q.qdq_model, q.int_model, calibration)
    rows = {row["node"]: row for row in errors["layers"]}
    assert sorted(rows) == ["act", "fc2"]
    report = {n["name"]: n for n in build_report(q.float_model, q.qdq_model, q.int_model, q.ranges)["nodes"]}
    assert rows["act"]["owner"] == report["act"]["fused_into"] == "fc1"
    assert rows["fc2"]["weight_range"] == [float(WEIGHT.min()), float(WEIGHT.max())]
    # 8-bit codes of a 2x4 model whose Relu zeroes whole rows: the output's SQNR varies with the data (16-41
    # dB over seeds 1-5); these data are a low case, so the bound is loose, and the two columns must agree
    assert all(row["sqnr_db"] > 12 for row in rows.values())
    assert all(row["sqnr_db"] == pytest.approx(-20 * np.log10(row["rel_l2"]), abs=0.05) for row in rows.values())


def test_an_exact_tensor_has_no_finite_sqnr_and_sorts_last():
    qdq = quantized_model()
    on_grid = RNG.integers(-4, 5, (4, 4)).astype(np.float32) / 2  # |x| on the 0.5 grid of the Abs output
    layers = layer_errors(float_model(), qdq, qdq, {"x": on_grid})["layers"]
    assert layers[-1]["node"] == "coarse" and (layers[-1]["sqnr_db"], layers[-1]["rel_l2"]) == (None, 0.0)
    assert table_rows(layers)[-1][3] == "exact"


def test_the_mul_of_x_times_sigmoid_x_is_reported_under_the_sigmoid_table():
    """SiLU ``h * Sigmoid(h)`` becomes one table on the Sigmoid; the Mul is fused into it, not into fc1."""
    proto = model([oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                   oh.make_node("Sigmoid", ["h"], ["s"], name="sig"),
                   oh.make_node("Mul", ["h", "s"], ["m"], name="silu"),
                   oh.make_node("MatMul", ["m", "w2"], ["y"], name="fc2")], w1=WEIGHT, w2=WEIGHT.T.copy())
    calibration = {"x": RNG.standard_normal((8, 4)).astype(np.float32)}
    q = quantize_model(proto, calibration, CompileConfig())
    report = {n["name"]: n for n in build_report(q.float_model, q.qdq_model, q.int_model, q.ranges)["nodes"]}
    assert report["silu"]["fused_into"] == "sig" and report["sig"]["integer_ops"]
