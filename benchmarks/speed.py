"""Speed on this CPU, batch 1: onnxruntime FP32 / INT8 (static QDQ, dynamic) against qc, and one int8 GEMM.

Protocol (compare numbers within one run: these shared 2-core machines are noisy):

* Every runner lives in its own process (multiprocessing, 'spawn'). It builds its onnxruntime session or
  loads its qc artifact once, then answers requests over a Pipe; a timing request times ONE call with
  time.perf_counter around it and sends the seconds back. Quantizing (onnxruntime) and compiling (qc, saved
  as an artifact the worker loads) happen once per model in the parent, on the same calibration samples
  (32; 16 for DeiT and BERT), and each runner's preparation time is printed (for qc: the whole compile,
  e.g. the DeiT-tiny-size ViT's, which should stay under a minute). Models with a symbolic batch dimension
  get it fixed to 1 first.
* Thread counts (--threads) are measured one after the other. onnxruntime: intra_op_num_threads=N,
  inter_op_num_threads=1, ORT_ENABLE_ALL. qc: qcompiler.load(..., num_threads=N).
* Warm-up: 5 calls per runner. Then --rounds rounds, interleaved A B C D A B C D ...: in each round every
  runner times one call in turn, after a 20 ms idle gap. While a runner warms up or is timed, every other
  runner's process is suspended (SIGSTOP/SIGCONT): an idle onnxruntime session with 2 intra-op threads
  keeps one pool thread spinning on a core indefinitely (measured here: 1.0 core busy while it sleeps
  between calls), which would otherwise take a core from whichever runner is being timed.
* --warm-calls N: in each round a runner times N back-to-back calls after the gap and reports their median
  (a busy server's latency). The default, one call after the idle gap, is what an occasional request
  sees; on these VMs that first call after idling runs slower, for every runner alike (measured on one:
  the 512x768x768 int8 GEMM 1.3 ms back to back, 2.0 ms after the gap; onnxruntime's 0.9 and 1.6 ms).
* Per runner: the median time; the median over rounds of (the fastest onnxruntime configuration's time in
  that round / the runner's time), so > 1 means faster than the best onnxruntime; the relative L2 error
  ||y - y_fp32|| / ||y_fp32|| against onnxruntime FP32 on the benchmark input, a held-out sample (BERT: the
  sentence embedding). qc is timed as a user calls it, Module.run: float in, float out.
* GEMM (on by default; --no-gemm, --gemm-only): M x K x N = 197x192x768 and 512x768x768. onnxruntime
  MatMulInteger (uint8 [M,K] x constant int8 [K,N] -> int32), onnxruntime float MatMul, and qc compiling
  that float MatMul twice (qc: this CPU's default kernels; qc_avx2: mcpu=haswell, the AVX2 vpmaddwd kernels
  of CPUs without VNNI, against the same VNNI onnxruntime), timed as Module.run_integer on inputs quantized
  once beforehand (so every runner starts from a tensor of its input type; qc's integer region also adds
  its bias and requantizes to uint8).
  GOP/s = 2*M*K*N / median time; "vs MatMulInteger" is the median per-round time ratio, i.e. the
  fraction of MatMulInteger's GOP/s.
* Every table row is also printed as one line "JSON {...}", failures and skipped runners included.

* qc_tuned (with --tune-trials N): ``qc tune`` on the model (the --tune-kernels slowest generic kernels,
  N MetaSchedule trials each, databases cached under ~/.cache/qc/tuning and resumed), then qc compiled
  with that database; its preparation time includes the tuning.

    .venv/bin/python -m benchmarks.speed [--models fashion_cnn bert] [--threads 1 2] [--rounds 30] [--warm-calls 10]
                                         [--no-gemm | --gemm-only] [--tune-trials 32 --tune-kernels 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

# qcompiler is imported inside functions only: 'spawn' re-imports this module in every worker.

REPO = Path(__file__).resolve().parents[1]
CALIB_SAMPLES = 32
TRANSFORMER_CALIB_SAMPLES = 16
WARMUP = 5
PAUSE_S = 0.02
LOAD_TIMEOUT_S = 900
CALL_TIMEOUT_S = 300
GEMM_SHAPES = ((197, 192, 768), (512, 768, 768))
GEMM_BASELINE = "ort_matmulinteger"
#: the qc GEMM builds: this CPU's default kernels, and the AVX2 (vpmaddwd) kernels a CPU without VNNI gets.
GEMM_QC_BUILDS = {"qc": {}, "qc_avx2": {"mcpu": "haswell"}}
#: table columns: header, record key, format, width.
MODEL_COLUMNS = [("median ms", "median_ms", ".3f", 10), ("ratio vs best ORT", "ratio_vs_best_ort", ".3f", 18),
                 ("rel L2 vs FP32", "rel_l2_vs_ort_fp32", ".2e", 15)]
GEMM_COLUMNS = [("median ms", "median_ms", ".3f", 10), ("GOP/s", "gops", ".1f", 9),
                ("vs MatMulInteger", "fraction_of_matmulinteger", ".3f", 17)]
onnxruntime.set_default_logger_severity(3)  # exported models carry unused initializers; ORT warns per tensor


@dataclass(frozen=True)
class Bench:
    """A model: its ONNX file, calibration samples (sample-major, by input name) and one held-out feed."""

    path: Path
    calibration: dict[str, np.ndarray]
    feed: dict[str, np.ndarray]


def _fashion(file: str) -> Bench:
    from examples.fashion_mnist.data import load_split, preprocess

    train, _ = load_split("train")
    test, _ = load_split("test")
    return Bench(REPO / "examples" / "fashion_mnist" / file, {"input": preprocess(train[:CALIB_SAMPLES])},
                 {"input": preprocess(test[:1])})


def _efficientnet_lite0() -> Bench:
    from examples.efficientnet_lite0.export import INPUT_NAME, ensure_model
    from examples.efficientnet_lite0.photos import make_calibration_crops, make_eval_crops

    return Bench(ensure_model(), {INPUT_NAME: make_calibration_crops(n=CALIB_SAMPLES)},
                 {INPUT_NAME: make_eval_crops(n=1)})


def _resnet18() -> Bench:
    from examples.resnet18.export import IMAGE_SIZE, INPUT_NAME, ensure_model

    images = np.random.default_rng(1).standard_normal((CALIB_SAMPLES + 1, 3, IMAGE_SIZE, IMAGE_SIZE))
    images = images.astype(np.float32)
    return Bench(ensure_model(), {INPUT_NAME: images[:-1]}, {INPUT_NAME: images[-1:]})


def _deit_tiny() -> Bench:
    from examples.transformers.export import ensure_model, vit_images

    return Bench(ensure_model("vit"), {"pixel_values": vit_images(TRANSFORMER_CALIB_SAMPLES, seed=0)},
                 {"pixel_values": vit_images(1, seed=1)})


def _bert() -> Bench:
    from examples.transformers.export import bert_inputs, ensure_model

    return Bench(ensure_model("bert"), bert_inputs(TRANSFORMER_CALIB_SAMPLES, seed=0), bert_inputs(1, seed=1))


MODELS: dict[str, Callable[[], Bench]] = {
    "fashion_cnn": lambda: _fashion("cnn.onnx"),
    "fashion_vit": lambda: _fashion("vit.onnx"),
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet18": _resnet18,
    "deit_tiny": _deit_tiny,
    "bert": _bert,
}


class _Reader(CalibrationDataReader):
    """The calibration samples one at a time, as batch-1 feeds (what quantize_static reads)."""

    def __init__(self, samples: dict[str, np.ndarray]):
        count = len(next(iter(samples.values())))
        self._feeds = iter([{k: v[i:i + 1] for k, v in samples.items()} for i in range(count)])

    def get_next(self):
        return next(self._feeds, None)


def _ort_fp32(model: Path, bench: Bench, workdir: Path) -> Path:
    return model


def _ort_int8_static(model: Path, bench: Bench, workdir: Path) -> Path:
    out = workdir / "int8_static.onnx"
    quantize_static(str(model), str(out), _Reader(bench.calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _ort_int8_dynamic(model: Path, bench: Bench, workdir: Path) -> Path:
    out = workdir / "int8_dynamic.onnx"
    quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
    return out


def _qc(model: Path, bench: Bench, workdir: Path, tuning_db: Path | None = None) -> Path:
    import qcompiler

    options = {"target_options": {"tuning_db": str(tuning_db)}} if tuning_db else {}
    artifact = qcompiler.compile(model, target="x86", calibration=bench.calibration, **options)
    return artifact.save(workdir / ("qc_tuned" if tuning_db else "qc"))


#: where the qc_tuned runner keeps each model's tuning database (resumed by later runs).
TUNING_CACHE = Path.home() / ".cache" / "qc" / "tuning"


def _qc_tuned(trials: int, kernels: int) -> Callable[[Path, Bench, Path], Path]:
    """qc compiled with the schedules ``qc tune`` finds (``trials`` per kernel, the ``kernels`` slowest
    generic kernels) in the model's cached database; the tuning time counts as its preparation."""

    def prepare(model: Path, bench: Bench, workdir: Path) -> Path:
        import qcompiler

        digest = hashlib.sha256(bench.path.read_bytes()).hexdigest()[:12]
        db = TUNING_CACHE / f"{bench.path.stem}-{digest}-t{trials}-k{kernels}"
        report = qcompiler.tune(model, bench.calibration, db, trials=trials, kernels=kernels)
        for row in (r for r in report["kernels"] if r["model"] == report["model"]):
            print(f"    tuned {row['kernel'][:60]}: {row['status']}"
                  + (f", {row['speedup']:.2f}x vs default" if "speedup" in row else ""), flush=True)
        if not report["records"]:
            raise RuntimeError(f"qc tune kept no schedule in {db} (see tune.json there): nothing tuned to run")
        return _qc(model, bench, workdir, db)

    return prepare


@dataclass(frozen=True)
class Runner:
    """One implementation under test: ``prepare`` (in the parent) writes what its worker ``engine`` loads."""

    name: str
    engine: str  # a key of LOADERS
    prepare: Callable[[Path, Bench, Path], Path] | None = None
    skip: str | None = None


RUNNERS = (
    Runner("ort_fp32", "ort", _ort_fp32),
    Runner("ort_int8_static", "ort", _ort_int8_static),
    Runner("ort_int8_dynamic", "ort", _ort_int8_dynamic),
    Runner("qc", "qc", _qc),
)


def _runners(tune_trials: int, tune_kernels: int) -> tuple[Runner, ...]:
    """:data:`RUNNERS` and qc_tuned (skipped, with the reason, unless ``tune_trials`` > 0)."""
    tuned = (Runner("qc_tuned", "qc", _qc_tuned(tune_trials, tune_kernels)) if tune_trials > 0
             else Runner("qc_tuned", "qc", skip="pass --tune-trials N to tune (minutes per model)"))
    return (*RUNNERS, tuned)


# --- worker side ---------------------------------------------------------------------------------------


def _load_ort(path: Path, feed: dict[str, np.ndarray], threads: int) -> Callable[[], object]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    return lambda: session.run([output], feed)[0]


def _load_qc_module(path: Path, threads: int):
    import qcompiler

    return qcompiler.load(path, num_threads=threads)


def _load_qc(path: Path, feed: dict[str, np.ndarray], threads: int) -> Callable[[], object]:
    module = _load_qc_module(path, threads)
    output = module.outputs[0]["name"]
    return lambda: module.run(feed)[output]


def _load_qc_integer(path: Path, feed: dict[str, np.ndarray], threads: int) -> Callable[[], object]:
    module = _load_qc_module(path, threads)
    integers = module.quantize_inputs(feed)
    return lambda: module.run_integer(integers)


#: engine -> loader(path, feed, threads) returning the call to time (model engines return the first output).
LOADERS = {"ort": _load_ort, "qc": _load_qc, "qc_integer": _load_qc_integer}


def _describe(err: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return f"{type(err).__name__}: {text[:400]}"


def _serve(conn, engine: str, path: str, feed: dict[str, np.ndarray], threads: int) -> None:
    """Worker process: load the runner, report, then answer "output" / "time" requests until "stop"."""
    try:
        call = LOADERS[engine](Path(path), feed, threads)
    except Exception as err:  # reported to the parent, which records the runner as failed
        conn.send(("error", f"load: {_describe(err)}"))
        return
    conn.send(("ok", None))
    for request in iter(conn.recv, "stop"):
        try:
            if request[0] == "time":  # ("time", calls): the median of that many back-to-back calls
                seconds = []
                for _ in range(request[1]):
                    start = time.perf_counter()
                    call()
                    seconds.append(time.perf_counter() - start)
                answer = statistics.median(seconds)
            else:
                answer = call()
            conn.send(("ok", answer))
        except Exception as err:
            conn.send(("error", f"run: {_describe(err)}"))


# --- parent side ---------------------------------------------------------------------------------------


class Worker:
    """A spawned process serving one runner (see :func:`_serve`)."""

    def __init__(self, context, engine: str, path: Path, feed: dict[str, np.ndarray], threads: int):
        self.conn, child = context.Pipe()
        args = (child, engine, str(path), feed, threads)
        self.process = context.Process(target=_serve, args=args, daemon=True)
        self.process.start()
        child.close()

    def receive(self, timeout: float = CALL_TIMEOUT_S):
        """The worker's next answer; RuntimeError with its message if it failed, died or hung."""
        if not self.conn.poll(timeout):
            raise RuntimeError(f"no answer within {timeout} s")
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"worker died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def ask(self, request: str):
        """Send ``request`` (``("time", calls)`` or ``("output",)``) and return the answer."""
        self.conn.send(request)
        return self.receive()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process (SIGSTOP suspends every thread of it, spinning ones included)."""
        if self.process.is_alive():
            os.kill(self.process.pid, signum)

    def ask_alone(self, request: str, others: list[Worker]):
        """:meth:`ask` after :data:`PAUSE_S` of idle, with every worker in ``others`` suspended meanwhile."""
        for other in others:
            other.signal(signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S)
            return self.ask(request)
        finally:
            for other in others:
                other.signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the process (killed if it does not exit within 5 s)."""
        if self.process.is_alive():
            self.signal(signal.SIGCONT)
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


@dataclass
class Row:
    """One runner at one thread count: per-round seconds and ratios, its output, or why it has none."""

    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    output: np.ndarray | None = None
    error: str | None = None
    skipped: str | None = None

    def summary(self, ratio_key: str) -> dict:
        """Median milliseconds, median ratio (under ``ratio_key``; None where there are none), error, skip."""
        ok = self.error is None and self.skipped is None
        return {
            "median_ms": 1000 * statistics.median(self.times) if ok and self.times else None,
            ratio_key: statistics.median(self.ratios) if ok and self.ratios else None,
            "error": self.error,
            "skipped": self.skipped,
        }


#: a runner to measure: name, engine (a key of LOADERS), the file it loads, its feed.
Spec = tuple[str, str, Path, dict[str, np.ndarray]]


def measure(specs: list[Spec], threads: int, rounds: int, baselines: set[str],
            output: bool, calls: int = 1) -> dict[str, Row]:
    """Interleaved timing of ``specs`` at ``threads`` threads, one worker process each (module docstring);
    a runner's time in a round is the median of ``calls`` back-to-back calls.

    A round's ratio is (fastest time among ``baselines`` in that round) / (the runner's time). With
    ``output``, each runner's output on its feed is fetched once, before the warm-up.
    """
    context = multiprocessing.get_context("spawn")
    rows = {name: Row() for name, *_ in specs}
    workers: dict[str, Worker] = {}

    def fail(name: str, err: Exception) -> None:
        rows[name].error = str(err)
        workers.pop(name).close()

    try:
        for name, engine, path, feed in specs:
            workers[name] = Worker(context, engine, path, feed, threads)
        for name, worker in list(workers.items()):
            try:
                worker.receive(LOAD_TIMEOUT_S)
                if output:
                    rows[name].output = np.asarray(worker.ask(("output",)))
                for _ in range(WARMUP):
                    worker.ask_alone(("time", 1), [w for w in workers.values() if w is not worker])
            except RuntimeError as err:
                fail(name, err)
        for _ in range(rounds):
            times = {}
            for name, worker in list(workers.items()):
                try:
                    times[name] = worker.ask_alone(("time", calls), [w for w in workers.values() if w is not worker])
                except RuntimeError as err:
                    fail(name, err)
            best = min((t for name, t in times.items() if name in baselines), default=None)
            for name, seconds in times.items():
                rows[name].times.append(seconds)
                if best is not None:
                    rows[name].ratios.append(best / seconds)
    finally:
        for worker in workers.values():
            worker.close()
    return rows


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def _print_table(title: str, columns: list[tuple[str, str, str, int]], records: list[dict]) -> None:
    """``title``, a line per record (columns: header, record key, format, width), then the JSON lines."""
    print(f"\n{title}")
    print(f"{'runner':<18}" + "".join(f" {header:>{width}}" for header, _, _, width in columns))
    for record in records:
        cells = "".join(f" {_cell(record[key], fmt, width)}" for _, key, fmt, width in columns)
        status = f"  skipped: {record['skipped']}" if record["skipped"] else ""
        status += f"  FAILED: {record['error']}" if record["error"] else ""
        print(f"{record['runner']:<18}{cells}{status}")
    for record in records:
        print("JSON " + json.dumps(record))


def _static_batch1(path: Path, workdir: Path) -> Path:
    """``path``, or a copy in ``workdir`` whose symbolic leading (batch) dims of inputs and outputs are 1."""
    model = onnx.load(str(path))
    dims = [v.type.tensor_type.shape.dim[0] for v in [*model.graph.input, *model.graph.output]]
    symbolic = [dim for dim in dims if not dim.HasField("dim_value")]
    if not symbolic:
        return path
    for dim in symbolic:
        dim.Clear()
        dim.dim_value = 1
    fixed = workdir / "batch1.onnx"
    onnx.save(model, str(fixed))
    return fixed


def _calls_note(calls: int) -> str:
    return "" if calls == 1 else f", median of {calls} back-to-back calls each"


def _rel_l2(y: np.ndarray | None, reference: np.ndarray | None) -> float | None:
    if y is None or reference is None:
        return None
    y, reference = y.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def bench_model(name: str, threads: list[int], rounds: int, runners: tuple[Runner, ...] = RUNNERS,
                calls: int = 1) -> None:
    """Prepare every runner of model ``name`` once, then measure and print it at each thread count."""
    print(f"\n{name}: preparing (onnxruntime quantization, qc compile) ...", flush=True)
    bench = MODELS[name]()
    with tempfile.TemporaryDirectory(prefix="qc-speed-") as tmp:
        workdir = Path(tmp)
        model = _static_batch1(bench.path, workdir)
        specs, unmeasured = [], {}
        for runner in runners:
            if runner.skip:
                unmeasured[runner.name] = Row(skipped=runner.skip)
                continue
            began = time.perf_counter()
            try:
                specs.append((runner.name, runner.engine, runner.prepare(model, bench, workdir), bench.feed))
            except Exception as err:  # recorded as a failed row; the other runners go on
                unmeasured[runner.name] = Row(error=f"prepare: {_describe(err)}")
            print(f"  {runner.name}: prepared in {time.perf_counter() - began:.1f} s", flush=True)
        ort_names = {runner.name for runner in runners if runner.engine == "ort"}
        for n in threads:
            rows = {**measure(specs, n, rounds, ort_names, output=True, calls=calls), **unmeasured}
            reference = rows["ort_fp32"].output
            records = [{"part": "model", "model": name, "threads": n, "runner": r.name, "rounds": rounds,
                        **rows[r.name].summary("ratio_vs_best_ort"),
                        "rel_l2_vs_ort_fp32": _rel_l2(rows[r.name].output, reference)} for r in runners]
            _print_table(f"{name}, {n} thread(s), batch 1, {rounds} interleaved rounds{_calls_note(calls)} "
                         "(ratio = best onnxruntime time in the round / runner time)",
                         MODEL_COLUMNS, records)


def _matmul_model(path: Path, op: str, input_type: int, weight: np.ndarray, output_type: int, m: int) -> Path:
    """Save a one-node model ``y = op(x, weight)`` with ``x`` of shape [m, K] and a constant ``weight``."""
    k, n = weight.shape
    graph = helper.make_graph([helper.make_node(op, ["x", "weight"], ["y"])], op.lower(),
                              [helper.make_tensor_value_info("x", input_type, [m, k])],
                              [helper.make_tensor_value_info("y", output_type, [m, n])],
                              [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _gemm_specs(m: int, k: int, n: int, workdir: Path) -> tuple[list[Spec], dict[str, Row]]:
    """The GEMM runners at M x K x N (qc compiles the float MatMul; a failure becomes a failed row)."""
    import qcompiler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    weight = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    float_model = _matmul_model(workdir / "matmul.onnx", "MatMul", TensorProto.FLOAT, weight,
                                TensorProto.FLOAT, m)
    integer_model = _matmul_model(workdir / "matmulinteger.onnx", "MatMulInteger", TensorProto.UINT8,
                                  rng.integers(-127, 128, (k, n), dtype=np.int8), TensorProto.INT32, m)
    specs: list[Spec] = [
        (GEMM_BASELINE, "ort", integer_model, {"x": rng.integers(0, 256, (m, k), dtype=np.uint8)}),
        ("ort_matmul_fp32", "ort", float_model, {"x": x}),
    ]
    # a 2-D input's first dim is its batch, so calibration rows are samples: CALIB_SAMPLES batches of m rows
    calibration = {"x": rng.standard_normal((CALIB_SAMPLES * m, k)).astype(np.float32)}
    failed: dict[str, Row] = {}
    for runner, options in GEMM_QC_BUILDS.items():
        try:
            artifact = qcompiler.compile(float_model, target="x86", calibration=calibration,
                                         target_options=options).save(workdir / runner)
        except Exception as err:  # recorded as a failed row
            failed[runner] = Row(error=f"prepare: {_describe(err)}")
            continue
        specs.append((runner, "qc_integer", artifact, {"x": x}))
    return specs, failed


def bench_gemm(threads: list[int], rounds: int, calls: int = 1) -> None:
    """Measure and print the int8 GEMMs at every shape and thread count."""
    for m, k, n in GEMM_SHAPES:
        gop = 2 * m * k * n / 1e9
        with tempfile.TemporaryDirectory(prefix="qc-speed-gemm-") as tmp:
            specs, unmeasured = _gemm_specs(m, k, n, Path(tmp))
            for t in threads:
                rows = {**measure(specs, t, rounds, {GEMM_BASELINE}, output=False, calls=calls), **unmeasured}
                records = [{"part": "gemm", "shape": [m, k, n], "threads": t, "runner": runner,
                            "rounds": rounds, **row.summary("fraction_of_matmulinteger")}
                           for runner, row in rows.items()]
                for record in records:
                    record["gops"] = gop / (record["median_ms"] / 1000) if record["median_ms"] else None
                _print_table(f"GEMM {m}x{k}x{n} (M x K x N), {t} thread(s), {rounds} interleaved rounds"
                             f"{_calls_note(calls)}",
                             GEMM_COLUMNS, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tune-trials", type=int, default=0, help="qc_tuned: MetaSchedule trials per kernel "
                        "(0: skip qc_tuned)")
    parser.add_argument("--tune-kernels", type=int, default=4, help="qc_tuned: how many slowest kernels to tune")
    parser.add_argument("--warm-calls", type=int, default=1, metavar="N",
                        help="time N back-to-back calls per runner and round and take their median (default 1: "
                             "one call after the idle gap)")
    gemm = parser.add_mutually_exclusive_group()
    gemm.add_argument("--no-gemm", action="store_true", help="skip the GEMM part")
    gemm.add_argument("--gemm-only", action="store_true", help="run the GEMM part only")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if not args.gemm_only:
        for name in args.models:
            bench_model(name, args.threads, args.rounds, _runners(args.tune_trials, args.tune_kernels),
                        args.warm_calls)
    if not args.no_gemm:
        bench_gemm(args.threads, args.rounds, args.warm_calls)


if __name__ == "__main__":
    main()
