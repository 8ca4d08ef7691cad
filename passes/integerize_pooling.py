"""Integer GlobalAveragePool and AveragePool: integer window sums, then one requantization."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.ir import attr
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._fused import match_tail
from qcompiler.passes._qdq import dequantized, replace_island
from qcompiler.qmath import dyadic_common_shift


class IntegerizePoolingPass(RequantizingPass):
    """Rewrite average pooling as an int32 window sum followed by ``Requantize(s_x / (s_y * count))``.

    GlobalAveragePool sums with ReduceSum over the spatial axes. AveragePool sums with a depthwise
    ConvInteger of ones over the zero-point-padded input; with ``count_include_pad=0`` the divisor varies
    by position, so the multiplier is a per-position tensor sharing one shift. Does not fire on
    ``ceil_mode=1``, ``auto_pad`` or dilated pools.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching pool."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type in ("GlobalAveragePool", "AveragePool")]:
            x = dequantized(node.inputs[0])
            tail = match_tail(node.outputs[0])
            if x is None or not x.per_tensor or isinstance(tail, str):
                continue
            if node.op_type == "AveragePool" and (
                attr(node, "ceil_mode", 0) or attr(node, "auto_pad", "NOTSET") != "NOTSET"
                or any(d != 1 for d in attr(node, "dilations", []))
            ):
                continue
            emit = Emitter(graph, tail.quantize, node.name)
            if node.op_type == "GlobalAveragePool":
                out = self._global(emit, x, tail)
            else:
                out = self._windowed(emit, node, x, tail)
            replace_island(graph, [node, *tail.nodes], tail.quantize, out)
            modified = True
        return PassResult(model, modified)

    def _global(self, emit: Emitter, x, tail) -> ir.Value:
        shape = list(x.value.shape)
        axes = np.arange(2, len(shape), dtype=np.int64)
        total = emit.op("ReduceSum", [emit.centered(x.value, x.zp), emit.const(axes, "axes")], {"keepdims": 1},
                        dtype="int32")
        count = int(np.prod(shape[2:]))
        ratio = np.array(x.s / (np.float64(tail.output.s) * count))
        return emit.requantize(total, ratio, tail.output.zp, tail.output.dtype, self.mantissa_bits, tail.clamp)

    def _windowed(self, emit: Emitter, node: ir.Node, x, tail) -> ir.Value:
        kernel = list(attr(node, "kernel_shape"))
        pads = list(attr(node, "pads", [0] * 2 * len(kernel)))
        channels = x.value.shape[1]
        data = x.value
        if any(pads):
            half = len(pads) // 2
            full = np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64)
            data = emit.op("Pad", [data, emit.const(full, "pads"), emit.const(np.array(x.zp, x.dtype), "pad_value")],
                           {"mode": "constant"}, dtype=x.dtype)
        ones = np.ones((channels, 1, *kernel), np.int8)
        conv_attrs = {"group": channels, "kernel_shape": kernel, "strides": list(attr(node, "strides", [1] * len(kernel)))}
        window = emit.op("ConvInteger", [data, emit.const(ones, "ones")], conv_attrs, dtype="int32")
        area = int(np.prod(kernel))
        total = emit.op("Sub", [window, emit.const(np.array(x.zp * area, np.int32), "zp_area")], dtype="int32")
        counts = _window_counts(tail.output.value.shape[2:], x.value.shape[2:], kernel, conv_attrs["strides"], pads)
        if attr(node, "count_include_pad", 0) or not any(pads):
            counts = np.full_like(counts, area)
        multipliers, shift = dyadic_common_shift(x.s / (np.float64(tail.output.s) * counts), self.mantissa_bits)
        return emit.requantize_dyadic(total, multipliers[None, None], np.array(shift), tail.output.zp,
                                      tail.output.dtype, tail.clamp)


def _window_counts(out_shape, in_shape, kernel, strides, pads) -> np.ndarray:
    """Number of real (unpadded) input elements under each output window."""
    half = len(pads) // 2
    per_axis = []
    for o, size, k, s, begin in zip(out_shape, in_shape, kernel, strides, pads[:half], strict=True):
        starts = np.arange(o) * s - begin
        per_axis.append(np.minimum(starts + k, size) - np.maximum(starts, 0))
    grid = np.ones((), np.float64)
    for axis_counts in per_axis:
        grid = np.multiply.outer(grid, axis_counts.astype(np.float64))
    return grid
