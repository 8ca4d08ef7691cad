"""The named pipelines end to end on a small CNN, with the staged verifier after every pass (conftest.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from passes_testkit import (
    copy,
    deadline,
    model,
    op_types,
    output_codes,
    output_names,
    positive,
    qdq,
    random_feeds,
    run,
    weights,
)

from qcompiler.errors import PassFailure
from qcompiler.intops import is_integer_op
from qcompiler.pass_infra import Pipeline, active_instruments, instrumented
from qcompiler.passes.remove_identity_ops import RemoveIdentityOpsPass
from qcompiler.passes.remove_unused import RemoveUnusedPass
from qcompiler.pipelines import integerize_pipeline, normalize_pipeline, quantize_pipeline
from qcompiler.verify import IntegerRegionError, integer_region_problems

CNN = """
g (float[1,3,8,8] x) => (float[1,5] y) {
  [sub_mean] centered = Sub (x, mean)
  [div_std] normalized = Div (centered, std)
  [conv1] c1 = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (normalized, w1, b1)
  [bn1] n1 = BatchNormalization (c1, scale, shift, bn_mean, bn_var)
  [relu1] r1 = Relu (n1)
  [pool1] p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
  [conv2] c2 = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (p1, w2, b2)
  [relu2] r2 = Relu (c2)
  [squeeze] se = GlobalAveragePool (r2)
  [excite] e = Conv <kernel_shape = [1,1]> (se, we, be)
  [gate] s = Sigmoid (e)
  [scale] gated = Mul (r2, s)
  [residual] a = Add (gated, p1)
  [gap] g = GlobalAveragePool (a)
  [flatten] f = Flatten (g)
  [fc] logits = Gemm <transB = 1> (f, wf, bf)
  [softmax] y = Softmax (logits)
}
"""
POOL = {
    "mean": weights(1, 3, 1, 1, seed=1),
    "std": positive(1, 3, 1, 1, seed=2),
    "w1": weights(4, 3, 3, 3, seed=3),
    "b1": weights(4, seed=4),
    "scale": positive(4, seed=5),
    "shift": weights(4, seed=6),
    "bn_mean": weights(4, seed=7),
    "bn_var": positive(4, seed=8),
    "w2": weights(4, 4, 3, 3, seed=9),
    "b2": weights(4, seed=10),
    "we": weights(4, 4, 1, 1, seed=11),
    "be": weights(4, seed=12),
    "wf": weights(5, 4, seed=13),
    "bf": weights(5, seed=14),
}


def test_verifier_is_installed_for_every_test():
    bad = model(
        """g (float[2,8] x) => (int64[2,1] y) {
             [xq] x_q = QuantizeLinear (x, scale, zero_point)
             [argmax] y = ArgMax <axis = 1> (x_q)
           }""",
        scale=np.array(0.1, np.float32),
        zero_point=np.array(128, np.uint8),
    )
    with pytest.raises(IntegerRegionError, match=r"op outside qc's integer op set: argmax \(ArgMax\)"):
        for instrument in active_instruments():
            instrument("AnyPass", bad)


@pytest.mark.no_verify
def test_instruments_run_once_after_every_pass_alone_or_in_a_pipeline():
    m = model("g (float[2,8] x) => (float[2,8] y) { [copy] y = Identity (x) }")
    seen = []
    with instrumented(lambda name, _: seen.append(name)):
        RemoveUnusedPass()(m)
        Pipeline([RemoveIdentityOpsPass(), Pipeline([RemoveUnusedPass()], name="inner")], name="outer")(m)
    assert seen == ["RemoveUnusedPass", "RemoveIdentityOpsPass", "RemoveUnusedPass"]


@pytest.mark.no_verify
def test_no_verify_marker_opts_out():
    assert active_instruments() == ()


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_cnn_becomes_integer_only_and_stays_close_to_qdq(dtype):
    m = qdq(CNN, dtype=dtype, **POOL)  # normalize -> calibrate -> quantize, verified after every pass
    assert "BatchNormalization" not in op_types(m) and "Gemm" not in op_types(m)
    feeds = random_feeds(m, seed=3)
    expected = output_codes(m, feeds)
    integerize_pipeline(31)(m)
    assert integer_region_problems(m) == []
    inner = [n for n in m.graph if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    assert all(is_integer_op(n.domain, n.op_type) for n in inner)
    assert op_types(m)[0] == "QuantizeLinear" and op_types(m)[-1] == "DequantizeLinear"
    assert output_names(m) == ["y"]
    diff = np.abs(output_codes(m, feeds)["y_q"].astype(int) - expected["y_q"].astype(int))
    assert diff.max() <= 2


def test_normalize_pipeline_preserves_the_float_function():
    m = model(CNN, **POOL)
    feeds = random_feeds(m)
    expected = run(m, feeds)["y"]
    normalize_pipeline({})(m)
    np.testing.assert_allclose(run(m, feeds)["y"], expected, atol=1e-5)


def test_failure_inside_a_pipeline_names_the_pass_and_those_before():
    m = model(CNN, **POOL)
    normalize_pipeline({})(m)
    with pytest.raises(
        PassFailure, match=r"(?s)no quantization parameters.*in pass: InsertQDQPass\n  after passes: \(none\)"
    ):
        quantize_pipeline({})(m)


def test_normalize_terminates_on_matmul_with_bias():
    m = model(
        "g (float[2,3,16] x) => (float[2,3,8] y) { [fc] m = MatMul (x, w) \n [bias] y = Add (m, b) }",
        w=weights(16, 8, seed=1),
        b=weights(8, seed=2),
    )
    try:
        with deadline(3.0):
            normalize_pipeline({})(m)
    except PassFailure as failure:  # the pipeline wraps the TimeoutError, naming the pass
        if isinstance(failure.cause, TimeoutError):
            raise TimeoutError(str(failure)) from None
        raise


def test_model_with_unnamed_nodes():
    unnamed = re.sub(r"\[\w+\] ", "", CNN)
    m = qdq(unnamed, **POOL)
    run(m, random_feeds(m))
    integerize_pipeline(31)(m)
    run(copy(m), random_feeds(m))
