"""The exact onnxruntime reference (qcompiler.reference): uint8 x int8 MatMulInteger rewritten as uint8 x uint8
gives the exact int32 products on every CPU (onnxruntime's own u8 x s8 kernel saturates on x86 without VNNI),
for constant and activation weights, with and without zero points; other models pass through untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.reference import exact_for_onnxruntime, integer_session

M, K, N = 8, 64, 16


def matmul_model(weight: np.ndarray | None, zero_a=None, zero_b=None, a_type=TensorProto.UINT8) -> onnx.ModelProto:
    """y = MatMulInteger(x, w[, zero_a, zero_b]); ``weight`` None: w is a graph input."""
    inits = [numpy_helper.from_array(weight, "w")] if weight is not None else []
    inputs = [helper.make_tensor_value_info("x", a_type, [M, K])]
    if weight is None:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.INT8, [K, N]))
    names = ["x", "w"]
    if zero_a is not None or zero_b is not None:
        inits.append(numpy_helper.from_array(np.asarray(zero_a if zero_a is not None else 0, np.uint8), "za"))
        names.append("za")
    if zero_b is not None:
        inits.append(numpy_helper.from_array(np.asarray(zero_b, np.int8), "zb"))
        names.append("zb")
    graph = helper.make_graph([helper.make_node("MatMulInteger", names, ["y"], name="mm")], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("constant", [True, False], ids=["constant_weight", "activation_weight"])
@pytest.mark.parametrize("zeros", ["none", "scalar", "per_column"])
def test_uint8_by_int8_products_are_exact(constant, zeros):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (M, K), dtype=np.uint8)
    x[0] = 255  # the saturating corner: full-scale activations against full-scale weights
    w = rng.integers(-128, 128, (K, N), dtype=np.int8)
    w[:, 0] = -128
    zero_a, zero_b = {"none": (None, None), "scalar": (7, -3),
                      "per_column": (200, rng.integers(-128, 128, N).astype(np.int8))}[zeros]  # fmt: skip
    model = matmul_model(w if constant else None, zero_a, zero_b)
    before = model.SerializeToString()
    feeds = {"x": x} if constant else {"x": x, "w": w}
    want = (x.astype(np.int64) - (zero_a or 0)) @ (w.astype(np.int64) - (0 if zero_b is None else zero_b))
    (got,) = integer_session(model).run(None, feeds)
    assert np.array_equal(got, want)
    rewritten = exact_for_onnxruntime(model)
    (product,) = [n for n in rewritten.graph.node if n.op_type == "MatMulInteger"]
    types = {t.name: t.data_type for t in rewritten.graph.initializer}
    assert types.get(product.input[1], TensorProto.UINT8) == TensorProto.UINT8
    assert types[product.input[3]] == TensorProto.UINT8
    assert "w" not in types  # the replaced int8 constant is gone
    assert model.SerializeToString() == before  # the caller's model is untouched


def test_models_without_uint8_by_int8_products_pass_through():
    signed = matmul_model(np.ones((K, N), np.int8), a_type=TensorProto.INT8)
    assert exact_for_onnxruntime(signed) is signed
    x = np.full((M, K), -128, np.int8)
    (got,) = integer_session(signed).run(None, {"x": x})
    assert np.array_equal(got, np.full((M, N), -128 * K))
