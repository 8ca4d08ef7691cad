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
"""

from __future__ import annotations

import hashlib
import logging
import pathlib

import onnx
import tvm
from tvm import tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

from qcompiler.targets._build import fusion_passes
from qcompiler.targets.cpu_schedule import KERNEL_ATTR, schedule_default
from qcompiler.targets.relax_lowering import lower

__all__ = ["DATABASE_FILES", "InProcessBuilder", "create_database", "database_digest", "default_seconds",
           "generic_functions", "has_record", "keep_record", "record_count", "tune_function"]

#: the two files of a MetaSchedule JSON database, in a directory of their own.
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
#: candidates per search round (MetaSchedule's ``num_trials_per_iter``).
_TRIALS_PER_ROUND = 8


def generic_functions(region: onnx.ModelProto, target) -> dict[str, tirx.PrimFunc]:
    """Name -> PrimFunc of every tunable function of ``target``'s build of ``region`` (see the module doc)."""
    fused = tvm.transform.Sequential(fusion_passes())(lower(region, target.kernels()))
    return {
        gv.name_hint: func
        for gv, func in fused.functions_items()
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get(KERNEL_ATTR, False)
    }


def _workload(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module MetaSchedule keys a function by: its own normalization, which MetaScheduleApplyDatabase
    applies to every function it looks up."""
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def _runner() -> ms.runner.LocalRunner:
    """The runner that times both the tuning trials and the default schedule (so their times compare)."""
    return ms.runner.LocalRunner(
        timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    )


@derived_object
class InProcessBuilder(PyBuilder):
    """MetaSchedule's default build and export, in this process (see the module docstring for why)."""

    def build(self, build_inputs):
        results = []
        for item in build_inputs:
            try:
                results.append(BuilderResult(default_export(default_build(item.mod, item.target, None)), None))
            except Exception as err:  # noqa: BLE001 - a candidate that does not build is a failed trial
                results.append(BuilderResult(None, f"{type(err).__name__}: {str(err)[-400:]}"))
        return results


def tune_function(func: tirx.PrimFunc, tvm_target: tvm.target.Target, work_dir: pathlib.Path, trials: int,
                  seed: int = 0):  # fmt: skip
    """Search ``trials`` schedules of ``func`` into the database in ``work_dir``; the best record, or None
    when no candidate built and ran."""
    work_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    logger.setLevel(logging.WARNING)  # its console handler takes this level: no per-trial chatter
    for handler in list(logger.handlers):  # MetaSchedule re-configures logging by handler name on each
        if handler.get_name() is None:  # search and fails on an unnamed one (one it added itself earlier)
            logger.removeHandler(handler)
    database = ms.tune_tir(
        _workload(func), tvm_target, work_dir=str(work_dir), max_trials_global=trials,
        num_trials_per_iter=min(trials, _TRIALS_PER_ROUND), builder=InProcessBuilder(), runner=_runner(), seed=seed,
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


def record_count(db_dir: pathlib.Path) -> int:
    """Tuning records in the database in ``db_dir`` (0 when there is none)."""
    path = pathlib.Path(db_dir) / DATABASE_FILES[1]
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def has_record(db_dir: pathlib.Path, func: tirx.PrimFunc, tvm_target: tvm.target.Target) -> bool:
    """Whether the database in ``db_dir`` already holds a schedule for ``func`` (resuming skips it)."""
    if not (pathlib.Path(db_dir) / DATABASE_FILES[0]).is_file():
        return False
    database = ms.database.JSONDatabase(work_dir=str(db_dir), allow_missing=False)
    return database.query_tuning_record(_workload(func), tvm_target, "main") is not None


def database_digest(db_dir: pathlib.Path) -> str:
    """sha256 over the database's two files (what a manifest records)."""
    digest = hashlib.sha256()
    for name in DATABASE_FILES:
        path = pathlib.Path(db_dir) / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def default_seconds(func: tirx.PrimFunc, tvm_target: tvm.target.Target) -> float | None:
    """Seconds per call of ``func`` with qc's default schedule (:func:`~qcompiler.targets.cpu_schedule.
    schedule_default`), timed by the same runner as the tuning trials; None when it did not run."""
    scheduled = tvm.IRModule({"main": schedule_default(func).with_attr("global_symbol", "main")})
    (built,) = InProcessBuilder().build([ms.builder.BuilderInput(scheduled, tvm_target)])
    if built.error_msg:
        return None
    args = ms.arg_info.ArgInfo.from_prim_func(func)
    (future,) = _runner().run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])
    result = future.result()
    return None if result.error_msg else float(result.run_secs[0])
