"""Matching helpers for the QDQ form: find the integer tensor behind a DequantizeLinear and the Q after an op.

In the QDQ form every activation point ``v`` is written ``q = QuantizeLinear(v); v' = DequantizeLinear(q)``
and consumers read ``v'``. An integerize pass matches ``DQ -> op -> Q`` and replaces it with integer nodes
from the DQ's integer input to the Q's integer output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qcompiler.ir import const_array, erase_if_unused, single_consumer
from qcompiler.qmath import code_range

#: QuantizeLinear metadata key holding an activation's bit width when it is narrower than its dtype.
BITS_KEY = "qc.bits"

_DTYPE_NAMES = {ir.DataType.UINT8: "uint8", ir.DataType.INT8: "int8", ir.DataType.INT32: "int32"}


@dataclass(frozen=True)
class Quantized:
    """An integer tensor ``value`` with ``real = scale * (value - zero_point)`` (scale may be per-axis)."""

    value: ir.Value
    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int
    bits: int = 8

    @property
    def qmin(self) -> int:
        """Smallest code (narrower than the dtype when ``bits < 8``)."""
        return code_range(self.dtype, self.bits)[0]

    @property
    def qmax(self) -> int:
        """Largest code."""
        return code_range(self.dtype, self.bits)[1]

    @property
    def per_tensor(self) -> bool:
        """Whether scale and zero point are scalars."""
        return self.scale.size == 1

    @property
    def zp(self) -> int:
        """The zero point of a per-tensor quantized tensor."""
        return int(self.zero_point.reshape(-1)[0])

    @property
    def s(self) -> float:
        """The scale of a per-tensor quantized tensor, as float64."""
        return float(np.float64(self.scale.reshape(-1)[0]))


def _params(node: ir.Node, data: ir.Value) -> Quantized | None:
    scale = const_array(node.inputs[1])
    zero = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if scale is None or data.dtype not in _DTYPE_NAMES:
        return None
    zero = np.zeros_like(scale, dtype=np.int64) if zero is None else zero.astype(np.int64)
    axis = node.attributes["axis"].value if "axis" in node.attributes else 1
    bits = int(node.metadata_props.get(BITS_KEY, 8))
    return Quantized(data, scale.astype(np.float32), zero, _DTYPE_NAMES[data.dtype], axis, bits)


def dequantized(value: ir.Value | None) -> Quantized | None:
    """The integer tensor behind ``value`` when ``value`` is produced by a DequantizeLinear, else ``None``."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    return _params(producer, producer.inputs[0])


def quantized_output(value: ir.Value) -> tuple[ir.Node, Quantized] | None:
    """The QuantizeLinear that alone consumes ``value``, with its integer output, else ``None``."""
    consumer = single_consumer(value)
    if consumer is None or consumer.op_type != "QuantizeLinear":
        return None
    params = _params(consumer, consumer.outputs[0])
    return None if params is None else (consumer, params)


def replace_island(graph: ir.Graph, float_nodes: list[ir.Node], quantize: ir.Node, result: ir.Value) -> None:
    """Make ``result`` (an integer value already in the graph) replace ``quantize``'s output.

    Removes ``quantize`` and the now-dead ``float_nodes`` and the DequantizeLinear nodes that fed them.
    Keeps the Q output's name on ``result`` so names of integer tensors stay stable.
    """
    target = quantize.outputs[0]
    result.shape = result.shape or target.shape
    result.type = result.type or target.type
    target.replace_all_uses_with(result, replace_graph_outputs=True)
    name = target.name
    graph.remove(quantize, safe=True)
    result.name = name
    feeders = []
    for node in reversed(float_nodes):
        feeders.extend(v.producer() for v in node.inputs if v is not None)
        erase_if_unused(graph, node)
    for feeder in feeders:
        if feeder is not None and feeder.op_type == "DequantizeLinear":
            erase_if_unused(graph, feeder)
