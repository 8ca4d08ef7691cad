"""A small CNN-shaped integer region, end to end: Pad -> ConvInteger -> Add bias -> Requantize -> MaxPool ->
Reshape -> MatMulInteger -> Add -> Requantize, bit-exact with onnxruntime."""

from __future__ import annotations

import numpy as np
from targets_testkit import (
    assert_bit_exact,
    compile_region,
    node,
    ort_session,
    random_feeds,
    region,
    requantize,
    requantize_params,
)

from qcompiler import qmath

ZERO_POINT_IN = 128


def chained_model():
    rng = np.random.default_rng(7)
    conv_w = rng.integers(-127, 128, size=(4, 3, 3, 3), dtype=np.int8)
    conv_b = rng.integers(-2000, 2000, size=(1, 4, 1, 1), dtype=np.int32)
    fc_w = rng.integers(-127, 128, size=(64, 10), dtype=np.int8)
    fc_b = rng.integers(-5000, 5000, size=(10,), dtype=np.int32)
    conv_m, conv_s = qmath.dyadic(np.array([0.0021, 0.0017, 0.0033, 0.0009]))
    fc_m, fc_s = qmath.dyadic(0.0042)
    nodes = [
        node("Pad", ["x", "pads", "pad_value"], ["padded"]),
        node("ConvInteger", ["padded", "conv_w"], ["conv"]),
        node("Add", ["conv", "conv_b"], ["conv_biased"]),
        requantize("conv_biased", "act", "conv_rq", to="uint8"),
        node("MaxPool", ["act"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        node("MatMulInteger", ["flat", "fc_w"], ["fc"]),
        node("Add", ["fc", "fc_b"], ["fc_biased"]),
        requantize("fc_biased", "logits", "fc_rq", to="int8"),
    ]
    inits = {
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "pad_value": np.array(ZERO_POINT_IN, np.uint8),
        "conv_w": conv_w,
        "conv_b": conv_b,
        "flat_shape": np.array([1, -1], np.int64),
        "fc_w": fc_w,
        "fc_b": fc_b,
        **requantize_params("conv_rq", conv_m.reshape(1, 4, 1, 1), conv_s.reshape(1, 4, 1, 1), 3, 0, 255),
        **requantize_params("fc_rq", fc_m[0], fc_s[0], -5, -128, 127),
    }
    return region(nodes, {"x": ("uint8", (1, 3, 8, 8))}, ["logits", "act"], inits)


def test_chained_model_bit_exact(tmp_path):
    model = chained_model()
    module = compile_region(model, tmp_path)
    session = ort_session(model)
    logits = []
    for seed in range(4):
        feeds = random_feeds(model, seed)
        assert_bit_exact(session, module, feeds)
        logits.append(module.run(feeds)[0])
    # the check is only meaningful if the requantized values are neither all saturated nor constant
    assert len(np.unique(np.concatenate(logits))) > 10
