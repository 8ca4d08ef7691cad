"""MetaSchedule tuning of a CPU build's generic kernels, into a TVM JSON database that ``qc compile`` applies.

What is tuned: the TIR functions that fusion produces and that are not a target's hand-written kernel
(:data:`~qcompiler.targets.cpu_schedule.KERNEL_ATTR`): fused elementwise chains, reductions, the integer
LayerNorm/Softmax/GELU, pooling, layout changes. Their workload is the function as fusion leaves it
(before any schedule), so a database record applies to every model whose build has a structurally equal
function. qc's int8 GEMM/convolution kernels are hand-scheduled (registers, VNNI) and are not tuned.

The database is MetaSchedule's own (``database_workload.json`` + ``database_tuning_record.json``, one JSON
document per line). :func:`tune_function` searches into a scratch database; a record is copied into the
kept database with :func:`keep_record` only after the caller has checked a build with it bit-exact.

Candidates are built in this process (:class:`InProcessBuilder`): building runs no generated code, and
MetaSchedule's process-pool builder spends about 30 s per batch here before the first candidate compiles
(measured: one ``tvm.compile`` of a candidate takes 0.03 s in-process, 30 s in a fresh pool worker). They
run and are timed in MetaSchedule's runner processes, so a faulting candidate cannot take the tuner down.
A :class:`Measurement` says where: this host, or a device behind a TVM RPC tracker (a phone, a board, or
qc's qemu stand-in, :class:`~qcompiler.targets.rpc.RpcServer`), which gets each candidate as a shared
library linked by the target's compiler (it needs no compiler of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import os
import pathlib
import platform
import tempfile
from collections.abc import Iterator

import numpy as np
import onnx
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

from qcompiler.errors import QcError
from qcompiler.targets._build import fusion_passes
from qcompiler.targets._database import DATABASE_FILES, database_digest, record_count
from qcompiler.targets.cpu_schedule import KERNEL_ATTR, schedule_default
from qcompiler.targets.relax_lowering import lower
from qcompiler.targets.rpc import check_device, parse_tracker

__all__ = ["DATABASE_FILES", "InProcessBuilder", "Measurement", "call_counts", "create_database", "database_digest",
           "default_seconds", "fused_module", "generic_functions", "has_record", "keep_record", "measurement_for", "record_count",
           "region_seconds", "tune_function"]

#: candidates per search round (MetaSchedule's ``num_trials_per_iter``).
_TRIALS_PER_ROUND = 8
#: timings per function and pass of :func:`region_seconds` (their median counts).
_REGION_REPEATS = 5
#: seconds one RPC measurement session may take (upload, load, time; under qemu too).
_REMOTE_SESSION_SECONDS = 120


def fused_module(region: onnx.ModelProto, target) -> tvm.IRModule:
    """``target``'s build of ``region`` up to fusion: the module whose TIR functions are timed and tuned."""
    return tvm.transform.Sequential(fusion_passes())(lower(region, target.kernels()))


def generic_functions(fused: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """Name -> PrimFunc of every tunable function of a :func:`fused_module` (see the module doc)."""
    return {
        gv.name_hint: func
        for gv, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get(KERNEL_ATTR, False)
    }


def call_counts(fused: tvm.IRModule) -> dict[str, int]:
    """Name -> how many times one run of a :func:`fused_module` calls each TIR function (the graph has no
    control flow, so the static count is the dynamic one)."""
    call_tir, counts = tvm.ir.Op.get("relax.call_tir"), {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            counts[expr.args[0].name_hint] = counts.get(expr.args[0].name_hint, 0) + 1

    for _, func in fused.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return counts


def _workload(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module MetaSchedule keys a function by: its own normalization, which MetaScheduleApplyDatabase
    applies to every function it looks up."""
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def _random_values(rng: np.random.Generator, dtype: str, shape) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.random(size=shape).astype(dtype)


def _alloc_on_device(session, device, args_info, alloc_repeat):
    """MetaSchedule's argument allocation with values filled from the client: its default fill is a function
    of TVM's extra runtime library, which a minimal device runtime (libtvm_runtime alone) lacks."""
    rng = np.random.default_rng(0)
    return alloc_argument_common(lambda tensor: tensor.copyfrom(_random_values(rng, tensor.dtype, tensor.shape)),
                                 device, args_info, alloc_repeat)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Where the tuning trials and qc's default schedules are timed (with the same runner, so their times
    compare): this host (``tracker`` None), or a device registered with the TVM RPC tracker ``tracker`` under
    ``key``, which loads shared libraries linked by ``cxx`` (the target's compiler; None: the host's)."""

    tracker: tuple[str, int] | None = None
    key: str = ""
    cxx: str | None = None

    @property
    def place(self) -> str:
        """Where this measures, in words."""
        if self.tracker is None:
            return "this host"
        return f"RPC device {self.key!r} of the tracker {self.tracker[0]}:{self.tracker[1]}"

    @contextlib.contextmanager
    def runner(self, repeat: int = 1) -> Iterator[ms.runner.PyRunner]:
        """A runner (``repeat`` timings of at least 20 ms per candidate) whose worker pool is shut down on
        exit (here, not by a garbage collection in one of its own threads, which fails and prints a
        traceback)."""
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=20)
        if self.tracker is None:
            runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
        else:
            config = ms.runner.RPCConfig(tracker_host=self.tracker[0], tracker_port=self.tracker[1],
                                         tracker_key=self.key, session_priority=1,
                                         session_timeout_sec=_REMOTE_SESSION_SECONDS)  # fmt: skip
            runner = ms.runner.RPCRunner(config, evaluator, f_alloc_argument=_alloc_on_device, max_workers=1)
        try:
            yield runner
        finally:
            runner.pool.shutdown(wait=True)

    def builder(self) -> InProcessBuilder:
        return InProcessBuilder(shared_library=self.tracker is not None, cxx=self.cxx)


def measurement_for(target, rpc_tracker: str | None, rpc_key: str | None) -> Measurement:
    """Where ``target``'s kernels are timed; refuses targets without tunable CPU kernels, and a target whose
    code cannot run here when no device is named."""
    if not target.cpu_library:
        raise QcError(f"kernels are timed for --target x86 and aarch64 (not {target.name!r}): the other targets have no "
                      "single-kernel runner here (Cortex-M builds C, timed whole by benchmarks.mcu_sweep; CUDA has its "
                      "own schedules)")
    if (rpc_tracker is None) != (rpc_key is None):
        raise QcError("--rpc-tracker HOST:PORT and --rpc-key KEY go together")
    if rpc_tracker is None:
        if not target.runs_on_host:
            raise QcError(f"{target.name} code does not run on this {platform.machine()} host: time it on a device "
                          "registered with a TVM RPC tracker, --rpc-tracker HOST:PORT --rpc-key KEY")
        return Measurement()
    tracker = parse_tracker(rpc_tracker)
    check_device(tracker, rpc_key)  # before minutes of compiling
    return Measurement(tracker, rpc_key, target.library_cxx)


@functools.cache
def _register_tensor_intrinsics() -> None:
    """Import TVM's tensor intrinsics (MetaSchedule's build imports them on first use) in 9 s, not 50-80 s.

    TVMScript's ``prim_func`` calls ``inspect.stack()`` for each of the ~500 intrinsics; during an import the
    stack holds importlib's frozen frames, whose file ``inspect.getmodule`` cannot find in its file->module
    cache, so each lookup scans every loaded module. Entering those frames' own modules into the cache ends
    the scans; the entries are true, nothing else reads them differently.
    """
    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(f"<frozen {name}>")), name)
    importlib.import_module("tvm.s_tir.tensor_intrin")


@derived_object
class InProcessBuilder(PyBuilder):
    """MetaSchedule's default build, in this process (see the module docstring for why), exported as its
    default object archive or, with ``shared_library``, as a shared library linked by ``cxx``."""

    def __init__(self, shared_library: bool = False, cxx: str | None = None):
        super().__init__()
        self.shared_library, self.cxx = shared_library, cxx

    def _export(self, built) -> str:
        if not self.shared_library:
            return default_export(built)
        path = os.path.join(tempfile.mkdtemp(prefix="qc-candidate-"), "candidate.so")
        built.export_library(path, **({"cc": self.cxx} if self.cxx else {}))
        return path

    def build(self, build_inputs):
        _register_tensor_intrinsics()
        results = []
        for item in build_inputs:
            try:
                results.append(BuilderResult(self._export(default_build(item.mod, item.target, None)), None))
            except Exception as err:  # noqa: BLE001 - a candidate that does not build is a failed trial
                results.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[-400:]}"))
        return results


def tune_function(func: tirx.PrimFunc, tvm_target: tvm.target.Target, work_dir: pathlib.Path, trials: int,
                  measurement: Measurement = Measurement(), seed: int = 0):  # fmt: skip
    """Search ``trials`` schedules of ``func`` into the database in ``work_dir``; the best record, or None
    when no candidate built and ran."""
    work_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)  # its console handler takes this level: no per-trial chatter
    for handler in list(logger.handlers):  # MetaSchedule re-configures logging by handler name on each
        if handler.get_name() is None:  # search and fails on an unnamed one (one it added itself earlier)
            logger.removeHandler(handler)
    with measurement.runner() as runner:
        database = ms.tune_tir(
            _workload(func), tvm_target, work_dir=str(work_dir), max_trials_global=trials,
            num_trials_per_iter=min(trials, _TRIALS_PER_ROUND), builder=measurement.builder(), runner=runner,
            seed=seed,
        )  # fmt: skip
    return database.query_tuning_record(_workload(func), tvm_target, "main")


def keep_record(db_dir: pathlib.Path, func: tirx.PrimFunc, record, tvm_target: tvm.target.Target) -> None:
    """Add ``record`` (a schedule of ``func``) to the database in ``db_dir``."""
    db_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    workload = database.commit_workload(_workload(func))
    database.commit_tuning_record(
        ms.database.TuningRecord(record.trace, workload, record.run_secs, tvm_target, record.args_info)
    )


def create_database(db_dir: pathlib.Path) -> None:
    """An empty database in ``db_dir`` unless one is there."""
    db_dir.mkdir(parents=True, exist_ok=True)
    ms.database.JSONDatabase(work_dir=str(db_dir))


def has_record(db_dir: pathlib.Path, func: tirx.PrimFunc, tvm_target: tvm.target.Target) -> bool:
    """Whether the database in ``db_dir`` already holds a schedule for ``func`` (resuming skips it)."""
    if not (pathlib.Path(db_dir) / DATABASE_FILES[0]).is_file():
        return False
    database = ms.database.JSONDatabase(work_dir=str(db_dir), allow_missing=False)
    return database.query_tuning_record(_workload(func), tvm_target, "main") is not None


def default_seconds(funcs: list[tirx.PrimFunc], tvm_target: tvm.target.Target, measurement: Measurement = Measurement(),
                    repeat: int = 1, both_orders: bool = False) -> list[float | None]:  # fmt: skip
    """Seconds per call of each of ``funcs`` as ``qc compile`` builds it (a hand-written kernel as it is, any
    other function with :func:`~qcompiler.targets.cpu_schedule.schedule_default`), timed by the runner of the
    tuning trials (the median of ``repeat`` timings); None where it did not run. ``both_orders``: timed once
    in the given order and once in reverse, in one runner session, and averaged, so that a drift of the
    machine's speed over the session (clocks, a neighbour) does not favour whichever functions come first."""
    scheduled = [tvm.IRModule({"main": (f if f.attrs.get(KERNEL_ATTR, False) else schedule_default(f))
                               .with_attr("global_symbol", "main")}) for f in funcs]
    built = measurement.builder().build([ms.builder.BuilderInput(m, tvm_target) for m in scheduled])
    inputs = {i: ms.runner.RunnerInput(b.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(funcs[i]))
              for i, b in enumerate(built) if not b.error_msg}  # fmt: skip
    orders = [list(inputs), list(inputs)[::-1]] if both_orders else [list(inputs)]
    passes = []
    with measurement.runner(repeat) as runner:
        for order in orders:
            seconds: list[float | None] = [None] * len(funcs)
            for i, future in zip(order, runner.run([inputs[i] for i in order]) if order else [], strict=True):
                result = future.result()
                seconds[i] = None if result.error_msg else float(np.median([float(t) for t in result.run_secs]))
            passes.append(seconds)
    return [None if None in values else sum(values) / len(values) for values in zip(*passes, strict=True)]


def region_seconds(fused_regions: list[tvm.IRModule], tvm_target: tvm.target.Target,
                   measurement: Measurement = Measurement()) -> list[float | None]:  # fmt: skip
    """Seconds per run of each of ``fused_regions`` (each a :func:`fused_module`): every TIR function's
    :func:`default_seconds` times its calls, summed (the Relax VM's own overhead between calls is not
    counted). Structurally equal functions are built once and timed once per order, whichever regions hold
    them (``both_orders``, each the median of :data:`_REGION_REPEATS` timings); None for a region with a
    function that did not run."""
    distinct: dict[int, tirx.PrimFunc] = {}
    uses = []
    for fused in fused_regions:
        counts, region_uses = call_counts(fused), []
        for gv, func in fused.functions_items():
            if isinstance(func, tirx.PrimFunc) and counts.get(gv.name_hint):
                key = tvm_ffi.structural_hash(func.without_attr("global_symbol"))
                distinct.setdefault(key, func)
                region_uses.append((key, counts[gv.name_hint]))
        uses.append(region_uses)
    timed = dict(zip(distinct, default_seconds(list(distinct.values()), tvm_target, measurement, _REGION_REPEATS,
                                               both_orders=True), strict=True))
    return [None if any(timed[k] is None for k, _ in region_uses) else sum(timed[k] * n for k, n in region_uses)
            for region_uses in uses]
