"""RemoveUnusedPass: nodes and initializers no graph output depends on are removed; the interface is kept."""

from __future__ import annotations

from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    model,
    op_types,
    output_names,
    weights,
)

from qcompiler.passes.remove_unused import RemoveUnusedPass

DEAD = """
g (float[2,4] x, float[2,4] unused_input) => (float[2,4] y) {
  [relu] y = Relu (x)
  [dead_mul] d = Mul (x, k)
  [dead_tanh] t = Tanh (d)
}
"""
POOL = {"k": weights(2, 4, seed=1)}


def test_golden_dead_nodes_and_initializers_removed():
    m = model(DEAD, **POOL)
    assert RemoveUnusedPass()(m).modified is True
    assert op_types(m) == ["Relu"]
    assert list(m.graph.initializers) == []
    assert [v.name for v in m.graph.inputs] == ["x", "unused_input"]
    assert output_names(m) == ["y"]


def test_numerical_equivalence():
    assert_pass_preserves_function(RemoveUnusedPass(), model(DEAD, **POOL))


def test_no_match_when_everything_is_used():
    graph = "g (float[2,4] x) => (float[2,4] y) { [mul] m = Mul (x, k) \n [relu] y = Relu (m) }"
    assert_no_match(RemoveUnusedPass(), model(graph, **POOL))
