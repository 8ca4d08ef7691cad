"""Quantune-style search over quantization recipes: the space as data, features, and four searchers.

A **recipe** is a JSON dict ``{dimension name: choice}`` with one choice (a string) per dimension of a
:class:`RecipeSpace`; :func:`recipe_config` turns it into a :class:`~qcompiler.config.CompileConfig`. The
dimensions (:data:`DIMENSIONS`) are those of the Quantune paper adapted to qc: calibration method,
calibration-set size, per-channel or per-tensor weights, uniform bit widths (or, in a space made with
``budget_point=True``, the width ILP's per-layer widths at a budget: :data:`ILP_BITS`), and, for
transformers only, RepQ-ViT reparameterization, uniform or log2 post-Softmax codes and the integer
Softmax/GELU method. A dimension that does not apply to a model (``Dimension.requires`` names the
model feature it needs) is left out of that model's space, so it never inflates it; the CNN space is
4 x 2 x 2 x 6 = 96 recipes, a ViT's 1,152 (:meth:`RecipeSpace.fix` pins dimensions to shrink it).

Symmetric against asymmetric activations is not a dimension: ``activation_dtype="int8"`` is the same affine
grid as ``"uint8"`` shifted by 128 (:func:`qcompiler.qmath.affine_qparams` gives it a zero point too), so the
two score identically and would only double the space with ties.

**Features** (:func:`recipe_features`): the one-hot recipe over *every* dimension of :data:`DIMENSIONS`
(all zeros for a dimension the model's space lacks), then the model features of :data:`MODEL_FEATURES`, so
trials of different models share one feature space and can be pooled (transfer).

**Searchers** (:func:`search`) share one interface and never measure a recipe twice: ``grid`` walks the
space in :meth:`RecipeSpace.recipes` order; ``random`` walks a seeded permutation; ``genetic`` is a
steady-state genetic search (tournament selection, uniform crossover, mutation); ``xgboost`` is
Quantune's online loop: fit an XGBoost model on the trials so far (prior trials of other models included),
measure the unexplored recipe with the best prediction, refit, repeat. Every searcher is deterministic given
its seed, stops after ``trials`` measurements or once a metric reaches ``target``, and records a recipe
whose measurement raises :class:`~qcompiler.errors.QcError` as a failed trial (``metric`` None, ``error``
the message) instead of stopping.

A **trial** is a JSON dict ``{"recipe", "metric", "error"}``; a prior trial (from another model) also holds
``"model"``, that model's :func:`model_features`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qcompiler.config import CompileConfig
from qcompiler.errors import QcError

__all__ = ["Dimension", "DIMENSIONS", "ILP_BITS", "MODEL_FEATURES", "METHODS", "RecipeSpace", "recipe_space",
           "recipe_config", "model_features", "recipe_features", "score_recipe", "search"]


@dataclass(frozen=True)
class Dimension:
    """One axis of the recipe space: each choice maps to the CompileConfig fields it sets (``{}``: none, the
    choice is applied outside the config). ``requires``: the model feature (of :data:`MODEL_FEATURES`) that
    must be non-zero for the dimension to apply, or None when it always applies."""

    name: str
    choices: Mapping[str, dict] = field(hash=False)
    doc: str
    requires: str | None = None


#: the ``bits`` choice "per-layer widths from the ILP at the budget".
ILP_BITS = "ilp"

DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("calibration", {m: {"calibration_method": m} for m in ("minmax", "percentile", "entropy", "mse")},
              "activation-range calibration method"),
    Dimension("calibration_set", {"small": {}, "large": {}},
              "calibration-set size; not a config field: the caller calibrates on a small or a large subset "
              "(see score_recipe)"),
    Dimension("weights", {"per_channel": {"per_channel": True}, "per_tensor": {"per_channel": False}},
              "one weight scale per output channel or per tensor"),
    Dimension("bits", {**{f"w{w}a{a}": {"weight_bits": w, "activation_bits": a}
                          for w, a in ((8, 8), (8, 6), (6, 8), (6, 6), (4, 8), (8, 4))}, ILP_BITS: {}},
              f"uniform widths of weights and linear-layer inputs, or '{ILP_BITS}': per-layer weight widths "
              "chosen by the width ILP at the search's budget (not a config field: the caller solves it, see "
              "qcompiler.autotune.search; only in spaces made with budget_point=True)"),
    Dimension("reparam", {"on": {"reparam": True}, "off": {"reparam": False}},
              "RepQ-ViT reparameterization of post-LayerNorm activations", requires="has_layernorm"),
    Dimension("attention_codes", {"uniform": {"softmax_quant": "uniform"}, "log2": {"softmax_quant": "log2"}},
              "uniform or log2 codes of the attention probabilities", requires="has_attention"),
    Dimension("nonlinear", {m: {"softmax": m, "gelu": m} for m in ("table", "shift", "poly")},
              "integer Softmax and GELU method (a classifier's final Softmax alone does not count: it leaves "
              "the top-1 metric unchanged)", requires="has_attention"),
)

#: model features, in feature-vector order (see :func:`model_features`).
MODEL_FEATURES = ("layers", "log10_weights", "log10_macs", "has_attention", "has_layernorm", "has_gelu",
                  "metric_is_accuracy", "float_metric")

METHODS = ("xgboost", "random", "grid", "genetic")


@dataclass(frozen=True)
class RecipeSpace:
    """The recipes of one model: the product of ``dimensions``' choices, each recipe also holding the
    ``fixed`` choices of pinned dimensions. ``model``: the model's :func:`model_features`."""

    dimensions: tuple[Dimension, ...]
    model: Mapping[str, float] = field(hash=False)
    fixed: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def size(self) -> int:
        return math.prod(len(d.choices) for d in self.dimensions)

    def recipes(self) -> Iterator[dict]:
        """Every recipe once, in grid order (the last dimension varies fastest)."""
        names = [d.name for d in self.dimensions]
        for values in itertools.product(*(d.choices for d in self.dimensions)):
            yield {**self.fixed, **dict(zip(names, values, strict=True))}

    def key(self, recipe: Mapping[str, str]) -> str:
        """A recipe's canonical string (``name=choice`` over the space's dimensions, in order)."""
        return ",".join(f"{d.name}={recipe[d.name]}" for d in self.dimensions)

    def fix(self, **choices: str) -> RecipeSpace:
        """The subspace with the named dimensions pinned to one choice each."""
        by_name = {d.name: d for d in self.dimensions}
        bad = [f"{n}={c!r}" for n, c in choices.items() if n not in by_name or c not in by_name[n].choices]
        if bad:
            raise QcError(f"cannot fix {', '.join(bad)}: dimensions of this space are "
                          + "; ".join(f"{d.name} {list(d.choices)}" for d in self.dimensions))
        return RecipeSpace(tuple(d for d in self.dimensions if d.name not in choices), self.model,
                           {**self.fixed, **choices})


    def only(self, name: str, choices: Sequence[str]) -> RecipeSpace:
        """The subspace keeping only ``choices`` of dimension ``name`` (in the dimension's order)."""
        kept = [d for d in self.dimensions if d.name == name]
        unknown = sorted(set(choices) - set(kept[0].choices)) if kept else [name]
        if unknown or not choices:
            raise QcError(f"cannot keep {name}={list(choices)}: dimensions of this space are "
                          + "; ".join(f"{d.name} {list(d.choices)}" for d in self.dimensions))
        narrowed = Dimension(name, {c: f for c, f in kept[0].choices.items() if c in choices}, kept[0].doc,
                             kept[0].requires)
        return RecipeSpace(tuple(narrowed if d.name == name else d for d in self.dimensions), self.model, self.fixed)


def recipe_space(model: Mapping[str, float], budget_point: bool = False) -> RecipeSpace:
    """The space of the model with features ``model``: the dimensions of :data:`DIMENSIONS` that apply, the
    ``bits`` choice :data:`ILP_BITS` only with ``budget_point``."""
    space = RecipeSpace(tuple(d for d in DIMENSIONS if d.requires is None or model[d.requires]), dict(model))
    bits = [c for c in next(d for d in DIMENSIONS if d.name == "bits").choices if budget_point or c != ILP_BITS]
    return space.only("bits", bits)


def recipe_config(base: CompileConfig, recipe: Mapping[str, str]) -> CompileConfig:
    """``base`` with every choice of ``recipe`` applied; an unknown dimension or choice is a QcError listing
    the valid ones."""
    by_name = {d.name: d for d in DIMENSIONS}
    bad = [f"{n}={c!r}" for n, c in recipe.items() if n not in by_name or c not in by_name[n].choices]
    if bad:
        raise QcError(f"invalid recipe entries {', '.join(bad)}; valid: "
                      + "; ".join(f"{d.name} {list(d.choices)}" for d in DIMENSIONS))
    changes = {}
    for name, choice in recipe.items():
        changes.update(by_name[name].choices[choice])
    return base.replace(**changes)


def score_recipe(evaluators: Mapping[str, object], recipe: Mapping[str, str]):
    """Score ``recipe`` with ``evaluators[recipe["calibration_set"]]`` (``"large"`` when the recipe has no
    such entry): CandidateEvaluators of one model that differ only in their calibration subset."""
    evaluator = evaluators[recipe.get("calibration_set", "large")]
    return evaluator.score(recipe_config(evaluator.base, recipe))


def model_features(evaluator) -> dict[str, float]:
    """The :data:`MODEL_FEATURES` of a CandidateEvaluator's model, read from its normalized float graph.

    ``has_attention``: a Softmax output feeds a MatMul; ``has_layernorm`` / ``has_gelu``: the graph holds a
    LayerNormalization / Gelu node."""
    graph = evaluator.calibrated(evaluator.base).float_model.graph
    softmax_outputs = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    op_types = {n.op_type for n in graph.node}
    return {
        "layers": float(len(evaluator.layers)),
        "log10_weights": math.log10(max(sum(layer.weights for layer in evaluator.layers), 1)),
        "log10_macs": math.log10(max(sum(layer.macs for layer in evaluator.layers), 1)),
        "has_attention": float(any(n.op_type == "MatMul" and softmax_outputs & set(n.input) for n in graph.node)),
        "has_layernorm": float("LayerNormalization" in op_types),
        "has_gelu": float("Gelu" in op_types),
        "metric_is_accuracy": float(evaluator.metric_kind == "accuracy"),
        "float_metric": float(evaluator.float_metric),
    }


def recipe_features(recipe: Mapping[str, str], model: Mapping[str, float]) -> np.ndarray:
    """One-hot ``recipe`` over every dimension of :data:`DIMENSIONS` (zeros where absent), then ``model``'s
    :data:`MODEL_FEATURES`."""
    one_hot = [float(recipe.get(d.name) == choice) for d in DIMENSIONS for choice in d.choices]
    return np.array(one_hot + [float(model[name]) for name in MODEL_FEATURES])


def search(space: RecipeSpace, measure: Callable[[dict], float], method: str, trials: int, seed: int = 0,
           prior: Sequence[dict] = (), target: float | None = None,
           on_trial: Callable[[dict], None] | None = None, initial: int = 3,
           objective: str = "regression") -> list[dict]:
    """Measure up to ``trials`` distinct recipes of ``space`` chosen by ``method`` (one of :data:`METHODS`);
    the trials in measurement order (see the module docstring).

    ``prior``: trials of other models (with ``"model"``): training data of ``xgboost``, and the seed
    population of ``genetic`` (their best recipes first); ``grid`` and ``random`` ignore them. ``initial``:
    random trials ``xgboost`` and ``genetic`` measure before modelling or breeding (``xgboost`` skips them when
    ``prior`` is given). ``objective``: ``"regression"`` (squared error on the metric's drop from the float
    metric, comparable across models) or ``"rank"`` (pairwise ranking within each model).
    """
    if method not in METHODS:
        raise QcError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")
    if objective not in ("regression", "rank"):
        raise QcError(f"unknown objective {objective!r}; choose 'regression' or 'rank'")
    recipes = list(space.recipes())
    rng = np.random.default_rng(seed)
    done: list[dict] = []
    measured: set[int] = set()

    def run(index: int) -> bool:
        """Measure recipe ``index``; True when the search must stop."""
        measured.add(index)
        try:
            trial = {"recipe": recipes[index], "metric": float(measure(recipes[index])), "error": None}
        except QcError as error:
            trial = {"recipe": recipes[index], "metric": None, "error": str(error)}
        done.append(trial)
        if on_trial:
            on_trial(trial)
        reached = target is not None and trial["metric"] is not None and trial["metric"] >= target
        return reached or len(done) >= trials or len(measured) == len(recipes)

    order = rng.permutation(len(recipes)) if method != "grid" else np.arange(len(recipes))
    if method in ("grid", "random"):
        for index in order:
            if run(int(index)):
                break
        return done
    if method == "xgboost":
        _xgboost(space, recipes, order, run, measured, done, prior, seed, initial, objective)
    else:
        _genetic(space, recipes, order, run, measured, done, prior, rng, initial)
    return done


def _xgboost(space, recipes, order, run, measured, done, prior, seed, initial, objective) -> None:
    """Quantune's online loop: random start (none with ``prior``), then fit, measure the best prediction."""
    import xgboost

    candidates = np.stack([recipe_features(r, space.model) for r in recipes])
    index_of = {space.key(r): i for i, r in enumerate(recipes)}
    prior_ok = [t for t in prior if t["metric"] is not None]
    prior_x = [recipe_features(t["recipe"], t["model"]) for t in prior_ok]
    prior_y = [t["metric"] - t["model"]["float_metric"] for t in prior_ok]
    prior_group = _group_ids([t["model"] for t in prior_ok])
    start = 0 if prior_ok else initial
    for index in order[:start]:
        if run(int(index)):
            return
    # tie-break predictions by the seeded order, so equal predictions pick a seed-dependent recipe
    rank_of = np.empty(len(recipes), dtype=np.int64)
    rank_of[order] = np.arange(len(recipes))
    while True:
        fitted = [(index_of[space.key(t["recipe"])], t["metric"]) for t in done if t["metric"] is not None]
        x = np.array(prior_x + [candidates[i] for i, _ in fitted]).reshape(-1, candidates.shape[1])
        y = np.array(prior_y + [m - space.model["float_metric"] for _, m in fitted])
        if len(y) < 2:
            index = next(int(i) for i in order if int(i) not in measured)
        else:
            groups = np.array(prior_group + [max(prior_group, default=-1) + 1] * len(fitted))
            prediction = _fit_predict(xgboost, x, y, groups, candidates, seed, objective)
            prediction[list(measured)] = -np.inf
            best = np.flatnonzero(prediction == prediction.max())
            index = int(best[np.argmin(rank_of[best])])
        if run(index):
            return


def _fit_predict(xgboost, x, y, groups, candidates, seed, objective) -> np.ndarray:
    """Predictions (higher = better) of an XGBoost model fitted on ``x``, ``y`` for every candidate."""
    params = {"max_depth": 4, "eta": 0.3, "nthread": 1, "seed": seed, "verbosity": 0}
    if objective == "rank":
        order = np.argsort(groups, kind="stable")
        data = xgboost.DMatrix(x[order], label=_ranks(y[order], groups[order]), qid=groups[order])
        params["objective"] = "rank:pairwise"
    else:
        data = xgboost.DMatrix(x, label=y)
        params["objective"] = "reg:squarederror"
    booster = xgboost.train(params, data, num_boost_round=60)
    return booster.predict(xgboost.DMatrix(candidates)).astype(np.float64)


def _ranks(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Integer relevance labels: the dense rank of each value within its group (0 = worst)."""
    labels = np.zeros(len(values))
    for group in np.unique(groups):
        members = groups == group
        labels[members] = np.unique(values[members], return_inverse=True)[1]
    return labels


def _group_ids(models: Sequence[Mapping[str, float]]) -> list[int]:
    """One integer per distinct model (in first-seen order)."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault(tuple(sorted(m.items())), len(ids)) for m in models]


def _genetic(space, recipes, order, run, measured, done, prior, rng, initial, population: int = 8) -> None:
    """Steady-state genetic search: a seed population (best prior recipes valid in ``space``, then random
    ones), then per step one child of two tournament winners among the ``population`` best trials, by uniform
    crossover and per-dimension mutation (rate 1/dimensions); a child already measured is mutated again, and
    after 20 tries replaced by the next unmeasured recipe of the seeded order."""
    index_of = {space.key(r): i for i, r in enumerate(recipes)}
    ranked = sorted((t for t in prior if t["metric"] is not None),
                    key=lambda t: t["metric"] - t["model"]["float_metric"], reverse=True)
    seeds = [index_of[k] for k in dict.fromkeys(_key_in(space, t["recipe"]) for t in ranked) if k in index_of]
    start = (seeds + [int(i) for i in order if int(i) not in seeds])[:max(initial, 2)]
    for index in start:
        if run(index):
            return
    dims = space.dimensions
    while True:
        alive = sorted((t for t in done if t["metric"] is not None), key=lambda t: -t["metric"])[:population]
        pool = alive if len(alive) >= 2 else done
        parents = [min(rng.choice(len(pool), size=2, replace=False)) for _ in range(2)]
        child = {d.name: pool[parents[rng.integers(2)]]["recipe"][d.name] for d in dims}
        for _ in range(20):
            for d in dims:
                if rng.random() < 1 / len(dims):
                    child[d.name] = list(d.choices)[rng.integers(len(d.choices))]
            if index_of[space.key(child)] not in measured:
                break
        index = index_of[space.key(child)]
        if index in measured:
            index = next(int(i) for i in order if int(i) not in measured)
        if run(index):
            return


def _key_in(space: RecipeSpace, recipe: Mapping[str, str]) -> str:
    """``recipe``'s key in ``space``, or "" when it lacks one of the space's dimensions or disagrees with a
    fixed choice."""
    if any(d.name not in recipe for d in space.dimensions) or any(recipe.get(n, c) != c
                                                                  for n, c in space.fixed.items()):
        return ""
    return space.key(recipe)

