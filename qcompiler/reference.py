"""onnxruntime as the integer reference, exact on every CPU.

ONNX defines MatMulInteger as an exact int32 sum of products. onnxruntime's uint8 x int8 MatMulInteger
kernel on x86 CPUs without VNNI (AVX2; AVX-512 without VNNI) multiplies and adds byte pairs with
``vpmaddubsw``, whose int16 result saturates, so its outputs depend on the CPU: on an AVX2 host, 102 of
128 outputs of a full-range 8 x 64 x 16 product were wrong (onnxruntime 1.32; its int8 x uint8, int8 x int8
and uint8 x uint8 kernels and ConvInteger were exact on the same host). qc's compiled code computes the
exact sums, so a reference that saturates would call exact code wrong.

:func:`exact_for_onnxruntime` rewrites every uint8 x int8 MatMulInteger as the same product in uint8 x uint8:
``B + 128`` with zero point ``zB + 128``, so ``(A - zA)(B - zB)`` is the same integer, and onnxruntime's
uint8 x uint8 kernel widens to int16 before multiplying, which cannot saturate. Constant operands are
rewritten in place, an activation operand through ``Cast(int32) + 128 -> Cast(uint8)``.
:func:`integer_session` is the onnxruntime session every reference run of an integer model uses.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from qcompiler.errors import QcError

__all__ = ["exact_for_onnxruntime", "integer_session"]


def integer_session(model: onnx.ModelProto, options: onnxruntime.SessionOptions | None = None):
    """An onnxruntime CPU session computing ``model``'s integer ops exactly (see the module docstring)."""
    return onnxruntime.InferenceSession(
        exact_for_onnxruntime(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def exact_for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose uint8 x int8 MatMulIntegers are uint8 x uint8 (the same integers); ``model``
    itself is unchanged. Models without one are returned as they are."""
    types = _elem_types(model)
    rewrite = [n for n in model.graph.node if n.op_type == "MatMulInteger" and n.domain in ("", "ai.onnx")
               and types.get(n.input[0]) == TensorProto.UINT8 and types.get(n.input[1]) == TensorProto.INT8]
    if not rewrite:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    constants = {t.name: t for t in graph.initializer}
    outputs = {n.output[0] for n in rewrite}
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        if node.op_type == "MatMulInteger" and node.output[0] in outputs:
            graph.node.extend(_as_uint8_product(node, constants, graph))
        else:
            graph.node.append(node)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # the replaced int8 constants
    return copy


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _shifted(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int16) + 128).astype(np.uint8)


def _as_uint8_product(node: onnx.NodeProto, constants: dict, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes computing ``node`` (uint8 A x int8 B) with B and its zero point moved to uint8."""
    prefix = f"{node.output[0]}__u8"
    nodes, b = [], node.input[1]
    if b in constants:
        graph.initializer.append(numpy_helper.from_array(_shifted(numpy_helper.to_array(constants[b])), f"{prefix}_b"))
    else:
        graph.initializer.append(numpy_helper.from_array(np.array(128, np.int32), f"{prefix}_128"))
        nodes += [helper.make_node("Cast", [b], [f"{prefix}_b32"], to=TensorProto.INT32),
                  helper.make_node("Add", [f"{prefix}_b32", f"{prefix}_128"], [f"{prefix}_b32s"]),
                  helper.make_node("Cast", [f"{prefix}_b32s"], [f"{prefix}_b"], to=TensorProto.UINT8)]  # fmt: skip
    inputs = list(node.input) + [""] * (4 - len(node.input))
    zero = inputs[3]
    if zero and zero not in constants:
        raise QcError(f"MatMulInteger '{node.name}': a non-constant int8 zero point is not supported here")
    old = numpy_helper.to_array(constants[zero]) if zero else np.array(0, np.int8)
    graph.initializer.append(numpy_helper.from_array(_shifted(old), f"{prefix}_zb"))
    nodes.append(helper.make_node("MatMulInteger", [inputs[0], f"{prefix}_b", inputs[2], f"{prefix}_zb"],
                                  list(node.output), name=node.name))  # fmt: skip
    return nodes
