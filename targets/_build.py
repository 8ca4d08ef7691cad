"""Build steps shared by targets that compile a Relax module into one exported library.

Each step runs under its name; a failure inside TVM becomes a :class:`TargetError` naming the target and the
step, with TVM's exception kept as ``__cause__``.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import onnx
import tvm

from qcompiler.errors import QcError, TargetError
from qcompiler.targets._base import Progress
from qcompiler.targets._database import database_info
from qcompiler.targets._float_free import check_float_free
from qcompiler.targets._runtime import region_signature
from qcompiler.targets.cpu_schedule import KERNEL_ATTR, schedule_module
from qcompiler.targets.relax_lowering import lower

__all__ = ["build_relax_library", "cpu_pipeline", "fusion_passes"]

_T = TypeVar("_T")

#: lines of TVM's message kept in a TargetError (the full text stays on ``__cause__``).
_MESSAGE_LINES = 8


def run_step(target_name: str, step: str, progress: Progress | None, run: Callable[[], _T]) -> _T:
    if progress is not None:
        progress(step)
    try:
        return run()
    except QcError:
        raise
    except Exception as err:  # TVM raises many unrelated types; none may escape raw
        message = "\n".join(str(err).strip().splitlines()[:_MESSAGE_LINES])
        raise TargetError(
            f"target {target_name!r}: step {step!r} failed: {type(err).__name__}: {message}"
        ) from err


#: TIR op pattern "opaque": FuseOps never groups such a function with its neighbours.
_OPAQUE = 8


@tvm.transform.module_pass(opt_level=0, name="qc_mark_kernels")
def _mark_kernels(module: tvm.IRModule, _context) -> tvm.IRModule:
    """Every PrimFunc already in the module is a target's hand-written kernel: keep it whole, unscheduled."""
    for gv, func in list(module.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            module[gv] = func.with_attrs({"op_pattern": _OPAQUE, KERNEL_ATTR: True})
    return module


def fusion_passes() -> list[tvm.transform.Pass]:
    """The first half of :func:`cpu_pipeline`: the target's kernels marked, legalization and fusion. Its
    result's unmarked PrimFuncs are the workloads a tuning database is keyed by."""
    transform = tvm.relax.transform
    return [
        _mark_kernels,
        tvm.relax.backend.DispatchSampling(),
        tvm.relax.backend.DispatchSortScan(),
        transform.DeadCodeElimination(),  # e.g. the widening Casts a kernel reads around
        transform.LegalizeOps(),
        transform.AnnotateTIROpPattern(),
        transform.FoldConstant(),
        transform.FuseOps(),
        transform.FuseTIR(),
    ]


def _apply_database(tuning_db: pathlib.Path, tvm_target: tvm.target.Target) -> tvm.transform.Pass:
    """MetaScheduleApplyDatabase, under the target it needs (the rest of the pipeline runs without one)."""

    @tvm.transform.module_pass(opt_level=0, name="qc_apply_tuning_db")
    def apply(module: tvm.IRModule, _context) -> tvm.IRModule:
        with tvm_target:
            return tvm.relax.transform.MetaScheduleApplyDatabase(work_dir=str(tuning_db))(module)

    return apply


def cpu_pipeline(tuning_db: pathlib.Path | None = None, tvm_target: tvm.target.Target | None = None
                 ) -> tvm.transform.Pass:  # fmt: skip
    """``tvm.compile``'s CPU lowering plus operator fusion (which its default CPU build leaves out).

    After legalization, chains of elementwise and injective ops, and a legalized reduction or convolution
    with the elementwise ops after it, become one TIR function each (FuseOps + FuseTIR), so their
    intermediates never reach memory; each such function then gets its tuned schedule from ``tuning_db``
    (a MetaSchedule JSON database of ``tvm_target``, see :mod:`~qcompiler.targets.tuning`) when that holds
    one, else the
    default parallel/vector schedule of :mod:`~qcompiler.targets.cpu_schedule`. The target's own kernels
    (call_tir functions present before legalization) stay opaque and as written. No step changes an
    integer operation, so the result stays bit-exact (and tuned schedules are checked before they are kept).
    """
    transform = tvm.relax.transform
    tuned = [_apply_database(tuning_db, tvm_target)] if tuning_db else []
    return tvm.transform.Sequential(
        [
            *fusion_passes(),
            *tuned,
            schedule_module,
            transform.RewriteDataflowReshape(),
            transform.ToNonDataflow(),
            transform.RemovePurityChecking(),
            transform.CallTIRRewrite(),
            transform.StaticPlanBlockMemory(),
            transform.LowerAllocTensor(),
            transform.KillAfterLastUse(),
            transform.LowerRuntimeBuiltin(),
            transform.ComputePrimValue(),
            transform.VMShapeLower(),
            transform.AttachGlobalSymbol(),
        ],
        name="qc_cpu_build",
    )


def build_relax_library(
    target_name: str,
    region: onnx.ModelProto,
    tvm_target: tvm.target.Target,
    library: pathlib.Path,
    progress: Progress | None = None,
    kernels: Mapping | None = None,
    tuning_db: pathlib.Path | None = None,
    **export_options: Any,
) -> dict[str, Any]:
    """lower (with the target's ``kernels``) -> ``tvm.compile`` (:func:`cpu_pipeline`) -> ``export_library``
    -> refuse a float instruction in its kernels (:func:`~qcompiler.targets._float_free.check_float_free`, for
    the architecture of the target's triple); return the library info.

    The info dict holds the library file name, the TVM target, build seconds, the input/output signature
    that :class:`~qcompiler.targets.CompiledModule` checks calls against, and with ``tuning_db`` the
    database's path, sha256 and record count.
    """
    start = time.perf_counter()
    inputs, outputs = run_step(target_name, "signature", progress, lambda: region_signature(region))
    module = run_step(target_name, "lower", progress, lambda: lower(region, kernels))
    executable = run_step(
        target_name, "build", progress,
        lambda: tvm.compile(module, target=tvm_target, relax_pipeline=cpu_pipeline(tuning_db, tvm_target)),
    )  # fmt: skip
    library.parent.mkdir(parents=True, exist_ok=True)
    run_step(target_name, "export", progress, lambda: executable.export_library(str(library), **export_options))
    check_float_free(library, str(tvm_target.attrs["mtriple"]).split("-")[0])
    info = {
        "library": library.name,
        "tvm_target": str(tvm_target),
        "seconds": round(time.perf_counter() - start, 3),
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
    }
    return {**info, "tuning_db": database_info(tuning_db)} if tuning_db else info
