"""The compile driver: float ONNX -> normalized -> calibrated -> QDQ -> integer -> target library.

This is the top of the import order (core <- passes <- targets <- driver): it may import targets.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from qcompiler.calibration import collect_channel_ranges, collect_ranges, collect_samples
from qcompiler.config import CompileConfig
from qcompiler.errors import UnsupportedOpsError
from qcompiler.model_io import integer_region, load_float_model, refuse_empty_values
from qcompiler.passes.reparameterize_layer_norm import ReparameterizeLayerNormPass, reparameterizable
from qcompiler.pipelines import integerize_pipeline, normalize_pipeline, quantize_pipeline
from qcompiler.quant_plan import assign_qparams, calibration_points, unsupported_nodes

#: ops whose integer approximation has constants fitted to calibration samples of their input.
_FITTED_OPS = ("Softmax", "Gelu")

__all__ = ["Progress", "QuantizedModel", "quantize_model", "weight_bytes"]

#: progress callback: ``progress(stage, done, total)`` with ``total == -1`` when unknown.
Progress = Callable[[str, int, int], None]


@dataclass
class QuantizedModel:
    """The outcome of quantization: the three model forms and what happened to each float op."""

    float_model: onnx.ModelProto
    qdq_model: onnx.ModelProto
    int_model: onnx.ModelProto
    ranges: dict[str, tuple[float, float]]
    op_counts: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def region(self) -> onnx.ModelProto:
        """The integer region (integer inputs and outputs) that targets compile."""
        return integer_region(self.int_model)


def quantize_model(model, calibration, config: CompileConfig, mantissa_bits: int = 31,
                   progress: Progress | None = None) -> QuantizedModel:
    """Normalize, calibrate and integerize ``model`` (path or ModelProto) under ``config``."""
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

    start = time.perf_counter()
    params = assign_qparams(ir_model.graph, ranges, config.activation_dtype, config.activation_bits,
                            config.attention_bits)
    quantize_pipeline(params, config.weight_bits)(ir_model)
    qdq_proto = ir.serde.serialize_model(ir_model)
    integerize_pipeline(mantissa_bits, config, samples)(ir_model)
    int_proto = ir.serde.serialize_model(ir_model)
    timings["integerize"] = time.perf_counter() - start
    return QuantizedModel(float_proto, qdq_proto, int_proto, ranges, op_counts, timings)


def _reparameterize(model: ir.Model, calibration, config: CompileConfig) -> None:
    """RepQ-ViT: per-channel ranges of post-LayerNorm activations folded into the graph (exact in float)."""
    names = [n.outputs[0].name for n in model.graph if reparameterizable(n)]
    if names:
        ranges = collect_channel_ranges(ir.serde.serialize_model(model), names, calibration)
        ReparameterizeLayerNormPass(ranges, config.activation_dtype, config.activation_bits)(model)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers of ``model`` (the weights and integer parameters)."""
    return int(sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer))
