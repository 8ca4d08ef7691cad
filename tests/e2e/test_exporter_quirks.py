"""Models as exporters other than torch's current one write them: they compile, stay accurate and bit-exact.

* an older transformers BERT export computes token-type ids as ``GatherElements(Expand(buffer), position
  ids)`` and reshapes through ``Shape -> Gather -> Concat``; it adds a full-shape constant (not a bias) to a
  MatMul output;
* a Paddle2ONNX CNN writes its dynamic batch as ``dim_value: -1`` and carries ``value_info`` shapes that
  contradict what inference derives once the batch is fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import qcompiler
from qcompiler.errors import UnsupportedOpsError
from tests.e2e.test_bit_exact import assert_bit_exact

SEQ, HIDDEN, VOCAB = 8, 16, 32


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def rand(*shape: int, seed: int, scale: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def old_bert_export() -> onnx.ModelProto:
    """Embeddings with folded-at-export token types, LayerNorm, MatMul + full-shape constant, a shape chain."""
    nodes = [
        oh.make_node("Gather", ["word_emb", "input_ids"], ["word"], name="word_embeddings"),
        oh.make_node("Expand", ["type_buffer", "buffer_shape"], ["buffered"], name="expand_buffer"),
        oh.make_node("GatherElements", ["buffered", "position_ids"], ["token_types"], axis=1, name="token_types"),
        oh.make_node("Gather", ["type_emb", "token_types"], ["types"], name="type_embeddings"),
        oh.make_node("Add", ["word", "types"], ["summed"], name="add_types"),
        oh.make_node("Add", ["summed", "pos_emb"], ["embedded"], name="add_positions"),
        oh.make_node("LayerNormalization", ["embedded", "gamma", "beta"], ["normed"], axis=-1, name="layer_norm"),
        oh.make_node("MatMul", ["normed", "w1"], ["projected"], name="projection"),
        oh.make_node("Add", ["projected", "offsets"], ["shifted"], name="add_offsets"),
        oh.make_node("Shape", ["shifted"], ["shape"], name="shape"),
        oh.make_node("Gather", ["shape", "first_two"], ["leading"], axis=0, name="leading_dims"),
        oh.make_node("Concat", ["leading", "split_dims"], ["target"], axis=0, name="target_shape"),
        oh.make_node("Reshape", ["shifted", "target"], ["heads"], name="to_heads"),
        oh.make_node("Relu", ["heads"], ["activated"], name="relu"),
        oh.make_node("Reshape", ["activated", "flat_shape"], ["flat"], name="from_heads"),
        oh.make_node("MatMul", ["flat", "w2"], ["logits"], name="classifier"),
    ]
    inits = [
        init("word_emb", rand(VOCAB, HIDDEN, seed=1)),
        init("type_buffer", np.zeros((1, SEQ), np.int64) + (np.arange(SEQ) % 2)),
        init("buffer_shape", np.array([1, SEQ], np.int64)),
        init("position_ids", np.arange(SEQ, dtype=np.int64)[::-1].reshape(1, SEQ).copy()),
        init("type_emb", rand(2, HIDDEN, seed=2)),
        init("pos_emb", rand(1, SEQ, HIDDEN, seed=3, scale=0.2)),
        init("gamma", 1 + rand(HIDDEN, seed=4, scale=0.1)),
        init("beta", rand(HIDDEN, seed=5, scale=0.1)),
        init("w1", rand(HIDDEN, HIDDEN, seed=6)),
        init("offsets", rand(1, SEQ, HIDDEN, seed=7, scale=0.3)),
        init("first_two", np.array([0, 1], np.int64)),
        init("split_dims", np.array([4, 4], np.int64)),
        init("flat_shape", np.array([1, SEQ, HIDDEN], np.int64)),
        init("w2", rand(HIDDEN, 4, seed=8)),
    ]
    graph = oh.make_graph(nodes, "old_bert", [oh.make_tensor_value_info("input_ids", TensorProto.INT64, [1, SEQ])],
                          [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [1, SEQ, 4])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def paddle_cnn_export() -> onnx.ModelProto:
    """Conv-Relu-Conv-pool with batch ``dim_value: -1`` and value_info shapes for batch 7 and wrong channels."""
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        oh.make_node("GlobalAveragePool", ["c2"], ["pooled"], name="pool"),
        oh.make_node("Flatten", ["pooled"], ["y"], name="flatten"),
    ]
    inits = [init("w1", rand(8, 3, 3, 3, seed=11)), init("b1", rand(8, seed=12, scale=0.1)),
             init("w2", rand(4, 8, 1, 1, seed=13)), init("b2", rand(4, seed=14, scale=0.1))]
    graph = oh.make_graph(nodes, "paddle_cnn", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 16, 16])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4])], inits,
                          value_info=[oh.make_tensor_value_info("c1", TensorProto.FLOAT, [7, 5, 16, 16]),
                                      oh.make_tensor_value_info("r1", TensorProto.FLOAT, [-1, 5, 16, 16])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def relative_error(model: onnx.ModelProto, artifact, feeds: list[dict]) -> float:
    """Relative L2 error of the compiled module's output against onnxruntime on the float model."""
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    module = artifact.module()
    want = np.concatenate([session.run(None, f)[0] for f in feeds])
    got = np.concatenate([next(iter(module.run(f).values())) for f in feeds])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_old_bert_export_compiles_accurate_and_bit_exact():
    model = old_bert_export()
    ids = np.random.default_rng(0).integers(0, VOCAB, (64, SEQ)).astype(np.int64)
    artifact = qcompiler.compile(model, target="x86", calibration={"input_ids": ids[:48]})
    feeds = [{"input_ids": ids[i:i + 1]} for i in range(48, 64)]
    assert relative_error(model, artifact, feeds) < 0.05
    assert_bit_exact(artifact, feeds)
    ops = {n.op_type for n in artifact.quantized.float_model.graph.node}
    assert not ops & {"GatherElements", "Expand", "Shape", "Concat"}, ops


@pytest.mark.parametrize("input_shapes", [None, {"x": (1, 3, 16, 16)}], ids=["default-batch", "input-shape"])
def test_paddle_style_export_compiles_accurate_and_bit_exact(input_shapes):
    model = paddle_cnn_export()
    x = rand(40, 3, 16, 16, seed=20, scale=1.0)
    options = {"input_shapes": input_shapes} if input_shapes else {}
    artifact = qcompiler.compile(model, target="x86", calibration={"x": x[:32]}, **options)
    assert artifact.module().inputs[0]["shape"] == [1, 3, 16, 16]
    feeds = [{"x": x[i:i + 1]} for i in range(32, 40)]
    assert relative_error(model, artifact, feeds) < 0.05
    assert_bit_exact(artifact, feeds)


def test_unsupported_ops_list_never_names_an_op_on_constants():
    """``Cos`` of a constant folds away; only the ``Sin`` on the activation is reported."""
    nodes = [oh.make_node("Cos", ["angles"], ["cosines"], name="cos_of_constant"),
             oh.make_node("Add", ["x", "cosines"], ["shifted"], name="add"),
             oh.make_node("Sin", ["shifted"], ["y"], name="sin_of_activation")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [init("angles", rand(1, 8, seed=30))])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    with pytest.raises(UnsupportedOpsError) as error:
        qcompiler.compile(model, target="x86", calibration={"x": rand(8, 1, 8, seed=31)})
    assert "sin_of_activation" in str(error.value) and "Cos" not in str(error.value)
