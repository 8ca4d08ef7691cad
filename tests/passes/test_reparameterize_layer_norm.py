"""ReparameterizeLayerNormPass: RepQ-ViT's per-channel -> per-tensor reparameterization is exact in float."""

from __future__ import annotations

from collections import Counter

import numpy as np
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    model,
    nodes_of,
    op_types,
    run,
)

from qcompiler.passes.reparameterize_layer_norm import ReparameterizeLayerNormPass
from qcompiler.qmath import affine_qparams, quantize

D = 8
BLOCK = f"""
g (float[2,5,{D}] x) => (float[2,5,{D}] q, float[2,5,{D}] k) {{
    [ln] h = LayerNormalization <axis = -1, epsilon = 1e-5> (x, gamma, beta)
    [q_proj] q_mm = MatMul (h, wq)
    [q_bias] q = Add (q_mm, bq)
    [k_proj] k = MatMul (h, wk)
}}
"""
RNG = np.random.default_rng(0)
INITS = {
    "gamma": RNG.uniform(0.2, 3.0, D).astype(np.float32),
    "beta": RNG.normal(0, 1, D).astype(np.float32),
    "wq": RNG.normal(0, 0.5, (D, D)).astype(np.float32),
    "bq": RNG.normal(0, 0.1, D).astype(np.float32),
    "wk": RNG.normal(0, 0.5, (D, D)).astype(np.float32),
}
# Post-LayerNorm channels with very different ranges (the case RepQ-ViT targets).
LOW = -np.geomspace(0.1, 20.0, D)
HIGH = np.geomspace(0.3, 8.0, D)[::-1].copy()


def block():
    return model(BLOCK, **INITS)


def test_reparameterization_preserves_the_float_function():
    m = block()
    result = assert_pass_preserves_function(ReparameterizeLayerNormPass({"h": (LOW, HIGH)}), m, atol=1e-4)
    assert result.modified
    assert Counter(op_types(m)) == {"LayerNormalization": 1, "MatMul": 2, "Add": 2}  # k gets a bias Add


def test_per_tensor_codes_equal_per_channel_codes():
    """Quantizing the new LayerNorm output per tensor with (mean s, round(mean z)) gives the per-channel codes."""
    before, after = block(), block()
    ReparameterizeLayerNormPass({"h": (LOW, HIGH)})(after)
    feeds = {"x": RNG.normal(0, 1, (2, 5, D)).astype(np.float32)}
    x = run(before, feeds, ["h"])["h"]
    x_new = run(after, feeds, ["h"])["h"]
    params = [affine_qparams(lo, hi) for lo, hi in zip(LOW, HIGH, strict=True)]
    scales = np.array([s for s, _ in params])
    zeros = np.array([z for _, z in params])
    per_channel = np.clip(np.rint(x / scales) + zeros, 0, 255)
    per_tensor = quantize(x_new, scales.mean(), int(np.round(zeros.mean())), "uint8").astype(np.float64)
    inside = (per_channel > 0) & (per_channel < 255)  # away from the clamp, where rounding decides alone
    mismatch = np.abs(per_tensor - per_channel)[inside]
    assert mismatch.max() <= 1 and (mismatch == 0).mean() > 0.99  # float32 ties may flip a rare code


def test_weights_scale_by_input_channel():
    m = block()
    ReparameterizeLayerNormPass({"h": (LOW, HIGH)})(m)
    scales = np.array([affine_qparams(lo, hi)[0] for lo, hi in zip(LOW, HIGH, strict=True)])
    r1 = scales / scales.mean()
    (q_proj,) = [n for n in nodes_of(m, "MatMul") if n.name == "q_proj"]
    np.testing.assert_allclose(const(q_proj.inputs[1]), INITS["wq"] * r1[:, None].astype(np.float32), rtol=1e-6)


def test_no_match_without_ranges_or_with_other_consumers():
    assert_no_match(ReparameterizeLayerNormPass({}), block())
    relu_user = BLOCK.replace("[k_proj] k = MatMul (h, wk)", "[k_proj] k = Relu (h)")
    assert_no_match(ReparameterizeLayerNormPass({"h": (LOW, HIGH)}), model(relu_user, **INITS))
