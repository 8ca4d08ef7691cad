"""Latency-objective width search on this CPU: a per-layer latency table measured here, the ILP's 4/8-bit
weights at a latency budget, and the chosen config's latency measured again after compiling it.

Per model:

1. The latency table (:func:`qcompiler.autotune.latency.measure_latency`): every linear layer's integer ops
   at 4- and 8-bit weights, lowered for x86 as ``qc compile`` does and timed by MetaSchedule's runner on this
   host (TVM's default thread pool).
2. The ILP (measured sensitivities on the search split) at ``--budget`` of the linear layers' W8 latency
   in the table, and a sweep of budgets.
3. W8, uniform W4 and each ILP choice, measured afresh: the linear layers' seconds again (a new runner
   session, :func:`~qcompiler.autotune.latency.layer_seconds`), and the whole compiled model, ``Module.run``
   on one held-out sample, interleaved rounds, medians. The metric (top-1 accuracy, or agreement with float)
   is scored on the held-out split. "met" compares the fresh linear-layer latency with the budget.

On a CPU with VNNI (or ``sdot``) every width of at most 8 bits runs the same instruction: the table then
shows equal times and no budget below about 1.0 can be met (the script says so). On AVX2 without VNNI,
weights of up to 7 bits run on ``vpmaddubsw``.

    .venv/bin/python -m benchmarks.latency_search [--models cnn effnet] [--budget 0.8] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import onnxruntime

import qcompiler
from benchmarks.mixed_precision import MODELS
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.latency import layer_seconds, measure_latency
from qcompiler.autotune.mixed_precision import base_cost, config_cost, ilp_config, width_problem
from qcompiler.autotune.sensitivity import measure_sensitivity
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError

onnxruntime.set_default_logger_severity(3)
SWEEP = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _whole_model_ms(modules: dict, feed: dict, rounds: int) -> dict[str, float]:
    """Median ms of ``Module.run`` per config, the configs interleaved in every round after a warm-up."""
    for module in modules.values():
        for _ in range(3):
            module.run(feed)
    times = {name: [] for name in modules}
    for _ in range(rounds):
        for name, module in modules.items():
            start = time.perf_counter()
            module.run(feed)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def run(name: str, budget: float, rounds: int) -> list[dict]:
    model, calibration, search_data, report_data = MODELS[name]()
    base = CompileConfig(target="x86")
    search = CandidateEvaluator(model, calibration, search_data, base, samples=len(search_data["input"]))
    report = CandidateEvaluator(model, calibration, report_data, base, samples=len(report_data["input"]))
    start = time.perf_counter()
    table = measure_latency(search, base, (4, 8))
    table_seconds = time.perf_counter() - start
    total = base_cost(table, search, base)
    problem = width_problem(search, measure_sensitivity(search, base, (4, 8)), table, base)
    cheapest = problem.extreme_cost(min) / total
    print(f"\n{name}: latency table of {len(search.layers)} layers x 2 widths measured in {table_seconds:.0f} s on "
          f"{table.measured_on} ({table.target}); linear layers at W8 {1e3 * total:.3f} ms, every layer at its "
          f"cheaper width {cheapest:.3f} of that")
    configs = {"W8": base, "W4 uniform": base.replace(weight_bits=4)}
    budgets = {}
    for fraction in sorted({budget, *SWEEP}, reverse=True):
        if fraction < cheapest:
            print(f"  budget {fraction:g}: below the reachable {cheapest:.3f}, not solved")
            continue
        config, _ = ilp_config(problem, fraction * total, base)
        configs[f"ILP @{fraction:g}"] = config
        budgets[f"ILP @{fraction:g}"] = fraction
    fresh = dict(zip(configs, layer_seconds(search, list(configs.values())), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        modules = {label: qcompiler.compile(model, calibration=calibration, config=config).save(f"{tmp}/{i}")
                   for i, (label, config) in enumerate(configs.items())}
        modules = {label: qcompiler.load(path) for label, path in modules.items()}
        feed = {key: value[:1] for key, value in report_data.items() if key != "labels"}
        whole = _whole_model_ms(modules, feed, rounds)
    fresh_total = sum(fresh["W8"].values())
    rows = []
    print(f"{'config':<14} {'4-bit layers':>12} {'table':>7} {'measured':>9} {'met':>5} {'model ms':>9} "
          f"{'vs W8':>6} {report.metric_kind:>10}")
    for label, config in configs.items():
        widths = config.layer_widths([layer.name for layer in search.layers])
        narrow = sum(1 for w, _ in widths.values() if w == 4)
        measured = sum(fresh[label].values()) / fresh_total
        row = {"model": name, "config": label, "budget": budgets.get(label), "narrow_layers": narrow,
               "table_fraction": config_cost(table, search, config) / total, "measured_fraction": measured,
               "model_ms": whole[label], "model_vs_w8": whole[label] / whole["W8"],
               "metric": report.score(config).metric, "metric_kind": report.metric_kind}
        met = "-" if row["budget"] is None else ("yes" if measured <= row["budget"] else "NO")
        print(f"{label:<14} {narrow:>7}/{len(widths):<4} {row['table_fraction']:>7.3f} {measured:>9.3f} {met:>5} "
              f"{row['model_ms']:>9.3f} {row['model_vs_w8']:>6.3f} {row['metric']:>10.4f}")
        rows.append(row)
    for row in rows:
        print("JSON " + json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "effnet"], choices=sorted(MODELS))
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    for name in args.models:
        try:
            run(name, args.budget, args.rounds)
        except QcError as err:
            print(f"{name}: {err}")


if __name__ == "__main__":
    main()
