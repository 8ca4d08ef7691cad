"""InitializersAsConstantsPass: weights also listed as graph inputs (IR < 4 exporters) become plain constants."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from passes_testkit import assert_no_match, assert_pass_preserves_function, model, op_types, weights

from qcompiler.passes.initializers_as_constants import InitializersAsConstantsPass

GRAPH = "g (float[2,4] x) => (float[2,4] y) { [mul] m = Mul (x, k) \n [relu] y = Relu (m) }"


def weights_as_inputs() -> ir.Model:
    """The model as an old exporter writes it: the initializer ``k`` is also a graph input."""
    proto = ir.serde.serialize_model(model(GRAPH, k=weights(2, 4, seed=1)))
    proto.graph.input.append(onnx.helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [2, 4]))
    return ir.serde.deserialize_model(proto)


def test_golden_initializer_inputs_dropped():
    m = weights_as_inputs()
    assert [v.name for v in m.graph.inputs] == ["x", "k"]
    assert InitializersAsConstantsPass()(m).modified is True
    assert [v.name for v in m.graph.inputs] == ["x"]
    assert "k" in m.graph.initializers and op_types(m) == ["Mul", "Relu"]


def test_numerical_equivalence():
    assert_pass_preserves_function(InitializersAsConstantsPass(), weights_as_inputs())


def test_no_match_without_initializer_inputs():
    assert_no_match(InitializersAsConstantsPass(), model(GRAPH, k=weights(2, 4, seed=1)))
