"""NameNodesPass: every node and value gets a unique name; names that are already unique stay."""

from __future__ import annotations

from passes_testkit import assert_no_match, assert_pass_preserves_function, model, op_types, output_names

from qcompiler.passes.name_nodes import NameNodesPass

UNNAMED = """
g (float[2,4] x) => (float[2,4] y) {
  a = Relu (x)
  b = Tanh (a)
  y = Sigmoid (b)
}
"""


def test_golden_unnamed_nodes_get_unique_names():
    m = model(UNNAMED)
    assert NameNodesPass()(m).modified is True
    names = [n.name for n in m.graph]
    assert all(names) and len(set(names)) == len(names)
    assert op_types(m) == ["Relu", "Tanh", "Sigmoid"]
    assert output_names(m) == ["y"]


def test_numerical_equivalence():
    assert_pass_preserves_function(NameNodesPass(), model(UNNAMED))


def test_no_match_when_all_names_are_unique():
    graph = "g (float[2,4] x) => (float[2,4] y) { [first] a = Relu (x) \n [second] y = Tanh (a) }"
    assert_no_match(NameNodesPass(), model(graph))
