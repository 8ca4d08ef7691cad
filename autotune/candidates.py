"""Fast scoring of quantization candidates: calibrate once, integerize per candidate, run in onnxruntime.

A candidate is a :class:`~qcompiler.config.CompileConfig` (its per-layer ``layers`` table included). Its
score comes from onnxruntime running the candidate's integer model (``model.int.onnx``, which every
compiled library matches bit for bit), never from a TVM build. Calibration runs once per distinct
calibration recipe (:data:`~qcompiler.driver.CALIBRATION_FIELDS`) and is cached.

The **metric** (higher is better) is top-1 accuracy when the evaluation data has ``labels``, else top-1
agreement with the float model when the first output holds class scores ``[N, C]``, else ``-rel_l2`` of the
first output against the float model. ``rel_l2`` (``||int - float|| / ||float||`` over all evaluation
samples) is recorded for every candidate.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime

from qcompiler.config import CompileConfig
from qcompiler.driver import (
    CALIBRATION_FIELDS,
    CalibratedModel,
    calibrate_model,
    integerize_model,
    packed_weight_bytes,
)
from qcompiler.errors import CalibrationError
from qcompiler.evaluate import batches, evaluation_arrays
from qcompiler.ir import const_array
from qcompiler.qmath import packed_bytes
from qcompiler.quant_plan import input_groups, linear_layers
from qcompiler.reference import integer_session

__all__ = ["Layer", "Score", "CandidateEvaluator"]


@dataclass(frozen=True)
class Layer:
    """A linear layer of the model: weights, multiply-accumulates per inference, and whether its input width
    can be chosen (``input_group`` indexes ``CandidateEvaluator.groups``; -1: its input stays 8-bit)."""

    name: str
    op_type: str
    weights: int
    macs: int
    input_group: int


@dataclass(frozen=True)
class Score:
    """One scored candidate."""

    metric: float
    rel_l2: float
    weight_bytes: int  # the whole integer model, sub-8-bit weights packed
    layer_bytes: int  # the linear layers' weights, packed
    bops: int
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class CandidateEvaluator:
    """Scores configs of one model on fixed evaluation samples (see the module docstring).

    ``evaluation``: an ``.npz`` path or dict with the model inputs (first axis = samples) and optional integer
    ``labels``; ``samples`` caps how many are used. ``mantissa_bits``: the requantization multipliers' width
    of the target the chosen config is for (``Target.requant_mantissa_bits``).
    """

    def __init__(self, model, calibration, evaluation, base: CompileConfig | None = None, samples: int = 64,
                 mantissa_bits: int = 31):
        self.model = model
        self.mantissa_bits = mantissa_bits
        self.calibration = calibration
        self.base = base or CompileConfig()
        self._calibrated: dict[tuple, CalibratedModel] = {}
        self._scores: dict[str, Score] = {}
        reference = self.calibrated(self.base)
        graph = ir.serde.deserialize_model(reference.float_model).graph
        input_names = [v.name for v in graph.inputs]
        arrays = evaluation_arrays(evaluation, input_names)
        labels = arrays.pop("labels", None)
        batch = graph.inputs[0].shape[0]
        count = min(samples, min(len(arrays[name]) for name in input_names)) // batch * batch
        if count == 0:
            raise CalibrationError(f"evaluation data has fewer samples than one batch of {batch}")
        self.feeds = batches({name: arrays[name][:count] for name in input_names}, batch)
        self.labels = None if labels is None else np.asarray(labels[:count]).reshape(-1)
        self.reference = self._outputs(reference.float_model)
        self.metric_kind = ("accuracy" if self.labels is not None
                            else "agreement" if self.reference.ndim == 2 and self.reference.shape[1] > 1
                            else "neg_rel_l2")
        self.float_metric = self._metric(self.reference)
        self.groups = input_groups(graph)
        group_of = {name: i for i, group in enumerate(self.groups) for name in group}
        self.layers = [Layer(n.name, n.op_type, int(const_array(n.inputs[1]).size), _macs(n), group_of.get(n.name, -1))
                       for n in linear_layers(graph)]

    def calibrated(self, config: CompileConfig) -> CalibratedModel:
        """The calibration of ``config``'s recipe (computed on first use)."""
        key = tuple(repr(getattr(config, f)) for f in CALIBRATION_FIELDS)
        if key not in self._calibrated:
            self._calibrated[key] = calibrate_model(self.model, self.calibration, config)
        return self._calibrated[key]

    def score(self, config: CompileConfig) -> Score:
        """Integerize ``config`` on the cached calibration and score its integer model (once per config:
        a config asked for again, e.g. by two budgets of an ILP sweep, returns its first score)."""
        key = json.dumps(config.to_json(), sort_keys=True)
        if key not in self._scores:
            self._scores[key] = self._measure(config)
        return self._scores[key]

    def _measure(self, config: CompileConfig) -> Score:
        start = time.perf_counter()
        quantized = integerize_model(self.calibrated(config), config, self.mantissa_bits)
        outputs = self._outputs(quantized.int_model)
        rel_l2 = float(np.linalg.norm(outputs - self.reference) / max(np.linalg.norm(self.reference), 1e-30))
        widths = quantized.layer_bits
        bops = sum(layer.macs * widths[layer.name][0] * widths[layer.name][1] for layer in self.layers)
        layer_bytes = sum(packed_bytes(layer.weights, widths[layer.name][0]) for layer in self.layers)
        return Score(self._metric(outputs), rel_l2, packed_weight_bytes(quantized), layer_bytes, int(bops),
                     time.perf_counter() - start)

    def _outputs(self, model: onnx.ModelProto) -> np.ndarray:
        """The first output of ``model`` on every evaluation batch, concatenated along the sample axis."""
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # normalized float models keep initializers that folding made unused
        session = integer_session(model, options)
        name = session.get_outputs()[0].name
        return np.concatenate([session.run([name], feeds)[0] for feeds in self.feeds]).astype(np.float64)

    def _metric(self, outputs: np.ndarray) -> float:
        if self.metric_kind == "accuracy":
            return float(np.mean(outputs.argmax(axis=1) == self.labels))
        if self.metric_kind == "agreement":
            return float(np.mean(outputs.argmax(axis=1) == self.reference.argmax(axis=1)))
        return -float(np.linalg.norm(outputs - self.reference) / max(np.linalg.norm(self.reference), 1e-30))


def _macs(node: ir.Node) -> int:
    """Multiply-accumulates of one Conv/MatMul with static shapes: output elements times the reduction size."""
    out = node.outputs[0].shape
    elements = int(np.prod([int(d) for d in out])) if out is not None else 0
    weight = const_array(node.inputs[1])
    if node.op_type == "Conv":
        return elements * int(np.prod(weight.shape[1:]))  # weight [Cout, Cin/groups, kh, kw]
    return elements * int(weight.shape[0])  # MatMul weight [K, N]
