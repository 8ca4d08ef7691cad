"""``qc search`` / ``qcompiler.search``: choose per-layer widths or a quantization recipe under a budget and
show the trade-off.

Methods: ``ilp`` (per-layer weight widths from measured or proxy sensitivities, plus a sweep of budgets for
the trade-off curve), ``random`` (random per-layer widths within the budget: the ILP's baseline), and the
recipe searches ``xgboost``, ``grid``, ``genetic`` (Quantune, :mod:`~qcompiler.autotune.recipes`): they
search calibration method, per-channel or per-tensor weights, uniform widths that fit the budget or the
ILP's widths at the budget, and for transformers reparameterization, attention codes and the Softmax/GELU
method. The recipe space always calibrates on the whole ``calibration`` set (the benchmark's
``calibration_set`` dimension is fixed to ``large``), so ``qc compile --config chosen.json`` with the same
calibration file reproduces the measured model. ``prior``: directories of earlier recipe searches (other
models) whose trials train the XGBoost model from the start (transfer) and seed the genetic population.

Every measured candidate is a **trial**, appended to ``trials.jsonl`` as soon as it is scored, so an
interrupted search resumes where it stopped (trials are keyed by their config; the settings of the search
must match, ``search.json``). At the end the directory holds::

    search.json       settings, float metric, metric kind, sensitivity kind
    sensitivity.json  per-layer sensitivities (ilp, and the recipes' ILP point), with how they were obtained
    latency.json      objective latency: seconds per layer and weight width, where and for what target
    trials.jsonl      every trial: config, score, cost as a fraction of the base config's (recipe searches:
                      also the recipe and the model's features, which a later search reads as ``prior``)
    pareto.json       the trials no other trial beats on both metric and cost
    pareto.png        metric vs cost, the Pareto front, the budget and the chosen point marked
    chosen.json       the chosen config, ready for ``qc compile --config chosen.json``
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcompiler.autotune import recipes
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.latency import LatencyTable, measure_latency
from qcompiler.autotune.mixed_precision import (
    OBJECTIVES,
    base_cost,
    budget_limit,
    config_cost,
    ilp_config,
    random_configs,
    width_problem,
)
from qcompiler.autotune.sensitivity import (
    SENSITIVITY_KINDS,
    Sensitivity,
    measure_sensitivity,
    proxy_sensitivity,
)
from qcompiler.config import BIT_WIDTHS, CompileConfig
from qcompiler.errors import QcError
from qcompiler.targets import get_target
from qcompiler.targets.tuning import measurement_for

__all__ = ["METHODS", "SearchResult", "search"]

RECIPE_METHODS = ("xgboost", "grid", "genetic")
METHODS = ("ilp", "random", *RECIPE_METHODS)
#: budget fractions of the ILP's trade-off sweep (the requested budget is added).
SWEEP = (0.3, 0.4, 0.5, 0.7, 0.8, 0.9)

Progress = Callable[[str, int, int], None]


@dataclass
class SearchResult:
    """All trials, the Pareto front, and the chosen trial and config."""

    trials: list[dict]
    pareto: list[dict]
    chosen: dict
    config: CompileConfig
    float_metric: float
    metric_kind: str
    failed: list[dict] = field(default_factory=list)  # recipes whose measurement was refused, with the reason


def search(model, calibration, evaluation, target: str = "x86", objective: str = "size", budget: float = 0.6,
           method: str = "ilp", trials: int = 20, widths: tuple[int, ...] = (4, 8), sensitivity: str = "measured",
           samples: int = 256, output: str | Path | None = None, base: CompileConfig | None = None, seed: int = 0,
           prior: tuple[str | Path, ...] = (), progress: Progress | None = None, rpc_tracker: str | None = None,
           rpc_key: str | None = None) -> SearchResult:
    """Search per-layer weight widths or a recipe of ``model`` under ``budget`` (a fraction of the base
    config's cost), by ``method`` (see the module docstring).

    ``calibration`` and ``evaluation`` are ``.npz`` paths or dicts keyed by input name (``evaluation`` may
    hold ``labels``; ``samples`` caps how many evaluation samples score a candidate). ``sensitivity``
    (``measured`` or ``proxy``) serves the ILP, ``trials`` the random and recipe searches (how many configs
    they measure). ``output``: a directory for the trial log and results (resumed if it holds the same
    search). ``objective="latency"`` measures a per-layer latency table first (:mod:`~qcompiler.autotune.
    latency`), on this host or with ``rpc_tracker``/``rpc_key`` on a device behind a TVM RPC tracker; it is
    kept in the output directory (``latency.json``).
    """
    _check_arguments(objective, budget, method, widths, sensitivity, trials, prior)
    if objective != "latency" and rpc_tracker is not None:
        raise QcError("--rpc-tracker/--rpc-key measure latency tables: they serve --objective latency only")
    base = (base or CompileConfig()).replace(target=target)
    compile_target = get_target(base.target, **base.target_options)
    mantissa_bits = compile_target.requant_mantissa_bits
    measurement = measurement_for(compile_target, rpc_tracker, rpc_key) \
        if objective == "latency" else None  # refused before anything is written or calibrated
    settings = {"objective": objective, "budget": budget, "method": method, "trials": trials,
                "widths": sorted(widths), "sensitivity": sensitivity if method != "random" else None,
                "samples": samples, "seed": seed, "base": base.to_json(), "prior": sorted(map(str, prior)),
                "latency_measured_on": measurement.place if measurement is not None else None}
    prior_trials = _prior_trials(prior)
    log = _TrialLog(Path(output), settings) if output is not None else None
    evaluator = CandidateEvaluator(model, calibration, evaluation, base, samples, mantissa_bits)
    costs = objective if measurement is None else _latency(evaluator, base, widths, method, measurement, log, progress)
    total = base_cost(costs, evaluator, base)
    limit = budget_limit(costs, budget, evaluator, base)
    space = _recipe_space(evaluator, base, costs, budget, limit) if method in RECIPE_METHODS else None
    expected = min(trials, space.size) if space is not None else -1
    measured: list[dict] = []

    def measure(config: CompileConfig, kind: str, fields: dict | None = None) -> dict:
        trial = log.get(config) if log is not None else None
        if trial is None:
            score = evaluator.score(config)
            cost = {"size": score.layer_bytes, "bops": score.bops}.get(costs) if isinstance(costs, str) \
                else config_cost(costs, evaluator, config)
            trial = {"key": _key(config), "kind": kind, "config": config.to_json(), "score": score.to_json(),
                     "cost": cost / total, **(fields or {})}
            if log is not None:
                log.append(trial)
        if all(t["key"] != trial["key"] for t in measured):  # two budgets can give one config
            measured.append(trial)
        if progress:
            progress("search", len(measured), expected)
        return trial

    @functools.cache  # the ILP point of every recipe uses the one measurement
    def sensitivities() -> Sensitivity:
        return _sensitivity(evaluator, base, widths, sensitivity, log, progress)

    failed = []
    if space is not None:
        failed = _search_recipes(space, evaluator, base, costs, limit, measure, sensitivities, method, trials,
                                 seed, prior_trials)
        candidates = [t for t in measured if t["kind"] == "recipe"]
        if not candidates:
            raise QcError(f"every recipe the {method} search measured was refused; the first: {failed[0]['error']}")
        chosen = _best(candidates)
    else:
        measure(base, "uniform")
        for width in sorted(w for w in widths if w < base.weight_bits):
            measure(base.replace(weight_bits=width), "uniform")
        if method == "ilp":
            problem = width_problem(evaluator, sensitivities(), costs, base)
            feasible = problem.extreme_cost(min) / total
            if budget < feasible * (1 - 1e-9):
                raise QcError(f"no per-layer widths meet the budget {budget:g}: every layer at its narrowest width "
                              f"still costs {feasible:.3f} of the base config's {objective}; raise --budget")
            for fraction in sorted({f for f in SWEEP if f >= feasible} - {budget}):
                measure(*_ilp_trial(problem, budget_limit(costs, fraction, evaluator, base), base, fraction))
            chosen = measure(*_ilp_trial(problem, limit, base, budget))
        else:
            chosen = _best([measure(c, "random")
                            for c in random_configs(evaluator, costs, limit, base, widths, trials, seed)])
    result = SearchResult(measured, _pareto(measured), chosen, CompileConfig.from_json(chosen["config"]),
                          evaluator.float_metric, evaluator.metric_kind, failed)
    if log is not None:
        log.finish(result, budget)
    return result


def _best(trials: list[dict]) -> dict:
    """The trial with the best metric (then the lowest relative L2 error)."""
    return max(trials, key=lambda t: (t["score"]["metric"], -t["score"]["rel_l2"]))


def _recipe_space(evaluator: CandidateEvaluator, base: CompileConfig, objective, budget: float,
                  limit: float) -> recipes.RecipeSpace:
    """The model's recipe space for ``qc search``: whole calibration set; the uniform widths whose cost fits
    ``limit`` (the cost of ``budget``), and the ILP point when the budget is below the base cost."""
    space = recipes.recipe_space(recipes.model_features(evaluator), budget_point=budget < 1)
    bits = next(d for d in space.dimensions if d.name == "bits")
    fits = [choice for choice in bits.choices if choice == recipes.ILP_BITS
            or base_cost(objective, evaluator, recipes.recipe_config(base, {"bits": choice})) <= limit * (1 + 1e-9)]
    if not fits:
        raise QcError(f"no recipe fits the budget {budget:g}: even the narrowest uniform widths cost more than "
                      "that fraction of the base config's cost")
    return space.fix(calibration_set="large").only("bits", fits)


def _search_recipes(space, evaluator, base, objective, limit, measure, sensitivities, method, trials, seed,
                    prior) -> list[dict]:
    """Run the recipe search over ``space``, measuring each recipe with ``measure``; the refused recipes."""
    def metric(recipe: dict) -> float:
        config = recipes.recipe_config(base, recipe)  # bits=ilp sets no field: the ILP below sets the widths
        fields = {"recipe": recipe, "model": space.model}
        if recipe["bits"] == recipes.ILP_BITS:
            config, facts = ilp_config(width_problem(evaluator, sensitivities(), objective, config), limit, config)
            fields["ilp"] = facts
        return measure(config, "recipe", fields)["score"]["metric"]

    done = recipes.search(space, metric, method, trials, seed, prior=prior)
    return [{"recipe": t["recipe"], "error": t["error"]} for t in done if t["metric"] is None]


def _prior_trials(directories) -> list[dict]:
    """The recipe trials of earlier searches in ``directories``, as :func:`recipes.search` takes them."""
    found = []
    for directory in map(Path, directories):
        usable = [{"recipe": t["recipe"], "metric": t["score"]["metric"], "error": None, "model": t["model"]}
                  for t in _read_trials(directory / "trials.jsonl") if "recipe" in t]
        if not usable:
            raise QcError(f"prior {directory} holds no recipe trials: give the -o directory of an earlier "
                          f"qc search --method {'|'.join(RECIPE_METHODS)}")
        found += usable
    return found


def _check_arguments(objective, budget, method, widths, sensitivity, trials, prior) -> None:
    problems = []
    if objective not in OBJECTIVES:
        problems.append(f"objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if method not in METHODS:
        problems.append(f"method '{method}' is not one of {', '.join(METHODS)}")
    if not 0 < budget <= 1:
        problems.append(f"budget {budget} must be a fraction in (0, 1] of the base config's cost")
    if not widths or any(w not in BIT_WIDTHS for w in widths):
        problems.append(f"widths {list(widths)} must be between {BIT_WIDTHS[0]} and {BIT_WIDTHS[-1]}")
    if sensitivity not in SENSITIVITY_KINDS:
        problems.append(f"sensitivity '{sensitivity}' is not one of {', '.join(SENSITIVITY_KINDS)}")
    if trials < 1:
        problems.append(f"trials {trials} must be at least 1")
    if prior and method not in RECIPE_METHODS:
        problems.append(f"prior trials serve the recipe searches ({', '.join(RECIPE_METHODS)}), not '{method}'")
    if problems:
        raise QcError("; ".join(problems))


def _ilp_trial(problem, limit: float, base: CompileConfig, fraction: float) -> tuple[CompileConfig, str, dict]:
    config, facts = ilp_config(problem, limit, base)
    return config, "ilp", {"ilp": {**facts, "budget": fraction}}


def _sensitivity(evaluator, base, widths, kind, log, progress) -> Sensitivity:
    cached = log.sensitivity() if log is not None else None
    if cached is not None:
        return cached
    report = (lambda done, total: progress("sensitivity", done, total)) if progress else None
    found = (measure_sensitivity(evaluator, base, tuple(widths), report) if kind == "measured"
             else proxy_sensitivity(evaluator, base, tuple(widths)))
    if log is not None:
        log.save_sensitivity(found)
    return found


def _latency(evaluator, base, widths, method, measurement, log, progress) -> LatencyTable:
    """The latency table of the search (from the output directory when it holds one), over ``widths``,
    the base width and, for a recipe search, the recipes' uniform weight widths."""
    path = log.directory / "latency.json" if log is not None else None
    if path is not None and path.is_file():
        return LatencyTable.from_json(json.loads(path.read_text()))
    measured = {*widths, base.weight_bits}
    if method in RECIPE_METHODS:
        bits = next(d for d in recipes.DIMENSIONS if d.name == "bits")
        measured |= {fields["weight_bits"] for fields in bits.choices.values() if "weight_bits" in fields}
    table = measure_latency(evaluator, base, tuple(sorted(measured)), measurement, progress)
    if path is not None:
        path.write_text(json.dumps(table.to_json(), indent=1))
    return table


def _key(config: CompileConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def _pareto(trials: list[dict]) -> list[dict]:
    """Trials not beaten by another on both metric (higher) and cost (lower), cheapest first."""
    unique = {t["key"]: t for t in trials}.values()
    front, best = [], -np.inf
    for trial in sorted(unique, key=lambda t: (t["cost"], -t["score"]["metric"])):
        if trial["score"]["metric"] > best:
            front.append(trial)
            best = trial["score"]["metric"]
    return front


def _read_trials(path: Path) -> list[dict]:
    """The trials of a ``trials.jsonl`` (none if it does not exist), without a line an interruption cut off
    (not valid JSON: its config is measured again)."""
    trials = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            trials.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return trials


class _TrialLog:
    """The output directory of one search: an append-only trial log plus the final files."""

    def __init__(self, directory: Path, settings: dict):
        self.directory = directory
        self.trials_path = directory / "trials.jsonl"
        settings_path = directory / "search.json"
        if settings_path.exists():
            previous = json.loads(settings_path.read_text()).get("settings")
            if previous != settings:
                raise QcError(f"{directory} holds a search with other settings; use another -o directory "
                              "(or delete it) to start a new one")
        elif directory.exists() and any(directory.iterdir()):
            raise QcError(f"{directory} exists and is not a qc search directory; choose another -o")
        directory.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps({"settings": settings}, indent=1))
        self.settings = settings
        self.known = {trial["key"]: trial for trial in _read_trials(self.trials_path)}

    def get(self, config: CompileConfig) -> dict | None:
        return self.known.get(_key(config))

    def append(self, trial: dict) -> None:
        with self.trials_path.open("a") as stream:
            stream.write(json.dumps(trial) + "\n")
        self.known[trial["key"]] = trial

    def sensitivity(self) -> Sensitivity | None:
        path = self.directory / "sensitivity.json"
        return Sensitivity.from_json(json.loads(path.read_text())) if path.exists() else None

    def save_sensitivity(self, found: Sensitivity) -> None:
        (self.directory / "sensitivity.json").write_text(json.dumps(found.to_json(), indent=1))

    def finish(self, result: SearchResult, budget: float) -> None:
        summary = {"settings": self.settings, "float_metric": result.float_metric, "metric": result.metric_kind,
                   "chosen": result.chosen["key"], "failed": result.failed}
        (self.directory / "search.json").write_text(json.dumps(summary, indent=1))
        (self.directory / "pareto.json").write_text(json.dumps(result.pareto, indent=1))
        (self.directory / "chosen.json").write_text(json.dumps(result.config.to_json(), indent=1))
        _plot(result, budget, self.settings["objective"], self.directory / "pareto.png")


def _plot(result: SearchResult, budget: float, objective: str, path: Path) -> None:
    """Metric vs cost of every trial, the Pareto front, the budget and the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for kind, marker in (("uniform", "s"), ("ilp", "o"), ("random", "."), ("recipe", "^")):
        points = [t for t in result.trials if t["kind"] == kind]
        if points:
            axes.scatter([t["cost"] for t in points], [t["score"]["metric"] for t in points], marker=marker, label=kind)
    axes.plot([t["cost"] for t in result.pareto], [t["score"]["metric"] for t in result.pareto], "k--", lw=1,
              label="Pareto front")
    axes.scatter([result.chosen["cost"]], [result.chosen["score"]["metric"]], marker="*", s=220, c="red",
                 zorder=5, label="chosen")
    axes.axvline(budget, color="grey", lw=1, ls=":", label=f"budget {budget:g}")
    axes.axhline(result.float_metric, color="green", lw=1, ls=":", label="float model")
    cost = {"size": "weight bytes", "bops": "BOPs", "latency": "latency"}[objective]
    axes.set_xlabel(f"{cost} of the linear layers (fraction of base)")
    axes.set_ylabel(result.metric_kind)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
