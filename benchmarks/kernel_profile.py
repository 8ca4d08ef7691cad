"""Where qc's compiled x86 code spends its time: seconds per kernel for one benchmark model, slowest first.

    .venv/bin/python -m benchmarks.kernel_profile resnet18 [--threads 1] [--rounds 10] [--top 25]

Compiles the model as benchmarks.speed does (same calibration samples), then times every call the Relax VM
makes (Module.profile) on the held-out feed. The per-call host timing adds tens of microseconds per call,
so the total is a little above the end-to-end latency printed beside it; kernels are grouped by symbol, so
"calls" counts how often one kernel runs per inference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.speed import MODELS, _qc, _static_batch1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    import qcompiler

    bench = MODELS[args.model]()
    with tempfile.TemporaryDirectory(prefix="qc-profile-") as tmp:
        model = _static_batch1(bench.path, Path(tmp))
        module = qcompiler.load(_qc(model, bench, Path(tmp)), num_threads=args.threads)
        for _ in range(3):
            module.run(bench.feed)
        latencies = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            module.run(bench.feed)
            latencies.append(time.perf_counter() - start)
        rows = module.profile(bench.feed, args.rounds)
    total = sum(seconds for _, _, seconds in rows)
    print(f"{args.model}, {args.threads} thread(s): end-to-end median {statistics.median(latencies) * 1e3:.2f} ms; "
          f"sum over kernels {total * 1e3:.2f} ms in {sum(calls for _, calls, _ in rows)} calls")
    print(f"{'ms':>9} {'%':>6} {'calls':>6}  kernel")
    for symbol, calls, seconds in rows[: args.top]:
        print(f"{seconds * 1e3:9.3f} {100 * seconds / total:6.1f} {calls:6d}  {symbol}")
    rest = rows[args.top:]
    if rest:
        print(f"{sum(s for _, _, s in rest) * 1e3:9.3f} {100 * sum(s for _, _, s in rest) / total:6.1f} "
              f"{sum(c for _, c, _ in rest):6d}  ({len(rest)} other kernels)")


if __name__ == "__main__":
    main()
