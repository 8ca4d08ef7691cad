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
from tvm.s_tir.dlight import try_inline
from tvm.s_tir.dlight.analysis import normalize_prim_func

from qcompiler.errors import TargetError

__all__ = ["C_TARGET", "KernelSource", "fuse", "kernel_source"]

#: TVM's C source target; the kernels are plain C99 with no float and no OS calls.
C_TARGET = tvm.target.Target({"kind": "c"})

#: alignment of every workspace allocation inside a kernel (matches the driver's bump allocator).
WORKSPACE_ALIGN = 16

_DEFINITION = re.compile(r"^TVM_DLL int32_t __tvm_ffi_(\w+)\(void\* self_handle[^{;]*\{$", re.MULTILINE)
_ALLOC_CALL = re.compile(r"TVMBackendAllocWorkspace\(")
_ALLOC_SIZE = re.compile(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL, ")


def fuse(module: tvm.IRModule) -> tvm.IRModule:
    """Legalize and fuse as TVM's CPU pipeline does; reshapes become views; every PrimFunc is inlined."""
    with C_TARGET:
        passes = [
            *legalize_passes(C_TARGET),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.DeadCodeElimination(),
        ]
        module = tvm.transform.Sequential(passes)(module)
    for gvar, func in list(module.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            module[gvar] = _inline_elementwise(func)
    return module


def _inline_elementwise(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Inline every block that TIR can inline (pads, casts, requantize steps); reductions stay."""
    sch = Schedule(func)
    blocks = normalize_prim_func(sch)
    if blocks is not None:
        try_inline(sch, blocks)
    return sch.mod["main"]


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
