"""collect_ranges end to end: a tiny ONNX model built in code, run in onnxruntime over calibration data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qcompiler.calibration.collect import collect_ranges, model_input_specs
from qcompiler.errors import CalibrationError, ModelError


def _relu_mul_model(batch: int | str = 2, initializer_as_input: bool = False) -> onnx.ModelProto:
    """x[batch, 4] -> Relu -> r -> Mul(2) -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])]
    inputs = [x]
    if initializer_as_input:
        inputs.append(helper.make_tensor_value_info("two", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "relu_mul", inputs, [y], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _samples(count: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(count, 4)).astype(np.float32)}


@pytest.mark.parametrize("initializer_as_input", [False, True])
def test_minmax_ranges_of_input_relu_and_output(initializer_as_input):
    data = _samples()
    model = _relu_mul_model(initializer_as_input=initializer_as_input)
    ranges = collect_ranges(model, ["x", "r", "y"], data)
    lo, hi = float(data["x"].min()), float(data["x"].max())
    assert ranges == {"x": (lo, hi), "r": (0.0, hi), "y": (0.0, 2 * hi)}
    assert len(model.graph.output) == 1  # the caller's model is untouched


def test_initializers_listed_as_inputs_are_not_fed():
    assert model_input_specs(_relu_mul_model(initializer_as_input=True)) == {
        "x": ((2, 4), np.dtype(np.float32))
    }


def test_npz_source_and_method_name_as_onnxruntime_spells_it(tmp_path):
    np.savez(tmp_path / "calib.npz", **_samples())
    assert collect_ranges(
        _relu_mul_model(), ["y"], tmp_path / "calib.npz", method="MinMax"
    ) == collect_ranges(_relu_mul_model(), ["y"], _samples())


def test_percentile_clips_an_outlier_end_to_end():
    data = _samples(count=2000, seed=1)
    data["x"][7, 2] = 100.0
    ranges = collect_ranges(
        _relu_mul_model(batch=100), ["x", "y"], data, method="percentile", percentile=99.9
    )
    assert ranges["x"][1] < 6.0 and ranges["y"][1] < 12.0
    assert ranges["y"][0] == 0.0


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_histogram_methods_run_end_to_end(method):
    ranges = collect_ranges(_relu_mul_model(), ["x", "r"], _samples(count=200), method=method, dtype="int8")
    assert ranges["r"][0] == 0.0 and 0.0 < ranges["r"][1] <= ranges["x"][1]


def test_progress_is_called_after_each_batch():
    calls = []
    collect_ranges(
        _relu_mul_model(), ["y"], _samples(count=10), progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_progress_total_is_unknown_for_a_reader():
    class Reader:
        def __init__(self):
            self.left = [{"x": np.ones((2, 4), np.float32)}] * 3

        def get_next(self):
            return self.left.pop() if self.left else None

    calls = []
    ranges = collect_ranges(_relu_mul_model(), ["y"], Reader(), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, -1), (2, -1), (3, -1)]
    assert ranges == {"y": (2.0, 2.0)}


def test_dynamic_dim_raises_model_error_naming_the_input():
    with pytest.raises(ModelError, match=r"input 'x' has dynamic dim 0 \('batch'\)"):
        collect_ranges(_relu_mul_model(batch="batch"), ["y"], _samples())


def test_missing_calibration_data():
    with pytest.raises(CalibrationError, match="calibration data is required"):
        collect_ranges(_relu_mul_model(), ["y"], None)


def test_unknown_method_fails_before_running():
    with pytest.raises(CalibrationError, match="valid methods"):
        collect_ranges(_relu_mul_model(), ["y"], None, method="distribution")


def test_unknown_tensor_name():
    with pytest.raises(ModelError, match="does not compute: 'nope'"):
        collect_ranges(_relu_mul_model(), ["y", "nope"], _samples())


def _reshape_model() -> onnx.ModelProto:
    """y = Reshape(x[1, 4], shape) with the target shape fed as an int64 input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    flat = helper.make_node("Reshape", ["shape", "one"], ["flat"])
    node = helper.make_node("Reshape", ["x", "flat"], ["y"])
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([flat, node], "reshape", [x, shape], [y], [one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_feed_onnxruntime_rejects_is_a_calibration_error():
    data = {"x": np.ones((2, 4), np.float32), "shape": np.array([[4], [3]], np.int64)}
    with pytest.raises(CalibrationError, match="onnxruntime rejected calibration batch 1: .*"):
        collect_ranges(_reshape_model(), ["y"], data)


def test_non_float_tensors_cannot_be_calibrated():
    data = {"x": np.ones((1, 4), np.float32), "shape": np.array([[4]], np.int64)}
    with pytest.raises(ModelError, match=r"not float32: 'shape' \(tensor\(int64\)\)"):
        collect_ranges(_reshape_model(), ["y", "shape"], data)


def test_nan_produced_by_the_model_names_the_tensor():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("log_x", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["log_x"])], "log", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(CalibrationError, match="tensor 'log_x' holds 1 NaN/Inf"):
        collect_ranges(model, ["x", "log_x"], {"x": np.array([[1.0, -1.0]], np.float32)})
