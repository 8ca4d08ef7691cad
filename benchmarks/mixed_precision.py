"""Mixed 4/8-bit weights chosen by the ILP vs uniform W4A8 and random mixed configs, on three real models.

Per model, candidates are *chosen* on a search split (sensitivities, the best of the random configs) and
*reported* on a held-out split, so that picking the best of 20 random configs does not fit the noise of
the data it is scored on. Scores come from onnxruntime running each config's integer model (which the
compiled code matches bit for bit). Costs are the linear layers' packed weight bytes as a fraction of
INT8 (``cost``); ``bytes`` is the whole integer model with sub-8-bit weights packed.

Rows: float, W8A8, uniform W4A8, the ILP at 60 % with measured sensitivities and with the proxy, the best
(on the search split) of 20 random 4/8 configs at 60 %, and the ILP over 2/4/8 bits at the cost of
uniform W4A8 (equal bytes). Last, the ILP's solve time on a synthetic 200-layer problem.

    .venv/bin/python -m benchmarks.mixed_precision [--models cnn vit effnet] [--budget 0.6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime

from examples.efficientnet_lite0.export import ensure_model
from examples.efficientnet_lite0.photos import calibration_and_eval_split
from examples.fashion_mnist.data import load_split
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.ilp import Option, WidthProblem, solve_widths
from qcompiler.autotune.mixed_precision import budget_limit, ilp_config, random_configs, width_problem
from qcompiler.autotune.sensitivity import Sensitivity, measure_sensitivity, proxy_sensitivity
from qcompiler.config import CompileConfig

onnxruntime.set_default_logger_severity(3)
RANDOM_CONFIGS = 20


def fashion(model: str, search_samples: int, report_samples: int):
    """Calibration (train split), search and report data (disjoint test samples, with labels)."""
    train, _ = load_split("train")
    test, labels = load_split("test")

    def prep(images):
        return ((images / 255.0 - 0.5) / 0.5).astype(np.float32)[:, None]

    end = search_samples + report_samples
    return (f"examples/fashion_mnist/{model}.onnx", {"input": prep(train[:256])},
            {"input": prep(test[:search_samples]), "labels": labels[:search_samples]},
            {"input": prep(test[search_samples:end]), "labels": labels[search_samples:end]})


def efficientnet():
    """64 calibration crops; 32 crops to search on, 128 to report on (agreement with float)."""
    calibration, evaluation = calibration_and_eval_split(n_calib=64, n_eval=160)
    return ensure_model(), {"input": calibration}, {"input": evaluation[:32]}, {"input": evaluation[32:]}


MODELS = {"cnn": lambda: fashion("cnn", 1000, 4000), "vit": lambda: fashion("vit", 500, 2000), "effnet": efficientnet}


def run_model(name: str, budget: float) -> list[dict]:
    model, calibration, search_data, report_data = MODELS[name]()
    base = CompileConfig()
    search = CandidateEvaluator(model, calibration, search_data, base, samples=10**6)
    report = CandidateEvaluator(model, calibration, report_data, base, samples=10**6)
    started = time.perf_counter()
    search.score(base)
    print(f"[{name}] one candidate on {len(search.feeds)} search samples: {time.perf_counter() - started:.2f} s "
          f"({len(search.layers)} linear layers)", flush=True)
    started = time.perf_counter()
    measured = measure_sensitivity(search, base, (2, 4, 8))
    print(f"[{name}] measured sensitivity (2 and 4 bits): {time.perf_counter() - started:.0f} s", flush=True)
    proxy = proxy_sensitivity(search, base, (4, 8))
    four_eight = {"measured": _only(measured, (4, 8)), "proxy": proxy}
    limit = budget_limit("size", budget, search, base)
    configs = {"W8A8": base, "uniform W4A8": base.replace(weight_bits=4)}
    for kind, found in four_eight.items():
        configs[f"ILP 4/8 @{budget:g} ({kind})"] = ilp_config(width_problem(search, found, "size", base), limit, base)[0]
    randoms = random_configs(search, "size", limit, base, (4, 8), RANDOM_CONFIGS, seed=0)
    scored = [(search.score(c), c) for c in randoms]
    configs[f"best of {RANDOM_CONFIGS} random 4/8 @{budget:g}"] = max(
        scored, key=lambda pair: (pair[0].metric, -pair[0].rel_l2))[1]
    w4_limit = budget_limit("size", 0.5, search, base)
    configs["ILP 2/4/8 @ W4A8 bytes"] = ilp_config(width_problem(search, measured, "size", base), w4_limit, base)[0]
    full = budget_limit("size", 1.0, search, base)
    rows = [{"model": name, "config": "float", "metric": report.float_metric, "rel_l2": 0.0, "cost": None,
             "bytes": None, "kind": report.metric_kind}]
    for label, config in configs.items():
        score = report.score(config)
        rows.append({"model": name, "config": label, "metric": score.metric, "rel_l2": score.rel_l2,
                     "cost": score.layer_bytes / full, "bytes": score.weight_bytes, "kind": report.metric_kind})
        print(f"[{name}] {label}: {score.metric:.4f}", flush=True)
    return rows


def _only(found, widths):
    """``found`` restricted to ``widths``."""
    return Sensitivity(found.kind, {n: {w: v for w, v in row.items() if w in widths} for n, row in found.values.items()})


def ilp_timing(layers: int = 200, repeats: int = 5) -> float:
    """Median seconds to solve a synthetic ``layers``-layer problem (3 weight x 2 input widths, ties)."""
    rng = np.random.default_rng(0)
    options = {f"l{i}": [Option(w, a, float(rng.random()) * 4.0 ** (8 - w) + (8 - a) * 0.1, 1000.0 * w * a)
                         for w in (2, 4, 8) for a in (4, 8)] for i in range(layers)}
    problem = WidthProblem(options, [[f"l{i}", f"l{i + 1}", f"l{i + 2}"] for i in range(0, layers - 2, 6)])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve_widths(problem, 0.5 * problem.extreme_cost(max))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", type=float, default=0.6)
    args = parser.parse_args()
    rows = [row for name in args.models for row in run_model(name, args.budget)]
    print(f"\n{'model':<7} {'config':<38} {'metric':>9} {'vs float':>9} {'rel L2':>8} {'cost':>6} {'bytes':>9}")
    for row in rows:
        float_metric = next(r["metric"] for r in rows if r["model"] == row["model"] and r["config"] == "float")
        cost = "" if row["cost"] is None else f"{row['cost']:.3f}"
        size = "" if row["bytes"] is None else f"{row['bytes']:,}"
        print(f"{row['model']:<7} {row['config']:<38} {row['metric']:>9.4f} {100 * (row['metric'] - float_metric):>+8.2f}p "
              f"{row['rel_l2']:>8.4f} {cost:>6} {size:>9}")
    print(f"\nILP solve, 200 layers x 6 options, median of 5: {ilp_timing():.3f} s")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
