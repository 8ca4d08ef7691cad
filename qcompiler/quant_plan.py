"""Which float values get quantized, and with which parameters.

The plan is computed on the normalized float graph (BatchNorm and affine ops folded, shapes static):

* an **activation point** is a float value that will hold an integer tensor: every graph input and every
  node output, except values *absorbed* by a fused consumer (a Conv/MatMul output feeding only a Relu/Clip
  or its bias Add; an Add feeding only a Relu/Clip; a Sigmoid feeding only ``x * Sigmoid(x)``);
* a **calibrated point** is an activation point whose range comes from calibration; outputs of
  range-preserving ops (MaxPool, Reshape, ...) reuse their input's parameters and Softmax uses fixed ones.

An attention mask reaches Softmax as ``Softmax(Where(keep, x, c))`` with ``keep`` a bool tensor computed
from integer inputs and ``c`` a constant at most :data:`MASK_FILL_MAX`: that Where is absorbed by the
Softmax (masked positions get probability 0 exactly).

Integer graph inputs (token ids, attention masks) are not activation points: they enter the integer region
as they are, and nodes computing only integer or bool tensors from them are supported as they are when the
op is in qc's integer op set (:func:`is_integer_node`). A **masked mean** (sentence-embedding pooling,
:func:`masked_mean`) ``Div(ReduceSum(x * Cast(m)), Clip(ReduceSum(Cast(m')), eps))`` with ``m``, ``m'``
integer tensors has one activation point, the Div output: its float interior is absorbed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler.intops import is_integer_op
from qcompiler.ir import attr, const_array, matmul_bias
from qcompiler.qmath import affine_qparams

__all__ = [
    "PASS_THROUGH_OPS",
    "MASK_FILL_MAX",
    "MaskedMean",
    "masked_mean",
    "is_integer_node",
    "passes_through",
    "is_softmax_mask",
    "UNARY_TABLE_OPS",
    "SUPPORTED_FLOAT_OPS",
    "QParams",
    "activation_points",
    "calibration_points",
    "linear_layers",
    "linear_readers",
    "input_groups",
    "assign_qparams",
    "unsupported_nodes",
]

#: ops whose integer form is the same op on the integer tensor, output sharing the input's parameters
#: (Gather only when it selects from an activation; a Gather from a constant table is an embedding).
PASS_THROUGH_OPS = frozenset(
    {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Pad", "Resize", "Identity",
     "Gather"}
)  # fmt: skip
#: largest fill value of a masking ``Where`` before Softmax (exporters use -10000, -1e9, float min or -inf).
MASK_FILL_MAX = -1e4
#: elementwise functions of one activation computed as a lookup table (exact for 8-bit inputs).
UNARY_TABLE_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu",
     "Softplus", "Softsign", "Gelu", "Mish", "Celu", "ThresholdedRelu"}
)  # fmt: skip
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
#: every float op the CNN pipeline can make integer (the check before quantization uses this table).
SUPPORTED_FLOAT_OPS = PASS_THROUGH_OPS | UNARY_TABLE_OPS | {
    "Conv", "MatMul", "Add", "Sub", "Sum", "Mul", "GlobalAveragePool", "AveragePool", "Concat", "Softmax",
    "LayerNormalization", "LpNormalization", "Where",
}  # fmt: skip



@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization of an activation: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str
    bits: int = 8


def passes_through(node: ir.Node) -> bool:
    """Whether ``node``'s output is its data input re-arranged (so it shares the input's parameters)."""
    return node.op_type in PASS_THROUGH_OPS and (node.op_type != "Gather" or const_array(node.inputs[0]) is None)


def is_softmax_mask(node: ir.Node) -> bool:
    """Whether ``node`` is ``Where(keep, x, c)`` masking a Softmax input (see the module docstring)."""
    if node.op_type != "Where" or node.inputs[0].dtype != ir.DataType.BOOL:
        return False
    fill = const_array(node.inputs[2])
    return fill is not None and fill.size == 1 and float(fill.reshape(-1)[0]) <= MASK_FILL_MAX


def is_integer_node(node: ir.Node) -> bool:
    """Whether ``node`` is an op of qc's integer op set reading and writing only non-float tensors."""
    values = [v for v in [*node.inputs, *node.outputs] if v is not None]
    return (node.domain in ("", "ai.onnx") and is_integer_op("", node.op_type)
            and all(v.dtype is not None and not v.dtype.is_floating_point() for v in values))


@dataclass(frozen=True)
class MaskedMean:
    """``Div(ReduceSum(data * Cast(mask)), Clip(ReduceSum(Cast(count_mask)), eps))`` over ``axes``."""

    div: ir.Node
    data: ir.Value
    mask: ir.Value
    count_mask: ir.Value
    axes: tuple[int, ...]
    keepdims: int
    interior: tuple[ir.Node, ...]


def _int_cast(value: ir.Value | None) -> ir.Value | None:
    """The non-float input of ``value = Cast<to=FLOAT>(m)``, else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "Cast" or node.outputs[0].dtype != ir.DataType.FLOAT:
        return None
    source = node.inputs[0]
    return source if source.dtype is not None and not source.dtype.is_floating_point() else None


def _reduce_sum(value: ir.Value | None) -> tuple[ir.Node, tuple[int, ...], int] | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "ReduceSum" or len(node.inputs) < 2:
        return None
    axes = const_array(node.inputs[1])
    if axes is None or attr(node, "noop_with_empty_axes", 0) or axes.size == 0:
        return None
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    return node, tuple(sorted(int(a) % max(rank, 1) for a in axes.reshape(-1))), int(attr(node, "keepdims", 1))


def masked_mean(node: ir.Node) -> MaskedMean | None:
    """The masked mean whose final ``Div`` is ``node`` (see the module docstring), else None.

    The count is ``Clip(count, min)`` with ``0 < min < 1`` (``torch.clamp(min=1e-9)``); every interior value
    is consumed inside the pattern only. The mask values are used as they are (the pooling is exact for any
    non-negative integer mask; attention masks hold 0/1).
    """
    if node.op_type != "Div" or node.outputs[0].dtype != ir.DataType.FLOAT:
        return None
    num, den = node.inputs[0], node.inputs[1]
    clip = den.producer()
    if clip is None or clip.op_type != "Clip" or len(clip.inputs) < 2 or clip.inputs[1] is None:
        return None
    low = const_array(clip.inputs[1])
    if low is None or low.size != 1 or not 0 < float(low.reshape(-1)[0]) < 1:
        return None
    if len(clip.inputs) > 2 and clip.inputs[2] is not None:
        return None
    summed, counted = _reduce_sum(num), _reduce_sum(clip.inputs[0])
    if summed is None or counted is None or summed[1:] != counted[1:]:
        return None
    product = summed[0].inputs[0].producer()
    if product is None or product.op_type != "Mul":
        return None
    masks = [(_int_cast(v), v) for v in product.inputs]
    found = [(m, v) for m, v in masks if m is not None]
    data = [v for m, v in masks if m is None]
    count_mask = _int_cast(counted[0].inputs[0])
    if len(found) != 1 or len(data) != 1 or count_mask is None or data[0].dtype != ir.DataType.FLOAT:
        return None
    interior = {product, summed[0], counted[0], clip, found[0][1].producer(), counted[0].inputs[0].producer()}
    for inner in interior:
        if inner.outputs[0].is_graph_output() or any(u not in interior and u is not node for u in inner.outputs[0].consumers()):
            return None
    order = [n for n in node.graph if n in interior] if node.graph is not None else list(interior)
    return MaskedMean(node, data[0], found[0][0], count_mask, summed[1], summed[2], tuple(order))


def _masked_mean_interiors(graph: ir.Graph) -> set[ir.Node]:
    """The absorbed float nodes of every masked mean of ``graph``."""
    found: set[ir.Node] = set()
    for node in graph:
        mean = masked_mean(node) if node.op_type == "Div" else None
        if mean is not None:
            found.update(mean.interior)
    return found


def _is_bias_add(node: ir.Node) -> bool:
    return node.op_type == "Add" and any(const_array(v) is not None for v in node.inputs[:2])


def _absorbs(producer: ir.Node, consumer: ir.Node, value: ir.Value) -> bool:
    """Whether ``consumer`` is fused with ``producer`` so that ``value`` is never materialized as integer."""
    if consumer.op_type in _FUSED_ACTIVATIONS and producer.op_type in ("Conv", "MatMul", "Add", "Sub", "Sum"):
        return producer.op_type != "Add" or not _is_bias_add(producer) or matmul_bias(producer) is not None
    if producer.op_type == "MatMul" and matmul_bias(consumer) is not None:
        return True
    if consumer.op_type == "Softmax" and is_softmax_mask(producer):
        return True
    if producer.op_type == "Sigmoid" and consumer.op_type == "Mul":
        return producer.inputs[0] in consumer.inputs and value in consumer.inputs
    return False


def _absorbed(value: ir.Value) -> bool:
    producer = value.producer()
    users = value.consumers()
    if producer is None or value.is_graph_output() or len(users) != 1:
        return False
    return _absorbs(producer, users[0], value)


def activation_points(graph: ir.Graph) -> list[ir.Value]:
    """Float values that hold integer tensors after quantization, in topological order."""
    points = [v for v in graph.inputs if v.dtype == ir.DataType.FLOAT]
    pooled = _masked_mean_interiors(graph)
    for node in graph:
        if node in pooled:
            continue
        for out in node.outputs:
            if out.dtype == ir.DataType.FLOAT and not _absorbed(out):
                points.append(out)
    return points


def calibration_points(graph: ir.Graph) -> list[ir.Value]:
    """Activation points whose range must be calibrated (not inherited, not fixed)."""
    out = []
    for value in activation_points(graph):
        producer = value.producer()
        if producer is not None and (passes_through(producer) or producer.op_type == "Softmax"):
            continue
        out.append(value)
    return out


def assign_qparams(graph: ir.Graph, ranges: dict[str, tuple[float, float]], dtype: str, bits: int = 8,
                   attention_bits: int = 8, layer_bits: Mapping[str, int] | None = None) -> dict[str, QParams]:
    """Parameters of every activation point from calibrated ``ranges`` (keyed by value name).

    Pass-through outputs inherit their input's parameters. Softmax outputs are fixed: probabilities on
    [0, 1] in 255 uint8 steps, or ``2**attention_bits - 1`` steps when they feed an attention MatMul.
    Activations that only feed MatMul/Conv (the inputs of linear layers and of Q·Kᵀ, A·V) are ``bits`` wide,
    or, for a layer named in ``layer_bits`` (node name -> width of its input), that width; a value read by
    several linear layers gets the widest of their widths (so layers sharing an input share its width). The
    others (graph inputs and outputs, the residual stream, LayerNorm and Softmax inputs) stay 8-bit, the
    convention of RepQ-ViT's and FQ-ViT's low-bit settings.
    """
    params: dict[str, QParams] = {}
    for value in activation_points(graph):
        producer = value.producer()
        readers = linear_readers(value) if producer is not None else None
        width = max((layer_bits or {}).get(r.name, bits) for r in readers) if readers else 8
        if producer is not None and passes_through(producer):
            params[value.name] = params[producer.inputs[0].name]
        elif producer is not None and producer.op_type == "Softmax":
            width = attention_bits if _feeds_matmul(value) else 8
            params[value.name] = QParams(1.0 / (2**width - 1), 0, "uint8", width)
        else:
            rmin, rmax = ranges[value.name]
            scale, zero_point = affine_qparams(rmin, rmax, dtype, width)
            params[value.name] = QParams(float(np.float32(scale)), zero_point, dtype, width)
    return params


def linear_readers(value: ir.Value) -> list[ir.Node] | None:
    """The MatMul/Conv nodes reading ``value`` (looking through pass-through ops), or None when some use is
    not a linear-layer input (or ``value`` is a graph output or unused)."""
    users = value.consumers()
    if not users or value.is_graph_output():
        return None
    readers: list[ir.Node] = []
    for user in users:
        if passes_through(user) and user.inputs[0] is value:
            inner = linear_readers(user.outputs[0])
            if inner is None:
                return None
            readers += inner
        elif user.op_type in ("MatMul", "Conv"):
            readers.append(user)
        else:
            return None
    return readers


def linear_layers(graph: ir.Graph) -> list[ir.Node]:
    """The Conv/MatMul nodes with a constant weight (the layers whose widths a config sets), in graph order."""
    return [n for n in graph if n.op_type in ("Conv", "MatMul") and const_array(n.inputs[1]) is not None]


def input_groups(graph: ir.Graph) -> list[list[str]]:
    """Names of linear layers grouped by the activation they read (one group per quantized input, through
    pass-through ops): the layers of a group share their input's width (:func:`assign_qparams`). A layer in
    no group reads an 8-bit activation whatever its configured width (a graph input, or a value that also
    feeds a non-linear op such as a residual Add)."""
    layers = {n.name for n in linear_layers(graph)}
    groups: dict[str, list[str]] = {}
    for value in activation_points(graph):
        producer = value.producer()
        if producer is None or passes_through(producer):
            continue
        readers = linear_readers(value)
        names = [r.name for r in readers or [] if r.name in layers]
        if names:
            groups[value.name] = list(dict.fromkeys(names))
    return list(groups.values())


def _feeds_matmul(value: ir.Value) -> bool:
    return not value.is_graph_output() and any(user.op_type == "MatMul" for user in value.consumers())


def unsupported_nodes(graph: ir.Graph) -> list[tuple[str, str, str]]:
    """``(op_type, node name, reason)`` for every node the CNN pipeline cannot make integer."""
    problems = []
    pooled = _masked_mean_interiors(graph)
    for node in graph:
        if node in pooled or is_integer_node(node) or (node.op_type == "Div" and masked_mean(node) is not None):
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append((f"{node.domain}.{node.op_type}", node.name or "", "custom-domain ops are not supported"))
        elif node.op_type not in SUPPORTED_FLOAT_OPS:
            problems.append((node.op_type, node.name or "", "no integer form in qc yet"))
        elif node.op_type == "Where" and not _masks_softmax(node):
            problems.append((node.op_type, node.name or "", "only a Where masking a Softmax input is supported"))
        elif node.op_type == "Softmax" and not _softmax_on_last_axis(node):
            problems.append((node.op_type, node.name or "", "integer Softmax needs the last axis"))
        elif node.op_type == "Resize" and node.attributes.get("mode") is not None and node.attributes["mode"].value != "nearest":
            problems.append((node.op_type, node.name or "", "only mode='nearest' Resize is integer"))
    return problems


def _masks_softmax(node: ir.Node) -> bool:
    users = node.outputs[0].consumers()
    return is_softmax_mask(node) and len(users) == 1 and users[0].op_type == "Softmax"


def _softmax_on_last_axis(node: ir.Node) -> bool:
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 0
    axis = node.attributes["axis"].value if "axis" in node.attributes else -1
    return axis in (-1, rank - 1)
