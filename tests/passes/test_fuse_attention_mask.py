"""FuseAttentionMaskPass: additive mask biases become Softmax(Where(keep, x, c)); the float mask cone goes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from integer_inputs_testkit import masks
from passes_testkit import assert_no_match, model, only, op_types, run, weights

from qcompiler.passes.fuse_attention_mask import FuseAttentionMaskPass
from qcompiler.quant_plan import is_softmax_mask, unsupported_nodes

FMIN = np.array(np.finfo(np.float32).min, np.float32)
POOL = {"fmin": FMIN, "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32),
        "small": np.array(-10000.0, np.float32), "mild": np.array(-100.0, np.float32),
        "axes": np.array([1, 2], np.int64), "w": weights(1, 2, 4, 4)}

# transformers >= 4.48 eager: bool keep -> Where(keep, 0, finfo.min), added to the scores
WHERE = """g (float[1,2,4,4] s, int64[1,4] m) => (float[1,2,4,4] y) {
    keep = Cast <to = 9> (m)
    keep4 = Unsqueeze (keep, axes)
    bias = Where (keep4, zero, fmin)
    [add] x = Add (s, bias)
    y = Softmax <axis = -1> (x)
}"""
# older transformers: (1 - float(mask)) * min
ARITHMETIC = """g (float[1,2,4,4] s, int64[1,4] m) => (float[1,2,4,4] y) {
    m4 = Unsqueeze (m, axes)
    mf = Cast <to = 1> (m4)
    inv = Sub (one, mf)
    bias = Mul (inv, FILL)
    [add] x = Add (bias, s)
    y = Softmax <axis = -1> (x)
}"""
INVERTED = WHERE.replace("keep = Cast <to = 9> (m)", "keep = Equal (m, izero)").replace("Where (keep4, zero, fmin)",
                                                                                          "Where (keep4, fmin, zero)")


def feeds(seed=0):
    return {"s": weights(1, 2, 4, 4, seed=seed, scale=3.0), "m": masks(1, 4, seed)}


@pytest.mark.parametrize("graph", [WHERE, ARITHMETIC.replace("FILL", "fmin"), ARITHMETIC.replace("FILL", "small"),
                                   INVERTED], ids=["where", "arith-fmin", "arith-1e4", "where-inverted"])
def test_golden_masked_softmax_form(graph):
    m = model(graph, izero=np.array(0, np.int64), **POOL)
    assert FuseAttentionMaskPass()(m).modified is True
    where = only(m, "Where")
    assert is_softmax_mask(where) and where.outputs[0].consumers()[0].op_type == "Softmax"
    assert where.inputs[0].dtype == ir.DataType.BOOL
    assert "Add" not in op_types(m) and "Sub" not in op_types(m)
    assert not any(n.op_type == "Cast" and n.outputs[0].dtype == ir.DataType.FLOAT for n in m.graph)
    assert unsupported_nodes(m.graph) == []


@pytest.mark.parametrize("graph", [WHERE, ARITHMETIC.replace("FILL", "fmin"), ARITHMETIC.replace("FILL", "small")],
                         ids=["where", "arith-fmin", "arith-1e4"])
@pytest.mark.parametrize("seed", range(4))
def test_numerical_equal_on_01_masks(graph, seed):
    m = model(graph, **POOL)
    expected = run(m, feeds(seed))
    FuseAttentionMaskPass()(m)
    np.testing.assert_array_equal(run(m, feeds(seed))["y"], expected["y"])


@pytest.mark.parametrize(
    "graph",
    [
        ARITHMETIC.replace("FILL", "mild"),  # -100 is not a mask fill: exp(-100) is not 0
        WHERE.replace("keep = Cast <to = 9> (m)", "mf = Cast <to = 1> (m)\n keep = Cast <to = 9> (mf)"),
        WHERE.replace("[add] x = Add (s, bias)", "[add] x = Add (s, w)"),  # a float bias, not a mask
        WHERE.replace("y = Softmax <axis = -1> (x)", "y = Relu (x)"),
    ],
    ids=["fill-too-large", "keep-from-float", "float-bias", "no-softmax"],
)
def test_no_match(graph):
    assert_no_match(FuseAttentionMaskPass(), model(graph, **POOL))
