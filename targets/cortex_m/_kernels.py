"""Relax -> fused TIR kernels -> one C file, through TVM's "c" target.

The Relax module from :func:`qcompiler.targets.relax_lowering.lower` is legalized and fused with the same
passes as TVM's CPU pipeline, so ``main`` becomes a sequence of ``call_tir`` on PrimFuncs (reshapes become
``R.reshape`` views). Every PrimFunc is then scheduled only by inlining its element-wise blocks (which keeps
the arithmetic and removes full-size intermediates from RAM) and compiled to C. Each kernel is exported as
``int32_t __tvm_ffi_<name>(void* self, void* args, int32_t n, void* ret)``.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic.pipeline import legalize_passes
from tvm.s_tir import Schedule
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.schedule import ScheduleError

from qcompiler.errors import TargetError
from qcompiler.targets.cortex_m._simd import legalizations

__all__ = ["C_TARGET", "KernelSource", "fuse", "kernel_source"]

#: TVM's C source target; the kernels are plain C99 with no float and no OS calls.
C_TARGET = tvm.target.Target({"kind": "c"})

#: alignment of every workspace allocation inside a kernel (matches the driver's bump allocator).
WORKSPACE_ALIGN = 16

_DEFINITION = re.compile(r"^TVM_DLL int32_t __tvm_ffi_(\w+)\(void\* self_handle[^{;]*\{$", re.MULTILINE)
_ALLOC_CALL = re.compile(r"TVMBackendAllocWorkspace\(")
_ALLOC_SIZE = re.compile(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL, ")


def fuse(module: tvm.IRModule, simd: bool = False) -> tvm.IRModule:
    """Legalize and fuse as TVM's CPU pipeline does; reshapes become views; every PrimFunc is inlined.

    With ``simd``, integer convolutions and constant-weight matrix products become calls of the SIMD
    kernels of :mod:`~qcompiler.targets.cortex_m._simd` (opaque to fusion: their int32 result feeds the
    fused requantization kernel).
    """
    legalize, *rest = legalize_passes(C_TARGET)
    if simd:
        legalize = relax.transform.LegalizeOps(customize_legalize_map=legalizations())
    with C_TARGET:
        passes = [
            legalize,
            *rest,
            relax.transform.RewriteDataflowReshape(),
            relax.transform.DeadCodeElimination(),
        ]
        module = tvm.transform.Sequential(passes)(module)
    for gvar, func in list(module.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            module[gvar] = _inline_elementwise(func)
    return module


#: blocks writing fewer elements are not inlined: their intermediates cost little RAM, and the long per-row
#: chains of an integer LayerNorm (Newton steps on [rows, 1]) would take minutes of failed inlining trials.
MIN_INLINED_ELEMENTS = 64


def _inline_elementwise(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Inline every block that TIR can inline (pads, casts, requantize steps); reductions stay.

    Only blocks writing at least :data:`MIN_INLINED_ELEMENTS` elements are tried. Sweeps them from last to
    first (a producer is inlined into consumers already final), then reverse-inlines forward, and repeats
    while a sweep inlines anything: linear in the number of blocks for element-wise chains, where retrying
    from the first block after every success (dlight's ``try_inline``) is quadratic, and each failed trial
    renders the whole function into its error message.
    """
    sch = Schedule(func)
    blocks = normalize_prim_func(sch)
    if blocks is None:
        return sch.mod["main"]
    remaining = [b.block_rv for b in blocks if _written_elements(sch, b.block_rv) >= MIN_INLINED_ELEMENTS]
    progress = True
    while progress:
        progress = False
        for inline, order in ((sch.compute_inline, reversed), (sch.reverse_compute_inline, list)):
            for block in order(list(remaining)):
                try:
                    inline(block)
                except (ScheduleError, tvm.error.InternalError):  # not inlinable (TVM raises either)
                    continue
                remaining.remove(block)
                progress = True
    return sch.mod["main"]


def _written_elements(sch: Schedule, block) -> int:
    """Elements a block writes: the product of its iteration domain (the block is element-wise here)."""
    size = 1
    for iter_var in sch.get(block).iter_vars:
        size *= int(iter_var.dom.extent)
    return size


class KernelSource:
    """The C source of all kernels, and the workspace bytes each one allocates while it runs."""

    def __init__(self, text: str, workspace: dict[str, int]):
        self.text = text
        self.workspace = workspace


def kernel_source(module: tvm.IRModule, arg_checks: bool = True) -> KernelSource:
    """Compile every PrimFunc of ``module`` (after :func:`fuse`) to C.

    With ``arg_checks`` each kernel checks the dtype, shape, strides and device of every argument and
    reports a mismatch through TVMFFIErrorSetRaisedFromCStrParts; the messages are most of the code size.
    """
    prims = {
        gvar: func.with_attr("global_symbol", gvar.name_hint)
        for gvar, func in module.functions.items()
        if isinstance(func, tirx.PrimFunc)
    }
    with tvm.transform.PassContext(config={"tirx.disable_assert": not arg_checks}):
        built = tvm.compile(tvm.IRModule(prims), target=C_TARGET)
    runtime = built.mod if hasattr(built, "mod") else built
    text = runtime.inspect_source("c")
    return KernelSource(text, _workspace_bytes(text, [g.name_hint for g in prims]))


def _workspace_bytes(text: str, names: list[str]) -> dict[str, int]:
    """Bytes each kernel takes from TVMBackendAllocWorkspace (LIFO, so the sum of its aligned requests).

    Every request must have a constant size: the driver places the workspace in the static arena.
    """
    if len(_ALLOC_CALL.findall(text)) != len(_ALLOC_SIZE.findall(text)):
        raise TargetError("cortex-m: a TVM kernel allocates a workspace of non-constant size")
    starts = [(m.start(), m.group(1)) for m in _DEFINITION.finditer(text)]
    bounds = [s for s, _ in starts[1:]] + [len(text)]
    sizes = {name: 0 for name in names}
    for (start, name), end in zip(starts, bounds, strict=True):
        sizes[name] = sum(_align(int(n)) for n in _ALLOC_SIZE.findall(text, start, end))
    missing = sorted(set(names) - {name for _, name in starts})
    if missing:
        raise TargetError(f"cortex-m: TVM emitted no C function for kernel(s) {', '.join(missing)}")
    return sizes


def _align(n: int, to: int = WORKSPACE_ALIGN) -> int:
    return -(-n // to) * to
