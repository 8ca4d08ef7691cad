"""RemoveIdentityOpsPass: Identity and inference Dropout are bypassed; graph interface names are kept."""

from __future__ import annotations

import pytest
from passes_testkit import assert_no_match, assert_pass_preserves_function, model, op_types, output_names

from qcompiler.passes.remove_identity_ops import RemoveIdentityOpsPass

CHAIN = """
g (float[2,8] x) => (float[2,8] y, float[2,8] z) {
  [relu] r = Relu (x)
  [identity] i = Identity (r)
  [dropout] d = Dropout (i)
  [sigmoid] s = Sigmoid (d)
  [last_identity] y = Identity (s)
  [tanh] z = Tanh (d)
}
"""


def test_golden_identities_removed_and_output_names_kept():
    m = model(CHAIN)
    assert RemoveIdentityOpsPass()(m).modified is True
    assert op_types(m) == ["Relu", "Sigmoid", "Tanh"]
    assert output_names(m) == ["y", "z"]
    relu, sigmoid, tanh = m.graph
    assert sigmoid.inputs[0] is relu.outputs[0] and tanh.inputs[0] is relu.outputs[0]
    assert sigmoid.outputs[0].name == "y"


def test_numerical_equivalence():
    assert_pass_preserves_function(RemoveIdentityOpsPass(), model(CHAIN))


@pytest.mark.parametrize(
    "graph",
    [
        # input to output: removing the node would merge two graph interface values
        "g (float[2,8] x) => (float[2,8] y) { [identity] y = Identity (x) }",
        # a Dropout whose mask is used is not the identity
        """g (float[2,8] x) => (float[2,8] y, bool[2,8] mask) {
             [relu] r = Relu (x)
             [dropout] y, mask = Dropout (r)
           }""",
    ],
    ids=["input-to-output", "dropout-mask-used"],
)
def test_no_match(graph):
    assert_no_match(RemoveIdentityOpsPass(), model(graph))
