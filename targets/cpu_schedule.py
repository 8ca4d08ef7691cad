"""Default CPU schedules for the TIR functions TVM legalizes (every function but a target's own kernels).

TVM's CPU build runs legalized and fused functions as plain serial loop nests. :func:`schedule_default`
gives each one the schedule every such function needs, without search:

* the intermediate blocks of a fused function are inlined into their elementwise consumers (no buffer
  between them; a reduction keeps its producer, which it would otherwise recompute at every tap);
* each remaining block's leading spatial loops run in parallel when there is enough work to pay for the
  threads, and a spatial innermost loop runs ``_VECTOR`` iterations at a time as one vector (when they
  divide evenly and the block divides by nothing computed at run time).

Schedules reorder and regroup loop iterations and never change an operation, so results stay bit-exact.
A primitive that does not apply (TVM refuses with a ScheduleError) leaves that block as it was.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx

__all__ = ["KERNEL_ATTR", "TUNED_ATTR", "schedule_default"]

#: function attribute marking a target's hand-scheduled kernel (left alone here).
KERNEL_ATTR = "qc.kernel"
#: function attribute MetaSchedule sets on a function whose schedule came from a tuning database.
TUNED_ATTR = "tirx.is_scheduled"
#: loop iterations (all loops of a block) below which a parallel loop costs more than it saves.
_PARALLEL_GRAIN = 4096
#: parallel iterations wanted, enough to balance the threads.
_CHUNKS = 64
#: lanes of the innermost vector loop.
_VECTOR = 16


_DIVISIONS = (tirx.Div, tirx.FloorDiv, tirx.Mod, tirx.FloorMod)


def _divides_at_run_time(block) -> bool:
    """Whether the block divides by a non-constant (x86 has no vector integer division: LLVM would
    scalarize a vectorized loop lane by lane, slower than the plain loop)."""
    found = []

    def visit(node) -> None:
        if not isinstance(node.b, tirx.IntImm):
            found.append(node)

    tvm_ffi.structural_walk(block.body, [(kind, visit) for kind in _DIVISIONS], order="post")
    return bool(found)


def _reduces(sch: s_tir.Schedule, block) -> bool:
    return any(v.iter_type != tirx.IterVar.DataPar for v in sch.get(block).iter_vars)


def _schedule_block(sch: s_tir.Schedule, block) -> None:
    """Vectorize the innermost loop (spatial, a multiple of ``_VECTOR``, no run-time division); run the
    fewest leading spatial loops that give ``_CHUNKS`` iterations in parallel (leading loops only, so that
    no index is recomputed by division in the inner loops)."""
    iter_vars = sch.get(block).iter_vars
    loops = list(sch.get_loops(block))
    if len(loops) != len(iter_vars):
        return
    spatial = next((i for i, v in enumerate(iter_vars) if v.iter_type != tirx.IterVar.DataPar), len(iter_vars))
    if spatial == 0:
        return
    extents = [int(sch.get(loop).extent) for loop in loops[:spatial]]
    work = math.prod(int(sch.get(loop).extent) for loop in loops)
    if spatial == len(loops) and extents[-1] % _VECTOR == 0 and not _divides_at_run_time(sch.get(block)):
        loops[spatial - 1], inner = sch.split(loops[spatial - 1], [None, _VECTOR])
        sch.vectorize(inner)
        extents[-1] //= _VECTOR
    if work < _PARALLEL_GRAIN:
        return
    prefix = next((i + 1 for i in range(spatial) if math.prod(extents[: i + 1]) >= _CHUNKS), spatial)
    if math.prod(extents[:prefix]) > 1:
        sch.parallel(sch.fuse(*loops[:prefix]) if prefix > 1 else loops[0])


def schedule_default(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with intermediates inlined and its loops parallelized and vectorized (see the module doc)."""
    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - no block structure: nothing to schedule
        return func
    for block in sch.get_child_blocks(root):
        if any(_reduces(sch, consumer) for consumer in sch.get_consumers(block)):
            continue  # e.g. a pad inlined into a pooling window would test bounds at every tap
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass
    for block in sch.get_child_blocks(root):
        state = sch.copy()
        try:
            _schedule_block(sch, block)
        except s_tir.ScheduleError:
            sch = state
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="qc_schedule_default")
def schedule_module(module: tvm.IRModule, _context) -> tvm.IRModule:
    """:func:`schedule_default` on every PrimFunc not marked :data:`KERNEL_ATTR` and not already scheduled
    (``tirx.is_scheduled``: a tuned schedule applied from a database)."""
    for gv, func in list(module.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not any(func.attrs.get(a, False) for a in (KERNEL_ATTR, TUNED_ATTR)):
            module[gv] = schedule_default(func)
    return module
