"""Insert QuantizeLinear/DequantizeLinear pairs on every activation point (the QDQ form)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import constant
from qcompiler.pass_infra import PassResult, QcPass
from qcompiler.passes._qdq import BITS_KEY
from qcompiler.quant_plan import QParams, activation_points

_IR_TYPES = {"uint8": ir.DataType.UINT8, "int8": ir.DataType.INT8}


class InsertQDQPass(QcPass):
    """Quantize every activation point with its planned parameters.

    For a point ``v``: ``v_q = QuantizeLinear(v)`` and ``v' = DequantizeLinear(v_q)``; all consumers of ``v``
    then read ``v'``. A graph output keeps its name on the DequantizeLinear output. Requires parameters for
    every activation point (``params`` keyed by value name); raises ``KeyError`` naming the missing value.
    The result is a fake-quantized model that onnxruntime executes with the same rounding as the integer one.
    """

    def __init__(self, params: dict[str, QParams]):
        super().__init__()
        self.params = params

    def call(self, model: ir.Model) -> PassResult:
        """Insert the pairs."""
        graph = model.graph
        points = activation_points(graph)
        for value in points:
            if value.name not in self.params:
                raise KeyError(f"no quantization parameters for activation '{value.name}'")
            self._insert(graph, value, self.params[value.name])
        return PassResult(model, bool(points))

    @staticmethod
    def _insert(graph: ir.Graph, value: ir.Value, params: QParams) -> None:
        scale = constant(graph, np.array(params.scale, np.float32), f"{value.name}_scale")
        zero = constant(graph, np.array(params.zero_point, params.dtype), f"{value.name}_zero_point")
        quant = ir.node("QuantizeLinear", [value, scale, zero], name=f"{value.name}/quantize")
        if params.bits < 8:
            quant.metadata_props[BITS_KEY] = str(params.bits)
        dequant = ir.node("DequantizeLinear", [quant.outputs[0], scale, zero], name=f"{value.name}/dequantize")
        q_value, dq_value = quant.outputs[0], dequant.outputs[0]
        q_value.name = f"{value.name}_q"
        q_value.type, q_value.shape = ir.TensorType(_IR_TYPES[params.dtype]), value.shape
        dq_value.type, dq_value.shape = ir.TensorType(ir.DataType.FLOAT), value.shape
        producer = value.producer()
        if producer is None:
            graph.insert_before(graph.node(0), [quant, dequant]) if graph.num_nodes() else graph.extend([quant, dequant])
        else:
            graph.insert_after(producer, [quant, dequant])
        for user, index in list(value.uses()):
            if user is not quant:
                user.replace_input_with(index, dq_value)
        if value.is_graph_output():
            outputs = graph.outputs
            position = next(i for i, v in enumerate(outputs) if v is value)
            name = value.name
            value.name = f"{name}_float"
            dq_value.name = name
            outputs[position] = dq_value
        else:
            dq_value.name = f"{value.name}_dq"
