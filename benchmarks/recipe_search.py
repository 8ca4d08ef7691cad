"""Quantune-style recipe search (autotune/recipes.py): trials to reach the exhaustive best, XGBoost against
random, grid and genetic search, with and without transfer from the other models.

Three models, each with its recipe space measured exhaustively once (:func:`exhaustive_table`):

* ``cnn``: the Fashion-MNIST CNN, 96 recipes; top-1 accuracy on the first 3,000 test images; calibration
  subsets ("small" / "large") of the first 50 / 500 training images.
* ``vit``: the Fashion-MNIST ViT, 192 recipes: its full space (1,152) with per-channel weights and table
  Softmax/GELU pinned, to keep the exhaustive table affordable; top-1 accuracy on the first 1,000 test images;
  calibration as for the CNN.
* ``efficientnet``: EfficientNet-Lite0, 96 recipes; top-1 agreement with the float model on 16 evaluation
  crops (one sample = 6.25 points, so "within 0.1 point" means "as good as the best"); calibration subsets of
  8 / 32 calibration crops. One recipe costs about 5 s here, which is why the sample counts are this small.

Tables are cached as JSON under ``~/.cache/qc/recipe_tables/`` (``$QC_CACHE_DIR/recipe_tables`` if set),
keyed by the model file's hash, the space and the sample counts, and written after every measurement, so an
interrupted run resumes. The first run takes about 20-25 minutes on 2 cores, a rerun about two.

**The searches replay the tables**: a trial is a table lookup, never a new measurement (a recipe that failed
when measured fails again with its message). Each search runs until a trial is within 0.1 percentage point
of the exhaustive best (metric >= best - 0.001, metrics being fractions), its *trials to best*; the budget is
one tenth of the space. Because the top recipes of a model are often tied within the sampling noise of the
evaluation set (one image of 1,000 is 0.1 point), two noise-robust columns follow: trials until a metric
within 0.5 point of the best, and how far (in points) the best metric found within the budget is from the
exhaustive best. With transfer, the other two models' full tables (and model features) are the prior
trials: XGBoost's initial training set (no random start), the genetic search's seed population; random and
grid search ignore priors. Grid order is the same for every seed.

    .venv/bin/python -m benchmarks.recipe_search [--seeds 10] [--json results.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.recipes import model_features, recipe_space, score_recipe, search
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOLERANCE = 0.001
"""0.1 percentage point, in metric (fraction) units."""
FASHION_BATCH = 50
#: per model: calibration subset sizes (small, large), evaluation samples, pinned dimensions.
SETTINGS = {
    "cnn": {"calibration": (50, 500), "evaluation": 3000, "fixed": {}},
    "vit": {"calibration": (50, 500), "evaluation": 1000, "fixed": {"weights": "per_channel", "nonlinear": "table"}},
    "efficientnet": {"calibration": (8, 32), "evaluation": 16, "fixed": {}},
}
#: (label, search method, objective)
SEARCHERS = [("xgboost", "xgboost", "regression"), ("xgboost-rank", "xgboost", "rank"),
             ("random", "random", "regression"), ("grid", "grid", "regression"),
             ("genetic", "genetic", "regression")]


def cache_dir() -> Path:
    root = os.environ.get("QC_CACHE_DIR")
    return Path(root) / "recipe_tables" if root else Path.home() / ".cache" / "qc" / "recipe_tables"


def model_data(name: str):
    """``(model path, calibration inputs, evaluation data, base config)`` of one model of :data:`SETTINGS`."""
    settings = SETTINGS[name]
    if name == "efficientnet":
        from examples.efficientnet_lite0.export import ensure_model
        from examples.efficientnet_lite0.photos import calibration_and_eval_split

        path = ensure_model()
        calibration, evaluation = calibration_and_eval_split(n_calib=settings["calibration"][1],
                                                             n_eval=settings["evaluation"])
        input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
        return path, {input_name: calibration}, {input_name: evaluation}, CompileConfig()
    from examples.fashion_mnist.data import load_split, preprocess

    train, _ = load_split("train")
    test_images, test_labels = load_split("test")
    count = settings["evaluation"]
    evaluation = {"input": preprocess(test_images[:count]), "labels": test_labels[:count]}
    base = CompileConfig(input_shapes={"input": (FASHION_BATCH, 1, 28, 28)})
    return (EXAMPLES / "fashion_mnist" / f"{name}.onnx", {"input": preprocess(train[:settings["calibration"][1]])},
            evaluation, base)


def exhaustive_table(name: str) -> dict:
    """``{"model": features, "space": {"fixed": ...}, "entries": {recipe key: {recipe, metric, rel_l2,
    error, seconds}}}`` for every recipe of the model's space, measured once and cached."""
    path, calibration, evaluation, base = model_data(name)
    settings = SETTINGS[name]
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    spec = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    file = cache_dir() / f"{name}-{digest}-{spec}.json"
    table = json.loads(file.read_text()) if file.is_file() else None
    if table is not None and len(table["entries"]) == table["size"]:
        return table
    small, large = settings["calibration"]
    evaluators = {size: CandidateEvaluator(path, {k: v[:count] for k, v in calibration.items()}, evaluation,
                                           base=base, samples=settings["evaluation"])
                  for size, count in (("small", small), ("large", large))}
    features = model_features(evaluators["large"])
    space = recipe_space(features).fix(**settings["fixed"])
    table = table or {"model": features, "fixed": settings["fixed"], "size": space.size, "entries": {}}
    file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for recipe in space.recipes():
        key = space.key(recipe)
        if key in table["entries"]:
            continue
        began = time.perf_counter()
        try:
            score = score_recipe(evaluators, recipe)
            entry = {"recipe": recipe, "metric": score.metric, "rel_l2": score.rel_l2, "error": None}
        except QcError as error:
            entry = {"recipe": recipe, "metric": None, "rel_l2": None, "error": str(error)}
        entry["seconds"] = time.perf_counter() - began
        table["entries"][key] = entry
        file.write_text(json.dumps(table))
        shown = "failed" if entry["metric"] is None else f"{entry['metric']:.4f}"
        print(f"[{name}] {len(table['entries'])}/{space.size} {key}: {shown} ({entry['seconds']:.1f} s, "
              f"{time.perf_counter() - start:.0f} s so far)", flush=True)
    return table


def best_metric(table: dict) -> float:
    """The exhaustive best metric of a table (refused recipes aside)."""
    return max(e["metric"] for e in table["entries"].values() if e["metric"] is not None)


def replayed_metrics(name: str, tables: dict, method: str, objective: str, seed: int,
                     transfer: bool) -> list[float]:
    """The metrics, in measurement order, of a search replaying ``tables[name]`` until it comes within
    :data:`TOLERANCE` of the table's best (a refused recipe counts as -inf)."""
    table = tables[name]
    entries = table["entries"]
    space = recipe_space(table["model"]).fix(**table["fixed"])
    best = best_metric(table)

    def replay(recipe: dict) -> float:
        entry = entries[space.key(recipe)]
        if entry["metric"] is None:
            raise QcError(entry["error"])
        return entry["metric"]

    prior = [{**entry, "model": other["model"]} for other_name, other in tables.items() if other_name != name
             for entry in other["entries"].values()] if transfer else []
    trials = search(space, replay, method, trials=space.size, seed=seed, prior=prior, target=best - TOLERANCE,
                    objective=objective)
    return [-np.inf if t["metric"] is None else t["metric"] for t in trials]


def trials_to_within(metrics: list[float], best: float, points: float) -> int:
    """Trials until a metric is within ``points`` percentage points of ``best`` (1 + len when never)."""
    return next((i + 1 for i, m in enumerate(metrics) if m >= best - points / 100 - 1e-12), len(metrics) + 1)


def summary(name: str, table: dict) -> str:
    entries = table["entries"].values()
    metrics = [e["metric"] for e in entries if e["metric"] is not None]
    best = max(metrics)
    near = sum(m >= best - TOLERANCE for m in metrics)
    top = max((e for e in entries if e["metric"] is not None), key=lambda e: e["metric"])
    return (f"{name}: {table['size']} recipes, float {table['model']['float_metric'] * 100:.2f}, best "
            f"{best * 100:.2f} ({near} within 0.1 point; e.g. {top['recipe']}), median "
            f"{statistics.median(metrics) * 100:.2f}, worst {min(metrics) * 100:.2f}, "
            f"{len(table['entries']) - len(metrics)} failed; measuring took {sum(e['seconds'] for e in entries):.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the result rows as JSON lines to this file")
    args = parser.parse_args()
    onnxruntime.set_default_logger_severity(3)
    start = time.perf_counter()
    tables = {name: exhaustive_table(name) for name in SETTINGS}
    print(f"exhaustive tables ready after {time.perf_counter() - start:.0f} s")
    for name, table in tables.items():
        print(summary(name, table))
    rows = []
    replay_start = time.perf_counter()
    for name, table in tables.items():
        budget = table["size"] // 10
        best = best_metric(table)
        for label, method, objective in SEARCHERS:
            for transfer in (False, True) if method in ("xgboost", "genetic") else (False,):
                runs = [replayed_metrics(name, tables, method, objective, seed, transfer) for seed in range(args.seeds)]
                counts = [len(metrics) for metrics in runs]
                within_half = [trials_to_within(metrics, best, 0.5) for metrics in runs]
                gaps = [(best - max(metrics[:budget])) * 100 for metrics in runs]
                rows.append({"model": name, "method": label, "transfer": transfer, "space": table["size"],
                             "budget": budget, "trials_to_best": counts, "median": float(np.median(counts)),
                             "met": float(np.median(counts)) <= budget,
                             "seeds_within_budget": sum(c <= budget for c in counts),
                             "trials_to_half_point": within_half, "median_half_point": float(np.median(within_half)),
                             "gap_at_budget_points": gaps, "median_gap_at_budget": float(np.median(gaps))})
    print(f"searches replayed in {time.perf_counter() - replay_start:.0f} s ({args.seeds} seeds each)\n")
    header = ("| model | space | budget | method | transfer | median trials to best | min-max | seeds within budget "
              "| met | median trials to within 0.5 point | median gap to best after budget trials (points) |")
    print(header)
    print("|" + "|".join("---" for _ in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(f"| {row['model']} | {row['space']} | {row['budget']} | {row['method']} | "
              f"{'yes' if row['transfer'] else 'no'} | {row['median']:g} | {min(row['trials_to_best'])}-"
              f"{max(row['trials_to_best'])} | {row['seeds_within_budget']}/{args.seeds} | "
              f"{'yes' if row['met'] else 'no'} | {row['median_half_point']:g} | {row['median_gap_at_budget']:.2f} |")
    print()
    lines = [json.dumps(row) for row in rows]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
