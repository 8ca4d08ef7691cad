"""Integer graph inputs (token ids, masks) enter the integer region directly: boundary, region, verifier, API."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler.api import Module
from qcompiler.errors import QcError
from qcompiler.model_io import boundary, integer_region, is_integer_entry
from qcompiler.reference import integer_session
from qcompiler.verify import integer_region_problems


def _int_model() -> onnx.ModelProto:
    """x (float, boundary Q) scaled by a gathered uint8 code from ids (int64 input, no boundary node)."""
    graph = onnx.parser.parse_graph("""g (float[1,4] x, int64[1,4] ids) => (float[1,4] y) {
        xq = QuantizeLinear (x, s, z)
        e = Gather (table, ids)
        sum = Add (xq, e)
        y = DequantizeLinear (sum, s, z)
    }""")
    graph.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "s"),
                              numpy_helper.from_array(np.array(3, np.uint8), "z"),
                              numpy_helper.from_array(np.arange(10, dtype=np.uint8), "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_boundary_integer_input_has_no_quantization():
    inputs, outputs = boundary(_int_model())
    ids = inputs[1]
    assert ids == {"name": "ids", "int_name": "ids", "shape": [1, 4], "int_dtype": "int64", "scale": None,
                   "zero_point": None}
    assert is_integer_entry(ids) and not is_integer_entry(inputs[0]) and not is_integer_entry(outputs[0])


def test_integer_region_keeps_integer_input():
    region = integer_region(_int_model())
    assert [(v.name, v.type.tensor_type.elem_type) for v in region.graph.input] == [
        ("xq", TensorProto.UINT8), ("ids", TensorProto.INT64)]
    assert [n.op_type for n in region.graph.node] == ["Gather", "Add"]
    onnx.checker.check_model(region)
    session = integer_session(region)
    out = session.run(None, {region.graph.input[0].name: np.full((1, 4), 5, np.uint8),
                             "ids": np.array([[0, 1, 2, 9]], np.int64)})[0]
    np.testing.assert_array_equal(out, [[5, 6, 7, 14]])
    assert integer_region_problems(ir.serde.deserialize_model(region)) == []


def test_staged_verifier_checks_nodes_fed_by_integer_inputs():
    """Once quantization has started, an op outside the integer op set on an integer input is reported."""
    proto = _int_model()
    proto.graph.node.insert(1, helper.make_node("BitShift", ["ids", "ids"], ["shifted"], direction="LEFT"))
    proto.graph.node[2].input[1] = "shifted"
    problems = integer_region_problems(ir.serde.deserialize_model(proto), staged=True)
    assert any("BitShift" in p for p in problems)
    del proto.graph.node[0]  # no QuantizeLinear left: quantization has not started, nothing is checked
    proto.graph.node[-1].input[0] = "sum"
    assert integer_region_problems(ir.serde.deserialize_model(proto), staged=True) == []


class _Echo:
    output_names = ["sum"]

    def run(self, feeds):
        return [feeds["xq"]]


def test_module_passes_integer_inputs_through_and_refuses_floats():
    inputs, outputs = boundary(_int_model())
    module = Module(None, {"inputs": inputs, "outputs": outputs}, _Echo())
    ints = module.quantize_inputs({"x": np.ones((1, 4), np.float32), "ids": np.array([[1, 2, 3, 4]], np.int64)})
    assert ints["ids"].dtype == np.int64 and ints["ids"].tolist() == [[1, 2, 3, 4]]
    with pytest.raises(QcError, match="input 'ids' is float32, expected int64"):
        module.quantize_inputs({"x": np.ones((1, 4), np.float32), "ids": np.ones((1, 4), np.float32)})
