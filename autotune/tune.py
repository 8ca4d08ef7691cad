"""``qc tune``: MetaSchedule schedules for the slowest generic kernels of a model's CPU build (x86, aarch64),
each kept only after a whole-model build with it is bit-exact with the integer model on calibration samples.

Where it measures: on this host, or with ``rpc_tracker`` / ``rpc_key`` on a device registered with a TVM RPC
tracker (a phone, a board, or qc's qemu-aarch64 stand-in :class:`~qcompiler.targets.rpc.RpcServer`): the
trials, the default schedules and the bit-exactness runs all execute there.

Steps: compile the model untuned (the same quantization as ``qc compile`` with the same config); rank the
kernels: on this host by timing every kernel call on the first calibration sample
(:meth:`~qcompiler.api.Module.profile`), on a device (whose VM cannot call back into a host profiler) by
timing each generic kernel's default schedule there times its calls per run; take the ``kernels``
slowest generic kernels (qc's hand-written int8 kernels are not tuned, see
:mod:`~qcompiler.targets.tuning`) that the database does not hold yet; for each, search ``trials``
schedules and time its default schedule with the same runner; the best schedule is kept in the database
only when it is faster than the default and the model compiled with it (and no other tuned schedule)
gives onnxruntime's outputs on the integer model for every sample. ``tune.json`` in the database
directory lists every kernel tried, per model (file name and content hash: default and tuned seconds,
speed-up, kept or why not); a rerun skips kernels already in the database (resumable) and keeps their
rows. ``qc compile --tuning-db DIR`` applies the database.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qcompiler.api import compile as compile_model
from qcompiler.api import target_loader
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError
from qcompiler.reference import integer_session
from qcompiler.targets import get_target
from qcompiler.targets import tuning as tvm_tuning
from qcompiler.targets._base import Progress

__all__ = ["REPORT", "tune"]

#: the per-kernel results, next to the database files.
REPORT = "tune.json"
#: profile rounds that rank the kernels.
_PROFILE_ROUNDS = 20


def _sample_feeds(module, calibration, samples: int) -> list[dict[str, np.ndarray]]:
    """The first ``samples`` calibration batches, each shaped as the compiled inputs (first axis = samples)."""
    data = dict(np.load(calibration)) if isinstance(calibration, str | Path) else dict(calibration)
    feeds = []
    for i in range(samples):
        feed = {}
        for entry in module.inputs:
            if entry["name"] not in data:
                raise QcError(f"calibration data has no input '{entry['name']}' (it has {sorted(data)})")
            batch = entry["shape"][0]
            value = data[entry["name"]][i * batch:(i + 1) * batch]
            if list(value.shape) != list(entry["shape"]):
                break
            feed[entry["name"]] = value
        if len(feed) < len(module.inputs):
            break
        feeds.append(feed)
    if not feeds:
        raise QcError("calibration data holds no sample of the compiled input shape to check tuned kernels on")
    return feeds


def _ranked(module, feed, fused, target, generic, measurement) -> list[tuple[str, int, float, float | None]]:
    """(kernel, calls per run, seconds per run, default seconds per call by the tuning runner or None) of the
    generic kernels, slowest first (see the module doc)."""
    if measurement.tracker is None:
        return [(n, c, s, None) for n, c, s in module.profile(feed, _PROFILE_ROUNDS) if n in generic]
    names, calls = sorted(generic), tvm_tuning.call_counts(fused)
    seconds = tvm_tuning.default_seconds([generic[n] for n in names], target.tvm_target(), measurement)
    rows = [(n, calls.get(n, 0), s * calls.get(n, 0), s) for n, s in zip(names, seconds, strict=True) if s is not None]
    return sorted(rows, key=lambda row: -row[2])


def _exact_with(region, target, record, func, integer_feeds, expected, work: Path, rpc: tuple) -> bool:
    """Whether the model built with ``record`` alone (a schedule of ``func``) matches ``expected``, run where
    the tuning measures (``rpc``: tracker and key, or Nones for this host)."""
    single = work / "single-db"
    shutil.rmtree(single, ignore_errors=True)
    tvm_tuning.keep_record(single, func, record, target.tvm_target())
    options = {name: getattr(target, name) for name in target.option_names()}
    tuned = get_target(target.name, **{**options, "tuning_db": str(single)})
    build = work / "single-build"
    module = target_loader(tuned, False, *rpc)(build, tuned.compile(region, build))
    try:
        return all(
            all(np.array_equal(g, w) for g, w in zip(module.run(feed), want, strict=True))
            for feed, want in zip(integer_feeds, expected, strict=True)
        )
    finally:
        if rpc[0] is not None:
            module.close()  # the device serves one session at a time


def tune(model, calibration, db: str | Path, config: CompileConfig | None = None, trials: int = 32,
         kernels: int = 4, samples: int = 4, progress: Progress | None = None, rpc_tracker: str | None = None,
         rpc_key: str | None = None) -> dict:  # fmt: skip
    """Tune ``model``'s slowest generic kernels into the database ``db``, timed on this host or on the RPC
    device ``rpc_key`` of the tracker ``rpc_tracker`` (host:port; see the module docstring); returns the
    report written to ``db / tune.json``."""
    if trials < 1 or kernels < 1 or samples < 1:
        raise QcError("--trials, --kernels and --samples must be positive")
    config = config or CompileConfig()
    options = {k: v for k, v in config.target_options.items() if k != "tuning_db"}
    config = config.replace(target_options=options)
    db = Path(db)
    target = get_target(config.target, **options)
    measurement = tvm_tuning.measurement_for(target, rpc_tracker, rpc_key)
    tvm_target = target.tvm_target()
    artifact = compile_model(model, calibration=calibration, config=config, progress=progress)
    module = artifact.module(rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    region = artifact.quantized.region()
    feeds = _sample_feeds(module, calibration, samples)
    integer_feeds = [module.quantize_inputs(f) for f in feeds]
    reference = integer_session(region)
    expected = [reference.run(None, f) for f in integer_feeds]
    if rpc_tracker is not None:
        module.compiled.close()  # it proved the device loads the model; the runner's sessions come next
    fused = tvm_tuning.fused_module(region, target)
    generic = tvm_tuning.generic_functions(fused)
    if progress is not None:
        progress("rank kernels", 0, -1)
    ranked = _ranked(module, feeds[0], fused, target, generic, measurement)
    model_id = _model_id(model)
    report_path = db / REPORT
    previous = json.loads(report_path.read_text())["kernels"] if report_path.is_file() else []
    rows = {(row["model"], row["kernel"]): row for row in previous}  # a database may serve several models
    todo = [row for row in ranked if not tvm_tuning.has_record(db, generic[row[0]], tvm_target)][:kernels]
    with tempfile.TemporaryDirectory(prefix="qc-tune-") as scratch:
        for index, (name, calls, _, ranking_default) in enumerate(todo):
            if progress is not None:
                progress("tune", index, len(todo))
            func = generic[name]
            record = tvm_tuning.tune_function(func, tvm_target, Path(scratch) / "search" / str(index), trials,
                                              measurement)  # fmt: skip
            default = ranking_default or tvm_tuning.default_seconds([func], tvm_target, measurement)[0]
            row = {"model": model_id, "kernel": name, "calls": calls, "trials": trials, "default_seconds": default,
                   "tuned_seconds": float(record.run_secs[0]) if record is not None else None}
            if default and row["tuned_seconds"]:
                row["speedup"] = round(default / row["tuned_seconds"], 3)
            if record is None:
                row["status"] = "no candidate built and ran"
            elif default is None:
                row["status"] = "not kept: the default schedule did not run, nothing to compare with"
            elif row["speedup"] <= 1.0:
                row["status"] = "not kept: no faster than the default schedule"
            elif _exact_with(region, target, record, func, integer_feeds, expected, Path(scratch), (rpc_tracker, rpc_key)):
                tvm_tuning.keep_record(db, func, record, tvm_target)
                row["status"] = "kept"
            else:
                row["status"] = "refused: the model built with it is not bit-exact"
            rows[model_id, name] = row
            _write_report(db, model_id, tvm_target, measurement.place, len(feeds), rows)  # after each kernel: resumable
        if progress is not None:
            progress("tune", len(todo), len(todo))
    return _write_report(db, model_id, tvm_target, measurement.place, len(feeds), rows)


def _model_id(model) -> str:
    """``file.onnx:sha256-prefix`` (or ``model:...`` for a ModelProto): the same model in any directory."""
    if isinstance(model, str | Path):
        return f"{Path(model).name}:{hashlib.sha256(Path(model).read_bytes()).hexdigest()[:12]}"
    return f"model:{hashlib.sha256(model.SerializeToString()).hexdigest()[:12]}"


def _write_report(db: Path, model_id: str, tvm_target, measured_on: str, samples: int, rows: dict) -> dict:
    """``tune.json``; the database files exist afterwards even when no schedule was kept (then
    ``qc compile --tuning-db`` applies nothing)."""
    tvm_tuning.create_database(db)
    report = {"model": model_id, "target": str(tvm_target), "measured_on": measured_on, "samples": samples,
              "records": tvm_tuning.record_count(db), "kernels": list(rows.values())}  # every model's rows
    (db / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report
