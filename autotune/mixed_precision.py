"""Mixed-precision search: per-layer weight (and input) widths under a size or BOPs budget.

``ilp``: sensitivities (:mod:`~qcompiler.autotune.sensitivity`) and per-layer costs make a
:class:`~qcompiler.autotune.ilp.WidthProblem`; the ILP picks the widths at the budget and at a sweep of
budgets (the trade-off curve). ``random``: random per-layer widths that meet the budget (narrowing randomly
chosen layers from the widest configuration until the budget holds), the baseline the ILP must beat.

Costs are those of the linear layers (Conv/MatMul with constant weights), and budgets are fractions of
their cost under the base config: ``size`` counts their weight bytes with sub-8-bit weights packed
(``ceil(n * bits / 8)``), ``bops`` their bit operations ``MACs x weight_bits x activation_bits``,
``latency`` their seconds per run on the target from a measured table (:mod:`~qcompiler.autotune.latency`;
the functions below take the table in place of the objective's name). The
rest of the model (biases, tables, embeddings) is the same for every candidate; scores report the whole
integer model's packed bytes beside.
"""

from __future__ import annotations

import random

from qcompiler.autotune.candidates import CandidateEvaluator, Layer
from qcompiler.autotune.ilp import Option, WidthProblem, solve_widths
from qcompiler.autotune.sensitivity import Sensitivity
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError
from qcompiler.qmath import packed_bytes

__all__ = ["OBJECTIVES", "base_cost", "budget_limit", "config_cost", "ilp_config", "layer_cost", "layer_input_bits",
           "random_configs", "width_problem", "widths_config"]

OBJECTIVES = ("size", "bops", "latency")


def layer_cost(layer: Layer, objective, weight_bits: int, activation_bits: int) -> float:
    """The cost of ``layer`` at the given widths: packed weight bytes (``objective`` ``"size"``), bit
    operations (``"bops"``), or seconds per run from a measured
    :class:`~qcompiler.autotune.latency.LatencyTable` (the objective ``latency``; it is measured at each
    layer's fixed input width, so ``activation_bits`` does not enter)."""
    if not isinstance(objective, str):
        if weight_bits not in objective.seconds.get(layer.name, {}):
            raise QcError(f"the latency table has no entry for layer '{layer.name}' at {weight_bits}-bit weights")
        return objective.seconds[layer.name][weight_bits]
    if objective == "size":
        return float(packed_bytes(layer.weights, weight_bits))
    return float(layer.macs * weight_bits * activation_bits)


def _input_widths(layer: Layer, activation_widths: tuple[int, ...]) -> list[int]:
    """Input widths a layer can take: the choices when its input is tied to a group, else the fixed 8 bits."""
    return sorted(set(activation_widths)) if layer.input_group >= 0 else [8]


def width_problem(evaluator: CandidateEvaluator, sensitivity: Sensitivity, objective: str, base: CompileConfig,
                  activation_widths: tuple[int, ...] = (8,),
                  activation_sensitivity: dict[int, dict[int, float]] | None = None) -> WidthProblem:
    """The ILP of ``evaluator``'s model: one option per layer and (weight, input) width pair.

    ``activation_sensitivity[group][width]`` (added ``rel_l2**2`` of a tied group's input at ``width``) is
    split evenly among the group's layers, so a group's choice counts once in the objective.
    """
    options = {}
    for layer in evaluator.layers:
        share = len(evaluator.groups[layer.input_group]) if layer.input_group >= 0 else 1
        group_cost = (activation_sensitivity or {}).get(layer.input_group, {})
        options[layer.name] = [
            Option(w, a, sensitivity.values[layer.name][w] + group_cost.get(a, 0.0) / share,
                   layer_cost(layer, objective, w, a))
            for w in sorted(sensitivity.values[layer.name]) for a in _input_widths(layer, activation_widths)]
    return WidthProblem(options, [group for group in evaluator.groups if len(group) > 1])


def widths_config(base: CompileConfig, choice: dict[str, tuple[int, int]]) -> CompileConfig:
    """``base`` with an exact ``layers`` entry for every layer of ``choice`` (name -> (weight, input) widths)."""
    return base.replace(layers={name: {"weight_bits": w, "activation_bits": a} for name, (w, a) in choice.items()})


def budget_limit(objective: str, fraction: float, evaluator: CandidateEvaluator, base: CompileConfig) -> float:
    """The ILP's cost limit: ``fraction`` of the linear layers' cost under ``base``."""
    return fraction * base_cost(objective, evaluator, base)


def base_cost(objective: str, evaluator: CandidateEvaluator, base: CompileConfig) -> float:
    """The linear layers' cost under ``base``'s global widths."""
    return sum(layer_cost(layer, objective, base.weight_bits, layer_input_bits(layer, base)) for layer in evaluator.layers)


def ilp_config(problem: WidthProblem, limit: float, base: CompileConfig) -> tuple[CompileConfig, dict]:
    """The ILP's choice at cost ``limit`` as a config, with the solver facts."""
    chosen, facts = solve_widths(problem, limit)
    return widths_config(base, {name: (o.weight_bits, o.activation_bits) for name, o in chosen.items()}), facts


def random_configs(evaluator: CandidateEvaluator, objective: str, limit: float, base: CompileConfig,
                   widths: tuple[int, ...], count: int, seed: int) -> list[CompileConfig]:
    """``count`` random per-layer weight widths within ``limit``: from every layer at its widest width,
    randomly chosen layers drop to a random narrower width until the cost fits."""
    rng = random.Random(seed)
    narrowest = min(widths)
    if sum(layer_cost(layer, objective, narrowest, 8) for layer in evaluator.layers) > limit:
        raise QcError(f"no random configuration fits the budget: all layers at {narrowest} bits exceed it")
    by_name = {layer.name: layer for layer in evaluator.layers}
    configs = []
    for _ in range(count):
        chosen = {layer.name: max(widths) for layer in evaluator.layers}
        while sum(layer_cost(by_name[n], objective, w, 8) for n, w in chosen.items()) > limit:
            name = rng.choice([n for n, w in chosen.items() if w > narrowest])
            chosen[name] = rng.choice([w for w in widths if w < chosen[name]])
        configs.append(widths_config(base, {n: (w, layer_input_bits(by_name[n], base)) for n, w in chosen.items()}))
    return configs


def layer_input_bits(layer: Layer, base: CompileConfig) -> int:
    """A layer's input width under ``base``'s global widths (8 bits where its input width is not chosen)."""
    return base.activation_bits if layer.input_group >= 0 else 8


def config_cost(objective, evaluator: CandidateEvaluator, config: CompileConfig) -> float:
    """The linear layers' cost under ``config``'s per-layer widths."""
    widths = config.layer_widths([layer.name for layer in evaluator.layers])
    return sum(layer_cost(layer, objective, *widths[layer.name]) for layer in evaluator.layers)
