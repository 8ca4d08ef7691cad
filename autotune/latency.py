"""Per-layer latency tables for the mixed-precision search, measured on the target.

A table holds, for each linear layer (Conv/MatMul with a constant weight) and each weight width, the seconds
one run spends in that layer's integer ops as the target builds them. For each width, the candidate with
every linear layer at that width is integerized on the evaluator's calibration; each layer's ops (the
integer nodes named ``<layer>/...``: padding, the ``ConvInteger``/``MatMulInteger``, its bias and
requantization) become a region of their own, lowered and fused for the target exactly as ``qc compile``
does, and every TIR function of it is timed with qc's default schedule by the tuning runner
(:class:`~qcompiler.targets.tuning.Measurement`: this host, or a device behind a TVM RPC tracker), times its
calls. Equal functions (layers of one shape at one width) are timed once.

What makes a layer's time depend on its width is the target's kernel choice: on AVX2, weights of up to 7
bits run on ``vpmaddubsw`` (:class:`~qcompiler.targets.int8_kernels.NarrowPairwiseDotProduct`); with VNNI
or ``sdot`` every width of at most 8 bits runs the same instruction, and the table says so.
"""

from __future__ import annotations

import dataclasses

import onnx

from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.mixed_precision import layer_input_bits
from qcompiler.config import CompileConfig
from qcompiler.driver import integerize_model
from qcompiler.errors import QcError
from qcompiler.targets import get_target
from qcompiler.targets import tuning as tvm_tuning
from qcompiler.targets._base import Progress

__all__ = ["LatencyTable", "layer_region", "layer_seconds", "measure_latency"]


@dataclasses.dataclass(frozen=True)
class LatencyTable:
    """``seconds[layer][weight_bits]``: seconds per run of each linear layer's ops; where and for what target
    they were measured."""

    seconds: dict[str, dict[int, float]]
    target: str
    measured_on: str

    def to_json(self) -> dict:
        return {"target": self.target, "measured_on": self.measured_on,
                "seconds": {name: {str(w): s for w, s in row.items()} for name, row in self.seconds.items()}}

    @classmethod
    def from_json(cls, data: dict) -> LatencyTable:
        return cls({name: {int(w): s for w, s in row.items()} for name, row in data["seconds"].items()},
                   data["target"], data["measured_on"])


def layer_region(region: onnx.ModelProto, layer: str) -> onnx.ModelProto:
    """The integer nodes of ``layer`` (named ``<layer>/...`` by the integerize passes) as a region of their
    own: its inputs are the tensors they read from outside, its outputs those read outside or graph outputs.
    Shapes come from the region's value infos. Raises :class:`QcError` when the layer has no integer nodes
    or a boundary tensor has no recorded shape."""
    graph = region.graph
    nodes = [n for n in graph.node if n.name.startswith(f"{layer}/")]
    names = {n.name for n in nodes}
    if not nodes:
        raise QcError(f"layer '{layer}' has no integer nodes in the integer model (expected nodes named '{layer}/...')")
    inits = {t.name: t for t in graph.initializer}
    produced = {out for n in nodes for out in n.output}
    read_outside = {name for n in graph.node if n.name not in names for name in n.input} | {v.name for v in graph.output}
    inputs = list(dict.fromkeys(name for n in nodes for name in n.input
                                if name and name not in produced and name not in inits))
    outputs = [name for n in nodes for name in n.output if name in read_outside]
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    missing = [name for name in inputs + outputs if name not in types]
    if missing:
        raise QcError(f"layer '{layer}': no shape recorded for tensor(s) {missing} of the integer model")
    used = {name for n in nodes for name in n.input}
    sub = onnx.helper.make_graph(nodes, f"{layer} alone", [types[name] for name in inputs],
                                 [types[name] for name in outputs], [inits[name] for name in used if name in inits])
    return onnx.helper.make_model(sub, opset_imports=region.opset_import, ir_version=region.ir_version,
                                  functions=region.functions)  # qc's ops are model-local functions


def measure_latency(evaluator: CandidateEvaluator, base: CompileConfig, widths: tuple[int, ...],
                    measurement: tvm_tuning.Measurement | None = None,
                    progress: Progress | None = None) -> LatencyTable:  # fmt: skip
    """The latency table of ``evaluator``'s linear layers at each of ``widths`` (inputs at ``base``'s width
    where a layer's input width can be chosen, else 8 bits), for ``base``'s target (see the module doc),
    timed where ``measurement`` says (None: this host; :func:`~qcompiler.targets.tuning.measurement_for`
    refuses targets without a kernel runner)."""
    measurement = measurement or tvm_tuning.Measurement()
    widths = tuple(sorted(set(widths)))
    configs = [base.replace(layers={layer.name: {"weight_bits": w, "activation_bits": layer_input_bits(layer, base)}
                                    for layer in evaluator.layers}) for w in widths]
    rows = layer_seconds(evaluator, configs, measurement, progress)
    table = {layer.name: {w: row[layer.name] for w, row in zip(widths, rows, strict=True)} for layer in evaluator.layers}
    return LatencyTable(table, str(get_target(base.target, **base.target_options).tvm_target()), measurement.place)


def layer_seconds(evaluator: CandidateEvaluator, configs: list[CompileConfig],
                  measurement: tvm_tuning.Measurement | None = None,
                  progress: Progress | None = None) -> list[dict[str, float]]:  # fmt: skip
    """Seconds per run of each linear layer's ops under each of ``configs`` (one target, the first config's),
    all timed in one runner session where ``measurement`` says (None: this host). Raises :class:`QcError`
    naming a layer whose functions did not run."""
    measurement = measurement or tvm_tuning.Measurement()
    target = get_target(configs[0].target, **configs[0].target_options)
    keys, fused = [], []
    for index, config in enumerate(configs):
        if progress is not None:
            progress("latency: lower layers", index, len(configs))
        region = integerize_model(evaluator.calibrated(config), config, evaluator.mantissa_bits).region()
        for layer in evaluator.layers:
            keys.append((index, layer.name))
            fused.append(tvm_tuning.fused_module(layer_region(region, layer.name), target))
    if progress is not None:
        progress("latency: time kernels", 0, -1)
    rows: list[dict[str, float]] = [{} for _ in configs]
    for (index, name), value in zip(keys, tvm_tuning.region_seconds(fused, target.tvm_target(), measurement),
                                    strict=True):
        if value is None:
            raise QcError(f"layer '{name}': a kernel of it did not run on {measurement.place}")
        rows[index][name] = value
    return rows
