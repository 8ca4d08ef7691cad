"""The CUDA lowering pipeline: legalize, fuse, schedule every kernel with dlight, then the VM lowering passes.

Why not ``tvm.compile``'s default CUDA pipeline: it is the same passes, but dlight's ``Matmul`` rule sends any
int8 x int8 -> int32 matmul (convolutions included, as dlight reindexes them into matmuls) whose dimensions all
exceed 64 to ``MatmulInt8Tensorization`` (wmma), whose lowering is broken in TVM 0.27: ``InternalError: Check
failed: (it != fragment_info_.end())`` on sm_75/80/90 (shared tvm-notes section 6). :func:`no_int8_wmma`
disables that branch for the duration of one schedule, so dlight uses its SIMT matmul schedule; nvcc then
turns the int8 multiply-adds into ``dp4a``. And where a dlight rule raises on a kernel, :func:`schedule`
moves on to the next rule instead of aborting (see there).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.s_tir import dlight

__all__ = ["Declined", "build_pipeline", "no_int8_wmma", "schedule", "unscheduled_kernels"]


@contextlib.contextmanager
def no_int8_wmma() -> Iterator[None]:
    """Within the block, dlight's GPU ``Matmul`` rule never picks its tensor-core (wmma) schedules.

    dlight gates the tensor-core branch on ``check_sm_version(arch) >= 70``, a module-level function of
    ``tvm.s_tir.dlight.gpu.matmul``; reporting version 0 skips the branch (int8 and fp16 alike: qc emits no
    fp16). The original function is restored on exit, also when the schedule raises. Not thread-safe: two
    threads scheduling at once would see each other's patch, which is harmless (both want it) but would
    restore in the wrong order; qc compiles one model per process at a time.
    """
    matmul = dlight.gpu.matmul
    original = matmul.check_sm_version
    matmul.check_sm_version = lambda arch: 0
    try:
        yield
    finally:
        matmul.check_sm_version = original


def _rules() -> list[dlight.ScheduleRule]:
    """dlight's default GPU rules, most specific first; ``Fallback`` binds the spatial loops of anything."""
    return [
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    ]


@dataclasses.dataclass(frozen=True)
class Declined:
    """A schedule rule that raised on a kernel (the next rule scheduled it instead)."""

    kernel: str
    rule: str
    error: str


def schedule(module: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, list[Declined]]:
    """Legalize and fuse ``module`` into TIR kernels and give each a GPU schedule; also return the rules
    that raised on a kernel.

    This is dlight's ``ApplyDefaultSchedule`` with one difference: a rule that *raises* on a kernel is
    treated like one that declines it, and the next rule is tried. dlight's own pass aborts the whole build
    instead. Seen on EfficientNet-Lite0: ``Matmul`` asserts ("consumers of the cache-write stage that are not
    properly inlined") on a convolution whose fused epilogue ends in the ``pad`` of the next convolution;
    ``Fallback`` schedules it (one thread per output element). ``FoldConstant`` evaluates constant
    subexpressions on the host CPU (integer ops, bit-exact).
    """
    fuse = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ],
        name="qc_cuda_fuse",
    )
    declined: list[Declined] = []
    with target, no_int8_wmma():
        module = fuse(module)
        rules = _rules()
        for gv, func in list(module.functions_items()):
            if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
                scheduled = _first_schedule(gv.name_hint, func, target, rules, declined)
                if scheduled is not None:
                    module[gv] = scheduled.with_attr("tirx.is_scheduled", True)
    return module, declined


def _first_schedule(
    name: str, func: tirx.PrimFunc, target: tvm.target.Target, rules: list, declined: list[Declined]
) -> tirx.PrimFunc | None:
    for rule in rules:
        try:
            space = rule.apply(func, target, False)
        except Exception as err:  # dlight rules assert on shapes they mis-analyse; try the next rule
            declined.append(
                Declined(name, type(rule).__name__, f"{type(err).__name__}: {err}".splitlines()[0])
            )
            continue
        if space is not None:
            return (space[0] if isinstance(space, list) else space).mod["main"]
    return None


def build_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """The Relax passes ``tvm.compile`` runs on an already scheduled module (TVM's CUDA VM lowering)."""
    passes = cuda_pipeline.dataflow_lower_passes(target) + cuda_pipeline.finalize_passes(target)
    return tvm.transform.Sequential(passes, name="qc_cuda_build")


def _binds_threads(func: tirx.PrimFunc) -> bool:
    found = False

    def visit_for(loop: tirx.For) -> None:
        nonlocal found
        found = found or loop.kind == tirx.ForKind.THREAD_BINDING

    def visit_attr(attr: tirx.AttrStmt) -> None:
        nonlocal found
        found = found or attr.attr_key == "thread_extent"

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit_for), (tirx.AttrStmt, visit_attr)], order="post")
    return found


def unscheduled_kernels(module: tvm.IRModule) -> list[str]:
    """Names of the TIR functions that bind no GPU thread (``tvm.compile`` would fail "did not bind threads")."""
    return sorted(
        gv.name_hint
        for gv, func in module.functions_items()
        if isinstance(func, tirx.PrimFunc) and not _binds_threads(func)
    )
