"""The compile driver: float ONNX -> normalized -> calibrated -> QDQ -> integer -> target library.

This is the top of the import order (core <- passes <- targets <- driver): it may import targets.
"""

from __future__ import annotations

import collections
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from qcompiler.calibration import collect_channel_ranges, collect_ranges, collect_samples
from qcompiler.config import CompileConfig
from qcompiler.errors import QcWarning, UnsupportedOpsError
from qcompiler.ir import const_array
from qcompiler.model_io import integer_region, load_float_model, refuse_empty_values
from qcompiler.passes.reparameterize_layer_norm import ReparameterizeLayerNormPass, reparameterizable
from qcompiler.pipelines import integerize_pipeline, normalize_pipeline, quantize_pipeline
from qcompiler.qmath import packed_bytes
from qcompiler.quant_plan import (
    assign_qparams,
    calibration_points,
    linear_layers,
    linear_readers,
    unsupported_nodes,
)

#: ops whose integer approximation has constants fitted to calibration samples of their input.
_FITTED_OPS = ("Softmax", "Gelu")

__all__ = ["CALIBRATION_FIELDS", "CalibratedModel", "Progress", "QuantizedModel", "calibrate_model", "integerize_model",
           "quantize_model", "weight_bytes", "packed_weight_bytes"]

#: progress callback: ``progress(stage, done, total)`` with ``total == -1`` when unknown.
Progress = Callable[[str, int, int], None]


@dataclass
class QuantizedModel:
    """The outcome of quantization: the three model forms, what happened to each float op, and per linear
    layer (Conv/MatMul with a constant weight) its widths ``(weight_bits, activation_bits)`` and its number
    of weights."""

    float_model: onnx.ModelProto
    qdq_model: onnx.ModelProto
    int_model: onnx.ModelProto
    ranges: dict[str, tuple[float, float]]
    op_counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    layer_bits: dict[str, tuple[int, int]] = field(default_factory=dict)
    layer_weights: dict[str, int] = field(default_factory=dict)

    def region(self) -> onnx.ModelProto:
        """The integer region (integer inputs and outputs) that targets compile."""
        return integer_region(self.int_model)


@dataclass
class CalibratedModel:
    """A normalized (and reparameterized) float model with its calibration: everything that
    :func:`integerize_model` needs to quantize it under any per-layer widths, without calibrating again.

    Valid for configs that agree with the one it was calibrated under on :data:`CALIBRATION_FIELDS`
    (per-layer widths may differ: RepQ-ViT's factors were fitted at the calibration-time widths, and a
    reparameterized activation quantized at another width is still exact in float, only less well fitted).
    """

    float_model: onnx.ModelProto
    ranges: dict[str, tuple[float, float]]
    samples: dict
    op_counts: dict[str, int]
    config: CompileConfig
    timings: dict[str, float] = field(default_factory=dict)


#: config fields that change what calibration measures (a :class:`CalibratedModel` is valid only for them).
CALIBRATION_FIELDS = ("calibration_method", "percentile", "activation_dtype", "reparam", "input_shapes")


def quantize_model(model, calibration, config: CompileConfig, mantissa_bits: int = 31,
                   progress: Progress | None = None) -> QuantizedModel:
    """Normalize, calibrate and integerize ``model`` (path or ModelProto) under ``config``."""
    return integerize_model(calibrate_model(model, calibration, config, progress), config, mantissa_bits)


def calibrate_model(model, calibration, config: CompileConfig, progress: Progress | None = None) -> CalibratedModel:
    """Normalize ``model`` (path or ModelProto), reparameterize it and calibrate its activation ranges."""
    timings = {}
    start = time.perf_counter()
    ir_model = load_float_model(model)
    normalize_pipeline(config.input_shapes)(ir_model)
    refuse_empty_values(ir_model.graph)
    problems = unsupported_nodes(ir_model.graph)
    if problems:
        raise UnsupportedOpsError(problems)
    op_counts = dict(collections.Counter(node.op_type for node in ir_model.graph))
    timings["normalize"] = time.perf_counter() - start

    start = time.perf_counter()
    if config.reparam:
        _reparameterize(ir_model, calibration, config)
    float_proto = ir.serde.serialize_model(ir_model)
    names = [v.name for v in calibration_points(ir_model.graph)]
    report = (lambda done, total: progress("calibrate", done, total)) if progress else None
    ranges = collect_ranges(float_proto, names, calibration, method=config.calibration_method, progress=report,
                            dtype=config.activation_dtype, percentile=config.percentile,
                            unclipped=frozenset(v.name for v in ir_model.graph.outputs))
    fitted = {n.name: n.inputs[0].name for n in ir_model.graph if n.op_type in _FITTED_OPS}
    inputs = collect_samples(float_proto, list(fitted.values()), calibration) if fitted else {}
    samples = {node: inputs[value] for node, value in fitted.items()}
    timings["calibrate"] = time.perf_counter() - start
    return CalibratedModel(float_proto, ranges, samples, op_counts, config, timings)


def integerize_model(calibrated: CalibratedModel, config: CompileConfig, mantissa_bits: int = 31) -> QuantizedModel:
    """Quantize and integerize a copy of ``calibrated`` under ``config`` (its per-layer widths included)."""
    mismatched = [f for f in CALIBRATION_FIELDS if getattr(config, f) != getattr(calibrated.config, f)]
    if mismatched:
        raise ValueError(f"config differs from the calibration's in {mismatched}; calibrate again")
    start = time.perf_counter()
    ir_model = ir.serde.deserialize_model(calibrated.float_model)
    layers = linear_layers(ir_model.graph)
    counts = {n.name: int(const_array(n.inputs[1]).size) for n in layers}
    widths = config.layer_widths(counts)
    params = assign_qparams(ir_model.graph, calibrated.ranges, config.activation_dtype, config.activation_bits,
                            config.attention_bits, {name: a for name, (_, a) in widths.items()})
    effective = {n.name: (widths[n.name][0], params[n.inputs[0].name].bits) for n in layers}
    _warn_fixed_inputs(config, widths, effective)
    quantize_pipeline(params, config.weight_bits, {name: w for name, (w, _) in widths.items()},
                      config.per_channel)(ir_model)
    qdq_proto = ir.serde.serialize_model(ir_model)
    integerize_pipeline(mantissa_bits, config, calibrated.samples)(ir_model)
    int_proto = ir.serde.serialize_model(ir_model)
    timings = {**calibrated.timings, "integerize": time.perf_counter() - start}
    return QuantizedModel(calibrated.float_model, qdq_proto, int_proto, calibrated.ranges, calibrated.op_counts,
                          timings, effective, counts)


def _warn_fixed_inputs(config: CompileConfig, asked: dict, effective: dict) -> None:
    """Warn about layers whose input width, set by a ``layers`` entry, could not be applied (see
    ``quant_plan.input_groups``); the global ``activation_bits`` skips such layers silently, as documented."""
    named = [n for n in asked if asked[n][1] != effective[n][1] and config.sets_activation_bits(n)]
    if named:
        warnings.warn(QcWarning(f"activation_bits of {', '.join(named[:5])}{' ...' if len(named) > 5 else ''} not "
                                "applied: the input is a graph input, also feeds a non-linear op, or is shared "
                                "with a wider layer (report.json shows the widths used)"), stacklevel=3)


def _reparameterize(model: ir.Model, calibration, config: CompileConfig) -> None:
    """RepQ-ViT: per-channel ranges of post-LayerNorm activations folded into the graph (exact in float), at
    the width the LayerNorm output gets under ``config`` (the widest of its readers)."""
    outputs = [n.outputs[0] for n in model.graph if reparameterizable(n)]
    if outputs:
        ranges = collect_channel_ranges(ir.serde.serialize_model(model), [v.name for v in outputs], calibration)
        widths = config.layer_widths(n.name for n in linear_layers(model.graph))
        bits = {v.name: max((widths[r.name][1] for r in linear_readers(v) or []), default=config.activation_bits)
                for v in outputs}
        ReparameterizeLayerNormPass(ranges, config.activation_dtype, bits)(model)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers of ``model`` (the weights and integer parameters)."""
    return int(sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def packed_weight_bytes(quantized: QuantizedModel) -> int:
    """:func:`weight_bytes` of the integer model with each sub-8-bit layer weight counted packed,
    ``ceil(n * bits / 8)`` bytes for ``n`` weights (stored one per int8 in ``model.int.onnx``)."""
    saved = sum(n - packed_bytes(n, quantized.layer_bits[name][0]) for name, n in quantized.layer_weights.items())
    return weight_bytes(quantized.int_model) - saved
