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


#: what older transformers exports compute token-type ids with, and a Split of a constant weight (onnxscript's
#: folder skips both: GatherElements is not in its list, Split has several outputs).
BUFFER_AND_SPLIT = """
g (float[1,4,6] x) => (float[1,4,3] y) {
  [expand_node] expanded = Expand (buffer, full)
  [positions_node] positions = Slice (position_ids, zero, four, one_axis)
  [gather_node] token_types = GatherElements <axis = 1> (expanded, positions)
  [cast_node] types_f = Cast <to = 1> (token_types)
  [types3_node] types3 = Unsqueeze (types_f, minus_one)
  [split_node] first, second = Split <axis = 0, num_outputs = 2> (w)
  [matmul_node] product = MatMul (x, first)
  [shifted_node] shifted = Add (product, types3)
  [use_second] second_row = ReduceSum <keepdims = 1> (second, zero)
  [scaled_node] y = Add (shifted, second_row)
}
"""


def buffer_and_split_inits() -> dict[str, np.ndarray]:
    return {
        "buffer": np.array([[0, 1, 0, 1, 0, 1, 0, 1]], np.int64),
        "full": np.array([1, 8], np.int64),
        "position_ids": np.array([[3, 2, 1, 0, 7, 6, 5, 4]], np.int64),
        "zero": np.array([0], np.int64),
        "four": np.array([4], np.int64),
        "one_axis": np.array([1], np.int64),
        "minus_one": np.array([-1], np.int64),
        "w": weights(12, 3, seed=2),
    }


def test_any_standard_op_with_constant_inputs_folds():
    m = model(BUFFER_AND_SPLIT, **buffer_and_split_inits())
    assert FoldConstantsPass()(m).modified is True
    assert op_types(m) == ["MatMul", "Add", "Add"]
    np.testing.assert_array_equal(const(only(m, "MatMul").inputs[1]), buffer_and_split_inits()["w"][:6])


def test_folding_any_op_preserves_the_function():
    assert_pass_preserves_function(FoldConstantsPass(), model(BUFFER_AND_SPLIT,
                                                             **buffer_and_split_inits()))


SHAPE_CHAIN = """
g (float[1,3,4,4] x) => (float[1,3,16] y) {
  [shape_node] shape = Shape (x)
  [dims_node] dims = Gather <axis = 0> (shape, first_two)
  [size_node] size = Size (x)
  [per_batch_node] per_channel = Div (size, twelve)
  [per_node] per = Reshape (per_channel, one_elem)
  [target_node] target = Concat <axis = 0> (dims, per)
  [reshape_node] y = Reshape (x, target)
}
"""


def test_shape_and_size_of_static_tensors_fold():
    inits = {"first_two": np.array([0, 1], np.int64), "twelve": np.array(3, np.int64),
             "one_elem": np.array([1], np.int64)}
    m = model(SHAPE_CHAIN, **inits)
    assert FoldConstantsPass()(m).modified is True
    assert op_types(m) == ["Reshape"]
    np.testing.assert_array_equal(const(only(m, "Reshape").inputs[1]), [1, 3, 16])
    assert_pass_preserves_function(FoldConstantsPass(), model(SHAPE_CHAIN, **inits))


def test_random_ops_are_never_folded():
    m = model("""
        g (float[1,4] x) => (float[1,4] y) {
          [noise_node] noise = RandomUniform <shape = [1,4], dtype = 1> ()
          [add_node] y = Add (x, noise)
        }""")
    FoldConstantsPass()(m)
    assert op_types(m) == ["RandomUniform", "Add"]
