"""FoldConstantsPass: Constant nodes, constant arithmetic, ConstantOfShape and shape subgraphs become initializers."""

from __future__ import annotations

import numpy as np
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    model,
    only,
    op_types,
    output_names,
    weights,
)

from qcompiler.passes.fold_constants import FoldConstantsPass

FOLDABLE = """
g (float[1,3,4,4] x) => (float[1,48] y) {
  [two_node] two = Constant <value = float[1] {2.0}> ()
  [four_node] four = Mul (two, two)
  [dims_node] dims = Constant <value = int64[4] {1, 3, 1, 1}> ()
  [offset_node] offset = ConstantOfShape <value = float[1] {0.5}> (dims)
  [scaled_node] scaled = Mul (x, four)
  [shifted_node] shifted = Add (scaled, offset)
  [shape_node] shape = Shape (x)
  [batch_node] batch = Slice (shape, zero, one)
  [target_node] target = Concat <axis = 0> (batch, minus_one)
  [reshape_node] y = Reshape (shifted, target)
}
"""
SHAPE_INITS = {
    "zero": np.array([0], np.int64),
    "one": np.array([1], np.int64),
    "minus_one": np.array([-1], np.int64),
}


def test_golden_constants_become_initializers():
    m = model(FOLDABLE, **SHAPE_INITS)
    assert FoldConstantsPass()(m).modified is True
    assert op_types(m) == ["Mul", "Add", "Reshape"]
    np.testing.assert_array_equal(const(only(m, "Mul").inputs[1]), [4.0])
    np.testing.assert_array_equal(const(only(m, "Add").inputs[1]), np.full((1, 3, 1, 1), 0.5, np.float32))
    np.testing.assert_array_equal(const(only(m, "Reshape").inputs[1]), [1, -1])
    assert all(v.const_value is not None for n in m.graph for v in n.inputs[1:])
    assert output_names(m) == ["y"]


def test_numerical_equivalence():
    assert_pass_preserves_function(FoldConstantsPass(), model(FOLDABLE, **SHAPE_INITS))


def test_no_match_without_constant_subgraph():
    m = model(
        """
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
          [conv] c = Conv <kernel_shape = [1,1]> (x, w)
          [relu] y = Relu (c)
        }
        """,
        w=weights(2, 3, 1, 1),
    )
    assert_no_match(FoldConstantsPass(), m)
