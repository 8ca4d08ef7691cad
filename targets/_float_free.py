"""No floating point in the kernels of an exported x86-64 or aarch64 library, read from its disassembly.

**Which code is scanned.** ``objdump -d -j .text`` of the library, split at its symbols. TVM emits, per
PrimFunc ``f``, the packed entry ``__tvm_ffi_f`` and its body ``f_compute_``; parallel loops become private
lambdas without a symbol, which objdump prints inside the function before them (their parent). Every
function of ``.text`` is scanned except the *float helpers* (:data:`FLOAT_HELPER`: the fp16 conversions
``__truncsfhf2``/``__extendhfsf2`` that LLVM defines in every module, any compiler-rt/libgcc float routine,
libm); a direct call or jump into one is a finding instead. Scanning everything else also covers TVM's
``__tvm_set_raised_<n>`` error paths and the C runtime's startup stubs (``frame_dummy`` ...): integer code,
cheaper to scan than to list, and nothing TVM adds later can slip through unnamed.

**Which instructions are float.** Those that compute on a float value: arithmetic, comparison, rounding,
conversion to, from or between float formats. Pure data movement and bitwise logic are not, even in their
float-domain spelling: they copy bits without rounding, and compilers pick them for integer data too.

* x86-64 (AT&T mnemonics, prefixes and a leading ``v`` stripped): ``f*`` (x87, and the ``vfmadd*``,
  ``vfnmsub*``, ``vfixupimm*``, ``vfpclass*`` families), anything with ``cvt`` (integer widening is
  ``pmovsx``/``cltq``, never ``cvt``), and arithmetic/compare/math ops on an ``ss sd ps pd sh ph bf16``
  operand type (``addps``, ``vmaxsd``, ``vcmpltps``, ``vsqrtph``, ``vdpbf16ps``, ``vrndscaleps``...), plus
  AMX ``tdp*ps``/``tcmm*ps``. Not float: every ``vp*`` integer op (``vpdpbusd``, ``vpmaddubsw``, ``vpmaddwd``,
  ``vpmulld``, ``vpaddd``, ``vpermps``), and moves, broadcasts, shuffles, blends, gathers and bitwise ops
  (``vmovups``, ``vmovaps``, ``vbroadcastss``, ``vshufps``, ``vblendvps``, ``vxorps``, ``vandps``,
  ``vmovmskps``, ``vgatherdps``, ``vinsertf128``).
* aarch64: every ``f*`` opcode except ``fmov`` (and its SVE aliases ``fdup``/``fcpy``), ``scvtf``/
  ``ucvtf``, and every ``bf*`` opcode except the integer bitfield moves ``bfi``/``bfxil``/``bfc``/``bfm``
  (so ``bfcvt``, ``bfdot``, ``bfmmla``, ``bfmlal*``, SME's ``bfmopa`` and later ones are float). ``fmov``
  copies bits between general and SIMD registers (LLVM reads an integer ``umaxv s0`` result with
  ``fmov w1, s0``) or materializes a splat whose bits happen to encode a float immediate. Lane and
  register names (``s0``, ``d1``, ``v0.4s``) do not decide: integer SIMD uses the same ones
  (``add v0.4s``, ``umaxv s0, v0.4s``); A64 keeps float and integer opcodes apart.
* both: an instruction objdump cannot decode (x86 ``(bad)``, aarch64 ``.inst``) is a finding too, since it
  cannot be shown to be integer (an objdump older than the CPU's ISA extension prints new ones that way).

**What is not seen.** Code outside the library (the Relax VM's builtins in libtvm_runtime, the C++ runner)
and the targets of indirect calls (``call *%rax``, ``blr x8``: TVM calls the runtime's parallel launcher and
error setters through pointers). Direct calls are resolved by symbol, including versioned ones through the
GOT (``call *0x2fe2(%rip) # <expf@GLIBC_2.2.5>``). Cortex-M and CUDA are out of scope: Cortex-M builds C
with arm-none-eabi-gcc (Thumb code, not scanned here), CUDA checks its own CUDA C and PTX
(:mod:`qcompiler.targets.cuda.check`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
from typing import NamedTuple

from qcompiler.errors import TargetError
from qcompiler.targets._cross import require_tool

__all__ = [
    "FLOAT_HELPER",
    "FloatInstruction",
    "check_float_free",
    "disassemble",
    "float_instructions",
    "kernel_functions",
]


class FloatInstruction(NamedTuple):
    """One finding (a float or undecodable instruction, a call of a float helper): kernel, address, text."""

    kernel: str
    address: str
    instruction: str


#: float routines of compiler-rt/libgcc (``__addsf3``, ``__floatsidf``, ``__truncsfhf2``: a machine-mode
#: letter before ``f``; complex ``__mulsc3``) and libm, matched against a whole symbol without its ``@plt`` or
#: ``@GLIBC_*``. No integer routine matches (``__divdi3``, ``__ffsti2``, ``__aarch64_ldadd4_acq``), nor does
#: any TVM kernel symbol (``__tvm_ffi_round``, ``round_compute_``): a match is never scanned.
FLOAT_HELPER = re.compile(
    r"__[a-z]+?(?:[sdhtxb]f[a-z]*\d?|[sdxt]c3)"
    r"|(?:exp|exp2|exp10|expm1|log|log2|log10|log1p|pow|sqrt|cbrt|sin|cos|tan|sincos|sinh|cosh|tanh|asin|acos"
    r"|atan|atan2|asinh|acosh|atanh|erf|erfc|floor|ceil|round|lround|rint|lrint|nearbyint|trunc|fabs|fmod"
    r"|fmin|fmax|fma|hypot|ldexp|frexp|modf|copysign|nextafter|remainder|scalbn)[fl]?"
)


@dataclasses.dataclass(frozen=True)
class _Arch:
    """How to disassemble one architecture and read its mnemonics (each pattern must match a whole word)."""

    objdump: str
    fix: str
    prefix: re.Pattern
    float_op: re.Pattern
    undecodable: re.Pattern
    branch: re.Pattern


_X86_FLOAT_OPS = (
    r"v?(?:f\w*|\w*cvt\w*|t(?:dp|cmm)\w*ps"
    r"|(?:add|sub|mul|div|sqrt|rsqrt(?:14|28)?|rcp(?:14|28)?|min|max|minmax|round|rndscale|cmp\w*|u?comi"
    r"|hadd|hsub|addsub|dp\w*|getexp|getmant|scalef|range|reduce|exp2)(?:ss|sd|ps|pd|sh|ph|bf16))"
)
_ARCHS = {
    "x86_64": _Arch(
        objdump="objdump",
        fix="apt-get install binutils",
        prefix=re.compile(r"data16|data32|addr32|[cdefgs]s|lock|rep\w*|notrack|bnd|rex\S*|\{\w+\}"),
        float_op=re.compile(_X86_FLOAT_OPS),
        undecodable=re.compile(r"\(bad\)"),
        branch=re.compile(r"call\w*|j\w+"),
    ),
    "aarch64": _Arch(
        objdump="aarch64-linux-gnu-objdump",
        fix="apt-get install binutils-aarch64-linux-gnu (comes with g++-aarch64-linux-gnu)",
        prefix=re.compile(r"(?!)"),  # A64 has no prefixes
        float_op=re.compile(r"(?!fmov$|fdup$|fcpy$)f\w+|[su]cvtf|(?!bfi$|bfxil$|bfc$|bfm$)bf\w+"),
        undecodable=re.compile(r"\.inst"),
        branch=re.compile(r"bl?|b\.\w+|cbn?z|tbn?z"),
    ),
}

#: a function header (``0000000000002110 <__tvm_ffi_cast21>:``) or an instruction (``  2110:\tpush ...``).
_LINE = re.compile(
    r"^[0-9a-f]+ <(?P<symbol>[^>]+)>:$|^\s*(?P<address>[0-9a-f]+):\t(?P<text>.*)$", re.MULTILINE
)
#: the symbol an instruction targets exactly (no ``+offset``), without its ``@plt`` or symbol version:
#: ``call 2e540 <__truncsfhf2>``, ``jmp 1030 <expf@plt>``, ``call *0x2fe2(%rip) # 3fd8 <expf@GLIBC_2.2.5>``.
_TARGET = re.compile(r"<([^>+@-]+)(?:@[^>+-]*)?>")
#: how many findings a refusal lists.
_SHOWN = 10


def _arch(arch: str) -> _Arch:
    if arch not in _ARCHS:
        raise TargetError(f"no float check for architecture {arch!r}; known: {', '.join(_ARCHS)}")
    return _ARCHS[arch]


def disassemble(library: pathlib.Path, arch: str) -> str:
    """``objdump -d --no-show-raw-insn -j .text`` of ``library``, as :func:`float_instructions` reads it."""
    spec = _arch(arch)
    objdump = require_tool(spec.objdump, f"it disassembles {arch} libraries for the float check: {spec.fix}")
    done = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-j", ".text", str(library)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise TargetError(f"{spec.objdump} -d {library} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def kernel_functions(disassembly: str) -> dict[str, list[tuple[str, str]]]:
    """Function symbol -> its ``(address, instruction)`` pairs, for every function but the float helpers
    (code before the first symbol, if any, under ``.text``)."""
    functions: dict[str, list[tuple[str, str]]] = {".text": []}
    current = functions[".text"]
    for match in _LINE.finditer(disassembly):
        if match["symbol"] is not None:
            current = functions.setdefault(match["symbol"], [])
        else:
            current.append((match["address"], match["text"].replace("\t", " ")))
    return {name: body for name, body in functions.items() if body and not FLOAT_HELPER.fullmatch(name)}


def _mnemonic(instruction: str, spec: _Arch) -> str:
    words = instruction.split()
    while words and spec.prefix.fullmatch(words[0]):
        words.pop(0)
    return words[0] if words else ""


def _is_float(instruction: str, spec: _Arch) -> bool:
    mnemonic = _mnemonic(instruction, spec)
    if spec.float_op.fullmatch(mnemonic) or spec.undecodable.fullmatch(mnemonic):
        return True
    target = _TARGET.search(instruction)
    return bool(target and spec.branch.fullmatch(mnemonic) and FLOAT_HELPER.fullmatch(target[1]))


def float_instructions(disassembly: str, arch: str) -> list[FloatInstruction]:
    """Every float (or undecodable) instruction, and every branch to a float helper, in the kernels of
    ``disassembly`` (``arch``: "x86_64" or "aarch64"), in address order per function; the kernel is named
    after its PrimFunc."""
    spec = _arch(arch)
    return [
        FloatInstruction(re.sub(r"^__tvm_ffi_|_compute_$", "", name), address, text)
        for name, body in kernel_functions(disassembly).items()
        for address, text in body
        if _is_float(text, spec)
    ]


def check_float_free(library: pathlib.Path, arch: str) -> None:
    """Raise :class:`TargetError` naming the kernels of ``library`` that use floating point."""
    found = float_instructions(disassemble(library, arch), arch)
    if found:
        names = sorted({f.kernel for f in found})
        rows = "\n  ".join(f"{f.kernel} @{f.address}: {f.instruction}" for f in found[:_SHOWN])
        more = f"\n  ... and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        raise TargetError(
            f"{arch}: {len(found)} floating-point instruction(s) in kernel(s) {', '.join(names)} of "
            f"{library}; qc promises integer-only kernels, so it refuses this library. This is a qc bug, not "
            "a problem of the model: report it with the model, the target and its options, and this message "
            f"(`objdump -d` of the library shows each address in context):\n  {rows}{more}"
        )
