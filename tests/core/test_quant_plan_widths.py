"""Bit widths in the quantization plan: narrow codes for linear-layer inputs, 8 bits for the rest."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir

from qcompiler.quant_plan import activation_points, assign_qparams, input_groups

# LayerNorm -> MatMul (linear input), reshape -> MatMul (through a pass-through op), a residual Add, Softmax
# into an attention MatMul and a classifier Softmax as the graph output.
GRAPH = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2,4] x) => (float[2,4] probs) {
    h = LayerNormalization <axis = -1> (x, gamma, beta)
    a = MatMul (h, w)
    r = Add (a, x)
    f = Reshape (r, shape)
    b = MatMul (f, w)
    s = Softmax (b)
    c = MatMul (s, w)
    probs = Softmax (c)
}
"""


def plan(bits: int, attention_bits: int) -> dict:
    proto = onnx.parser.parse_model(GRAPH)
    for name, array in {"gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32),
                        "w": np.eye(4, dtype=np.float32), "shape": np.array([2, 4], np.int64)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    graph = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto)).graph
    ranges = {v.name: (-1.0, 1.0) for v in activation_points(graph)}
    return {name: p.bits for name, p in assign_qparams(graph, ranges, "uint8", bits, attention_bits).items()}


def test_linear_inputs_narrow_the_rest_stays_8_bit():
    widths = plan(bits=4, attention_bits=3)
    assert widths["h"] == 4  # LayerNorm output feeding a linear layer
    assert widths["r"] == 4 and widths["f"] == 4  # residual sum feeding only a MatMul, through a Reshape
    assert widths["a"] == 8  # residual branch: read by an Add
    assert widths["x"] == 8 and widths["b"] == 8 and widths["c"] == 8  # input, Softmax inputs
    assert widths["s"] == 3  # attention probabilities
    assert widths["probs"] == 8  # the classifier output


def test_eight_bits_everywhere_by_default():
    assert set(plan(bits=8, attention_bits=8).values()) == {8}


SHARED = """
<ir_version: 10, opset_import: ["" : 21]>
g (float[2,4] x) => (float[2,4] y) {
    h = LayerNormalization <axis = -1> (x, gamma, beta)
    [q] a = MatMul (h, w)
    [k] b = MatMul (h, w)
    s = Add (a, b)
    [out] y = MatMul (s, w)
}
"""


def shared_graph():
    proto = onnx.parser.parse_model(SHARED)
    for name, array in {"gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32),
                        "w": np.eye(4, dtype=np.float32)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto)).graph


def test_layers_reading_one_value_are_one_group_and_get_the_widest_width():
    graph = shared_graph()
    assert input_groups(graph) == [["q", "k"], ["out"]]
    ranges = {v.name: (-1.0, 1.0) for v in activation_points(graph)}
    widths = {n: p.bits for n, p in assign_qparams(graph, ranges, "uint8", 8, 8, {"q": 4, "k": 6, "out": 3}).items()}
    assert widths["h"] == 6 and widths["s"] == 3 and widths["x"] == 8
