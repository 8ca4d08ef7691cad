"""Integer LayerNorm on the last axis: exact integer variance, integer Newton square root, one division per row."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompiler.errors import OverflowRiskError
from qcompiler.intmath.layer_norm import POWERS_OF_TWO, START_TABLE, NormConstants, layer_norm_constants
from qcompiler.intops import DOMAIN
from qcompiler.ir import attr, const_array
from qcompiler.nonlinear import record
from qcompiler.pass_infra import PassResult
from qcompiler.passes._emit import Emitter, RequantizingPass
from qcompiler.passes._qdq import Quantized, dequantized, quantized_output, replace_island

_INT32 = (-(2**31), 2**31 - 1)


def last_axis_length(x: Quantized, axis: int) -> int | None:
    """The static length of the last axis when ``axis`` names it, else ``None``."""
    shape = x.value.shape
    if shape is None or len(shape) == 0 or axis not in (-1, len(shape) - 1):
        return None
    length = shape[-1]
    return length if isinstance(length, int) and length > 0 else None


def emit_isqrt(emit: Emitter, n: ir.Value, axes: ir.Value, steps: int) -> ir.Value:
    """``floor(sqrt(n))`` of an int64 ``n`` (``1 <= n < 2**62``, last axis of size 1), as
    :func:`qcompiler.intmath.layer_norm.isqrt` computes it: bit length by ``Less`` against ``2**0..2**62``
    and ``ReduceSum``, the start ``2**ceil(L/2)`` by ``Gather``, then ``steps`` unrolled Newton steps
    ``x <- Min(x, Max((x + n / x) / 2, 1))``. The ``Max`` never changes a value (``n, x >= 1`` make the step
    at least 1); it lets a target prove every divisor ``>= 1`` and divide without a zero guard."""
    below = emit.op("Less", [n, emit.const(POWERS_OF_TWO, "powers_of_two")], dtype="bool")
    count = emit.op("ReduceSum", [emit.cast(below, "int64"), axes], {"keepdims": 1}, dtype="int64")
    x = emit.op("Gather", [emit.const(START_TABLE, "isqrt_start"), count], {"axis": 0}, dtype="int64")
    two = emit.const(np.array(2, np.int64), "two")
    one = emit.const(np.array(1, np.int64), "one")
    for _ in range(steps):
        quotient = emit.op("Div", [n, x], dtype="int64")
        halved = emit.op("Div", [emit.op("Add", [x, quotient], dtype="int64"), two], dtype="int64")
        x = emit.op("Min", [x, emit.op("Max", [halved, one], dtype="int64")], dtype="int64")
    return x


def emit_normalized(emit: Emitter, y: ir.Value, square_sum: ir.Value, axes: ir.Value, k: NormConstants,
                    at_least_one: bool = False) -> ir.Value:
    """``z = round_shift(y * (2**P // isqrt(4**G * square_sum + eps_int)), P - G - F)`` in int32."""
    n = square_sum
    if k.prescale_bits:
        n = emit.op("Mul", [n, emit.const(np.array(4**k.prescale_bits, np.int64), "prescale")], dtype="int64")
    if k.eps_int:
        n = emit.op("Add", [n, emit.const(np.array(k.eps_int, np.int64), "eps")], dtype="int64")
    if at_least_one:
        n = emit.op("Max", [n, emit.const(np.array(1, np.int64), "one")], dtype="int64")
    root = emit_isqrt(emit, n, axes, k.steps)
    numerator = emit.const(np.array(1 << k.reciprocal_bits, np.int64), "reciprocal_numerator")
    reciprocal = emit.op("Div", [numerator, root], dtype="int64")
    inputs = [
        y,
        reciprocal,
        emit.const(np.array(k.normalize_shift, np.int64), "normalize_shift"),
        emit.const(np.array(0, np.int64), "zero"),
        emit.const(np.array(_INT32[0], np.int64), "int32_min"),
        emit.const(np.array(_INT32[1], np.int64), "int32_max"),
    ]
    return emit.op("Requantize", inputs, {"to": ir.DataType.INT32}, domain=DOMAIN, dtype="int32")


class IntegerizeLayerNormPass(RequantizingPass):
    """Rewrite ``DQ(x) -> LayerNormalization(gamma, beta, axis=-1, epsilon) -> Q`` with integer ops only.

    The arithmetic is :func:`qcompiler.intmath.layer_norm.layer_norm` (see that module for the ranges and
    the error bound): ``c = x_q - zp_x`` (int32), ``y = N*c - ReduceSum(c)``, ``v = ReduceSum(int64(y)**2)``,
    ``n = 4**G * v + eps_int``, ``k = isqrt(n)`` (Newton, no float), ``R = 2**62 / k`` (one Div per row),
    ``z = Requantize(y, R, 62 - G - F)`` with ``F = 24`` fractional bits, then per channel
    ``Requantize(z * M_j + B_j, 1, S, zp_y)`` clamped to the output's code range.

    Requires per-tensor ``x`` and output, constant ``gamma``/``beta`` (``beta`` optional) and a static last
    axis. Raises :class:`OverflowRiskError` naming the node when ``N**3 * W**2 / 4 >= 2**53`` (``W`` the code
    range of ``x``: ``N <= 8213`` for 8-bit codes). Does not fire on LayerNorm over more than the last axis
    or when the Mean / InvStdDev outputs are used. Records ``P, F, K, G, shift, eps_int`` with
    :func:`qcompiler.nonlinear.record`.
    """

    def call(self, model: ir.Model) -> PassResult:
        """Rewrite every matching LayerNormalization."""
        graph = model.graph
        modified = False
        for node in [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]:
            x = dequantized(node.inputs[0])
            found = quantized_output(node.outputs[0])
            if x is None or found is None or not x.per_tensor:
                continue
            if any(len(o.consumers()) or o.is_graph_output() for o in node.outputs[1:]):
                continue
            length = last_axis_length(x, attr(node, "axis", -1))
            gamma = const_array(node.inputs[1])
            beta = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(1)
            quant, out = found
            if length is None or gamma is None or beta is None or not out.per_tensor:
                continue
            if gamma.size not in (1, length) or beta.size not in (1, length):
                continue
            what = f"LayerNormalization '{node.name}'"
            try:
                k = layer_norm_constants(length, x.s, x.qmax - x.qmin, attr(node, "epsilon", 1e-5), gamma, beta,
                                         out.s, self.mantissa_bits, what)
            except OverflowRiskError as error:
                raise OverflowRiskError(f"{error}; cannot make {what} integer-only") from None
            emit = Emitter(graph, quant, node.name)
            axes = emit.const(np.array([-1], np.int64), "axes")
            c = emit.centered(x.value, x.zp)
            total = emit.op("ReduceSum", [c, axes], {"keepdims": 1}, dtype="int32")
            scaled = emit.op("Mul", [c, emit.const(np.array(length, np.int32), "length")], dtype="int32")
            y = emit.op("Sub", [scaled, total], dtype="int32")
            wide = emit.cast(y, "int64")
            square_sum = emit.op("ReduceSum", [emit.op("Mul", [wide, wide], dtype="int64"), axes], {"keepdims": 1},
                                 dtype="int64")
            z = emit_normalized(emit, y, square_sum, axes, k)
            product = emit.op("Mul", [emit.cast(z, "int64"), emit.const(k.multipliers, "gamma_multiplier")],
                              dtype="int64")
            acc = emit.op("Add", [product, emit.const(k.biases, "beta_bias")], dtype="int64")
            result = emit.requantize_dyadic(acc, np.array(1), np.array(k.shift), out.zp, out.dtype,
                                            (out.qmin, out.qmax))
            replace_island(graph, [node], quant, result)
            record(model, node.name, op="LayerNormalization", method="isqrt", constants=k.summary(), error=None)
            modified = True
        return PassResult(model, modified)
