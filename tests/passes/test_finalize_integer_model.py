"""FinalizeIntegerModelPass: refuses leftover float ops, attaches the qc functions, drops dead values."""

from __future__ import annotations

import pytest
from passes_testkit import copy, integerize, op_types, output_names, qdq, weights

from qcompiler.errors import UnsupportedOpsError
from qcompiler.intops import DOMAIN, QC_FUNCTIONS, VERSION
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.pipelines import integerize_pipeline
from qcompiler.verify import integer_region_problems

CONV_SIGMOID = """
g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
  [conv] c = Conv <kernel_shape = [3,3], pads = [1,1,1,1]> (x, w, b)
  [relu] r = Relu (c)
  [sigmoid] y = Sigmoid (r)
}
"""
POOL = {"w": weights(4, 3, 3, 3, seed=1), "b": weights(4, seed=2), "k": weights(2, 8, seed=3)}


def integerized_but_not_finalized(graph: str = CONV_SIGMOID):
    """The QDQ model after every integerize pass except the finalization."""
    passes = [p for p in integerize_pipeline(31).passes if not isinstance(p, FinalizeIntegerModelPass)]
    m = qdq(graph, **POOL)
    Pipeline(passes, name="integerize-without-finalize")(m)
    return m


def test_golden_functions_attached_and_dead_weights_removed():
    m = integerized_but_not_finalized()
    ops_before = op_types(m)
    assert any(
        v.const_value.dtype.is_floating_point() and not v.uses() for v in m.graph.initializers.values()
    )
    assert FinalizeIntegerModelPass()(m).modified is True
    assert op_types(m) == ops_before
    assert m.opset_imports[DOMAIN] == VERSION and m.graph.opset_imports[DOMAIN] == VERSION
    assert {(f.domain, f.name) for f in m.functions.values()} == {(DOMAIN, name) for name in QC_FUNCTIONS}
    assert all(v.uses() for v in m.graph.initializers.values())
    assert integer_region_problems(m) == []
    assert output_names(m) == ["y"]


def test_numerical_bit_exact_with_the_model_before():
    # the model before runs with the functions the testkit attaches, the one after with its own
    result, finalized = integerize(FinalizeIntegerModelPass(), integerized_but_not_finalized(), steps=0)
    assert result.modified is True and finalized.functions


def test_no_match_on_a_finalized_model():
    m = integerized_but_not_finalized()
    FinalizeIntegerModelPass()(m)
    m = copy(m)
    assert FinalizeIntegerModelPass()(m).modified is False


LEFTOVERS = {
    "cos": ("g (float[2,8] x) => (float[2,8] y) { [cosine] y = Cos (x) }", "Cos", "cosine"),
    "mul-by-full-constant": ("g (float[2,8] x) => (float[2,8] y) { [scale] y = Mul (x, k) }", "Mul", "scale"),
}


@pytest.mark.parametrize(("graph", "op", "name"), LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_leftover_float_op_is_reported_by_name(graph, op, name):
    m = integerized_but_not_finalized(graph)
    with pytest.raises(UnsupportedOpsError) as info:
        FinalizeIntegerModelPass()(m)
    assert info.value.unsupported == [(op, name, info.value.unsupported[0][2])]
    assert f"{op} x1 ({name})" in str(info.value)


@pytest.mark.parametrize(("graph", "op", "name"), LEFTOVERS.values(), ids=LEFTOVERS.keys())
def test_leftover_float_op_fails_the_integerize_pipeline(graph, op, name):
    m = qdq(graph, **POOL)
    with pytest.raises(
        UnsupportedOpsError, match=rf"(?s){op} x1 \({name}\).*in pass: FinalizeIntegerModelPass"
    ):
        integerize_pipeline(31)(m)
