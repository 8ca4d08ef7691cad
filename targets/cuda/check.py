"""Inspect what the CUDA target generates: the CUDA C source, its PTX, and any floating point in either.

qc's promise is integer-only code. TVM writes CUDA C; nvcc (or NVRTC, at load time on a GPU machine) turns it
into PTX. Both levels are scanned here:

* :func:`float_instructions` scans CUDA C for float types, float intrinsics, float math calls and float
  literals (comments and string literals are ignored).
* :func:`float_ptx_instructions` scans PTX for float-typed instructions and registers (``.f16 .f32 .f64
  .bf16`` ..., which covers ``cvt`` to or from a float type) and float immediates (``0f3F800000``).

Neither level sees SASS: ptxas may still implement an integer division with the float reciprocal unit, which
is exact by construction and not a float *result*.
"""

from __future__ import annotations

import collections
import pathlib
import re
import shutil
from typing import Any, NamedTuple

import tvm

from qcompiler.errors import TargetError

__all__ = [
    "FloatUse",
    "compile_ptx",
    "cuda_source",
    "dot_product_instructions",
    "float_instructions",
    "float_ptx_instructions",
    "kernel_sources",
    "nvcc_available",
    "ptx_opcode_counts",
]

#: file name of the CUDA C source written next to the library.
SOURCE_NAME = "model.cu"
#: file name of the PTX written next to the library when nvcc checked it.
PTX_NAME = "model.ptx"


class FloatUse(NamedTuple):
    """One floating-point token: 1-based line number, the token, and the stripped line."""

    line: int
    token: str
    text: str


# ---- CUDA C ------------------------------------------------------------------------------------------------

_C_FLOAT_PATTERNS = (
    # types, including vector types (float4) and the fp16/bf16/fp8 types of cuda_fp16.h etc.
    r"\b(?:float|double)[1-4]?\b",
    r"\b(?:__)?half2?\b",
    r"\b(?:__)?nv_bfloat162?\b|\bbfloat16(?:_t)?\b|\b__nv_fp8\w*",
    # conversion and arithmetic intrinsics: __int2float_rn, __float2int_rz, __half2float, __fmul_rn, ...
    r"\b__\w*(?:float|half|double|bfloat)\w*\b",
    r"\b__f(?:add|sub|mul|div|ma|rcp|sqrt)\w*\b|\b__d(?:add|sub|mul|div)\w*\b",
    # math library calls (float and double overloads)
    r"\b(?:sqrt|rsqrt|exp|exp2|expm1|log|log2|log10|pow|sin|cos|tan|tanh|erf|fabs|floor|ceil|round|rint|trunc"
    r"|fmod|fmin|fmax|fma)f?\s*(?=\()",
    # float literals: 1.0, .5, 2.f, 1e-3, 0x1p+3
    r"(?<![\w.])(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fFlL]?(?![\w.])",
    r"(?<![\w.])\d+[eE][+-]?\d+[fFlL]?(?![\w.])",
    r"\b0[xX][0-9a-fA-F.]+[pP][+-]?\d+[fFlL]?\b",
)
_C_FLOAT = re.compile("|".join(f"(?:{p})" for p in _C_FLOAT_PATTERNS))
_C_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.DOTALL)


def _blank(match: re.Match) -> str:
    """Replace a comment or string with spaces, keeping its newlines (so line numbers stay right)."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _preprocessor_free(line: str) -> bool:
    return not line.lstrip().startswith("#")


def float_instructions(source: str) -> list[FloatUse]:
    """Every floating-point token in CUDA C ``source``, in order (empty for integer-only code).

    Preprocessor lines are skipped (``#if __CUDACC_VER_MAJOR__ >= 11.4`` style conditions are not code).
    """
    code = _C_COMMENT_OR_STRING.sub(_blank, source)
    found = []
    for number, (line, original) in enumerate(zip(code.splitlines(), source.splitlines(), strict=True), 1):
        if _preprocessor_free(line):
            found += [FloatUse(number, m.group(0).strip(), original.strip()) for m in _C_FLOAT.finditer(line)]
    return found


# ---- PTX ---------------------------------------------------------------------------------------------------

_PTX_FLOAT_TYPES = (
    r"f16x2|bf16x2|f16|bf16|tf32|f32|f64|e4m3x\d|e5m2x\d|e4m3|e5m2|e2m1x\d|e2m3x\d|e3m2x\d|ue8m0x\d"
)
_PTX_FLOAT = re.compile(
    rf"\.(?:{_PTX_FLOAT_TYPES})\b"  # type suffix of an instruction, a register or a parameter
    r"|\b0[fFdD][0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?\b"  # float immediates: 0f3F800000, 0d3FF0000000000000
)
_PTX_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
#: an instruction: optional predicate guard, then the opcode with its dotted modifiers.
_PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)\b", re.MULTILINE)
#: PTX statements that are not instructions (directives start with "." and are not matched anyway).
_PTX_NOT_INSTRUCTIONS = frozenset({"ret", "exit"})


def float_ptx_instructions(ptx: str) -> list[FloatUse]:
    """Every float-typed instruction, register, parameter or immediate in ``ptx``, in order."""
    code = _PTX_COMMENT.sub(_blank, ptx)
    found = []
    for number, (line, original) in enumerate(zip(code.splitlines(), ptx.splitlines(), strict=True), 1):
        found += [FloatUse(number, m.group(0), original.strip()) for m in _PTX_FLOAT.finditer(line)]
    return found


def ptx_opcode_counts(ptx: str) -> collections.Counter[str]:
    """How often each instruction (opcode with its modifiers, e.g. ``dp4a.s32.u32``) occurs in ``ptx``."""
    code = _PTX_COMMENT.sub(_blank, ptx)
    return collections.Counter(
        op for op in _PTX_INSTRUCTION.findall(code) if op.split(".")[0] not in _PTX_NOT_INSTRUCTIONS
    )


def dot_product_instructions(ptx: str) -> dict[str, int]:
    """Integer multiply-accumulate instructions in ``ptx`` by kind: ``dp4a``/``dp2a`` (4- and 2-way int8
    dot products), ``mad`` (integer multiply-add), ``mma`` (tensor core), each with its count (0 if absent).
    """
    counts = ptx_opcode_counts(ptx)
    kinds = {"dp4a": 0, "dp2a": 0, "mad": 0, "mma": 0}
    for op, count in counts.items():
        head, *types = op.split(".")
        if head == "mad" and not any(re.fullmatch(_PTX_FLOAT_TYPES, t) for t in types):
            kinds["mad"] += count
        elif head in ("dp4a", "dp2a"):
            kinds[head] += count
        elif head in ("mma", "wmma", "wgmma"):
            kinds["mma"] += count
    return kinds


# ---- getting the source and the PTX ------------------------------------------------------------------------


def _modules(module: Any) -> list[Any]:
    found, stack = [], [module]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(current.imports)
    return found


def _source_of(module: Any) -> str | None:
    for fmt in ("cuda", "cu"):
        try:
            text = module.inspect_source(fmt)
        except Exception:  # some module kinds refuse formats they do not hold
            continue
        if "__global__" in text:
            return text
    return None


def cuda_source(lib_or_path: Any) -> str:
    """The CUDA C that TVM generated for a build.

    ``lib_or_path``: a ``tvm.compile`` result or any runtime module holding a CUDA module among its imports,
    or a path: the build directory or artifact directory, the library (``model.so``) in it, or the ``.cu``
    file itself. The CUDA target writes :data:`SOURCE_NAME` next to the library; a library's own CUDA blob
    can only be read back through TVM's CUDA runtime, which needs a GPU.
    """
    if isinstance(lib_or_path, str | pathlib.Path):
        path = pathlib.Path(lib_or_path)
        if path.is_dir():
            path = path / SOURCE_NAME
        elif path.suffix != ".cu":
            path = path.with_name(SOURCE_NAME)
        if not path.is_file():
            raise TargetError(f"no CUDA source at {path}; compile the model for the cuda target again")
        return path.read_text()
    sources = kernel_sources(lib_or_path)
    if not sources:
        raise TargetError("the module holds no CUDA code (no import of kind 'cuda' with a source)")
    return "\n".join(sources)


def kernel_sources(module: Any) -> list[str]:
    """The CUDA C of every CUDA module imported by ``module`` (a ``tvm.compile`` result or runtime module);
    empty when the build has no kernels (a region of reshapes only, say)."""
    module = getattr(module, "mod", module)  # a relax Executable wraps its runtime module
    return [s for s in map(_source_of, _modules(module)) if s is not None]


def nvcc_available() -> bool:
    """Whether ``nvcc`` is on PATH (no GPU is needed to produce PTX)."""
    return shutil.which("nvcc") is not None


def compile_ptx(source: str, arch: str) -> str:
    """Compile CUDA C ``source`` to PTX for ``arch`` (e.g. "sm_90") with nvcc, as TVM's nvcc JIT mode would.

    Uses ``tvm.support.nvcc.compile_cuda`` (same flags as ``TVM_CUDA_COMPILE_MODE=nvcc``). No GPU is needed.
    Raises :class:`TargetError` when nvcc is missing or fails (with nvcc's messages, not the whole source).
    """
    from tvm.support import nvcc

    if not nvcc_available():
        raise TargetError("nvcc is not on PATH; install the CUDA toolkit (CUDA 13) to produce PTX")
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):
            ptx = nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc")
    except RuntimeError as err:
        _, _, messages = str(err).rpartition("\nCompilation error:\n")
        lines = [line for line in messages.splitlines() if "error" in line.lower()] or messages.splitlines()
        raise TargetError(
            f"nvcc failed to compile the CUDA source for {arch}:\n" + "\n".join(lines[:20])
        ) from err
    return bytes(ptx).decode()
