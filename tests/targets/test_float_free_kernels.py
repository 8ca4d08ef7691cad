"""x86-64 and aarch64 kernels hold no floating point: the disassembly scanner on hand-written snippets, on
real float kernels built by TVM (refused by the build too), and on the compiled tiny CNN."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tvm
from targets_testkit import node, region
from tvm import relax, s_tir, te

import qcompiler
from qcompiler.errors import TargetError
from qcompiler.targets import _cross as cross
from qcompiler.targets import get_target
from qcompiler.targets._float_free import (
    FLOAT_HELPER,
    check_float_free,
    disassemble,
    float_instructions,
    kernel_functions,
)
from tests.e2e.zoo import build_tiny_cnn

#: target name -> (options, architecture, export options, the float multiply-add LLVM emits there).
TARGETS = {
    "x86": ({"mcpu": "haswell"}, "x86_64", {}, "vfmadd"),
    "aarch64": ({}, "aarch64", {"cc": "aarch64-linux-gnu-g++"}, "fmla"),
}
OBJDUMPS = {"x86": "objdump", "aarch64": "aarch64-linux-gnu-objdump"}


def require_tools(name: str) -> None:
    """Skip (a failure under CI=true, see tests/conftest.py) without the target's objdump or compiler."""
    tools = [OBJDUMPS[name], TARGETS[name][2].get("cc", "g++")]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (.ci/setup installs them)")


def disassembly(function: str, *instructions: str) -> str:
    """``objdump -d --no-show-raw-insn`` text of one function, its instructions 4 bytes apart from 0x1000."""
    lines = [f"{0x1000 + 4 * i:x}:\t{text}" for i, text in enumerate(instructions)]
    return f"\n0000000000001000 <{function}>:\n" + "\n".join(f"   {line}" for line in lines) + "\n"


# ---- the instruction rule ----------------------------------------------------------------------------------

X86_FLOAT = [
    "vfmadd231ps %zmm1,%zmm2,%zmm0", "addss %xmm1,%xmm0", "vmulps %ymm1,%ymm2,%ymm0",
    "vdivsd %xmm1,%xmm2,%xmm0", "vsqrtps %ymm1,%ymm0", "cvtsi2ss %eax,%xmm0", "vcvtdq2ps %zmm1,%zmm0",
    "cvttss2si %xmm0,%eax", "vcvtps2ph $0x4,%ymm0,%xmm1", "vmaxps %ymm1,%ymm2,%ymm0",
    "vminsd %xmm1,%xmm2,%xmm0", "vcmpltps %ymm1,%ymm2,%ymm0", "ucomiss %xmm1,%xmm0",
    "vroundps $0x1,%ymm1,%ymm0", "vrndscaleps $0x0,%zmm1,%zmm0", "vdpbf16ps %zmm1,%zmm2,%zmm0",
    "vfnmsub213sd %xmm1,%xmm2,%xmm0", "vrcp14ps %zmm1,%zmm0", "vhaddps %ymm1,%ymm2,%ymm0", "flds (%rax)",
    "fistpl (%rsp)", "vaddph %zmm1,%zmm2,%zmm0", "tdpbf16ps %tmm1,%tmm2,%tmm0", "(bad)",
]  # fmt: skip
X86_INTEGER = [
    "vpdpbusd %zmm1,%zmm2,%zmm0", "vpmaddubsw %ymm1,%ymm2,%ymm0", "vpmaddwd %ymm1,%ymm2,%ymm0",
    "vpaddd %zmm1,%zmm2,%zmm0", "vpmulld %ymm1,%ymm2,%ymm0", "vpmadd52luq %zmm1,%zmm2,%zmm0",
    "vpmaxsq %zmm1,%zmm2,%zmm0", "vpminsd %xmm1,%xmm2,%xmm0", "vpcmpeqq %zmm1,%zmm2,%k1",
    "vpermps %ymm1,%ymm2,%ymm0", "vmovups %zmm0,(%rdi)", "vmovaps 0x40(%rsp),%xmm0",
    "vxorps %xmm0,%xmm0,%xmm0", "vbroadcastss (%rax),%zmm0", "vshufps $0x88,%ymm1,%ymm2,%ymm0",
    "vblendvps %ymm3,%ymm1,%ymm2,%ymm0", "vandps %ymm1,%ymm2,%ymm0", "vmovmskps %ymm0,%eax",
    "vinsertf128 $0x1,%xmm1,%ymm0,%ymm0", "vmovss %xmm0,(%rax)", "movsd %xmm0,(%rax)", "cmpl $0x4,%eax",
    "subq $0x48,%rsp", "mulq %rcx", "idivl %ecx", "cltq", "vmovd %xmm0,%eax",
    "data16 cs nopw 0x0(%rax,%rax,1)", "lock addl $0x1,(%rax)", "call *(%rax)",
    "tdpbssd %tmm1,%tmm2,%tmm0",
    "call *0x2fe2(%rip)        # 3fd8 <memcpy@GLIBC_2.14>",
    "mov 0x665b2(%rip),%rax        # b2fc0 <__TVMBackendParallelLaunch@@Base-0x60>",
]  # fmt: skip
AARCH64_FLOAT = [
    "fmla v1.4s, v0.4s, v2.4s", "fadd s0, s1, s2", "fmul v0.2d, v1.2d, v2.2d", "fdiv d0, d1, d2",
    "fsqrt s0, s1", "fcvtzs w0, s0", "fcvtns v0.4s, v1.4s", "fcvt h0, s0", "scvtf s0, w0",
    "ucvtf v0.4s, v0.4s", "frintn v0.4s, v1.4s", "fcmgt v0.4s, v1.4s, v2.4s", "fmax v0.4s, v1.4s, v2.4s",
    "fcsel s0, s1, s2, lt", "bfdot v0.4s, v1.8h, v2.8h", "bfcvt h0, s1", "fadd z0.s, p0/m, z0.s, z1.s",
    "bfcvtn v0.4h, v1.4s", "bfmopa za0.s, p0/m, p1/m, z0.h, z1.h", ".inst 0xc1a0b000 ; undefined",
]  # fmt: skip
AARCH64_INTEGER = [
    "sdot v0.4s, v1.16b, v2.16b", "add v0.4s, v1.4s, v2.4s", "umaxv s0, v0.4s", "fmov w1, s0",
    "fmov s0, w8", "fmov d3, x11", "fmov v0.4s, #1.000000000000000000e+00", "mla v0.4s, v1.4s, v2.4s",
    "smlal v0.4s, v1.4h, v2.4h", "sshl v0.2d, v1.2d, v2.2d", "cmgt v0.4s, v1.4s, v2.4s",
    "bfi w0, w1, #3, #4", "bfxil w0, w1, #0, #8", "bfc w0, #3, #4", "ldr s0, [x0]", "sdiv w0, w1, w2",
    "bl 28b90 <qc_helper>", "b.ne 1700 <kernel+0x10>", "blr x8", "bl 1a30 <memcpy@plt>",
]  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "instruction", "is_float"),
    [("x86_64", i, True) for i in X86_FLOAT]
    + [("x86_64", i, False) for i in X86_INTEGER]
    + [("aarch64", i, True) for i in AARCH64_FLOAT]
    + [("aarch64", i, False) for i in AARCH64_INTEGER],
)
def test_instruction_rule(arch, instruction, is_float):
    found = float_instructions(disassembly("__tvm_ffi_kernel", instruction), arch)
    assert found == ([("kernel", "1000", instruction)] if is_float else [])


@pytest.mark.parametrize(
    "name", ["__truncsfhf2", "__extendhfsf2", "__addsf3", "__floatsidf", "__fixdfsi", "__powisf2",
             "__truncsfbf2", "__mulsc3", "expf", "sqrt", "copysignf"],
)  # fmt: skip
def test_float_helper_names(name):
    assert FLOAT_HELPER.fullmatch(name)


@pytest.mark.parametrize(
    "name",
    ["__divdi3", "__udivti3", "__popcountdi2", "__ffsti2", "__tvm_set_raised_6", "__cxa_finalize", "memcpy",
     "frame_dummy", "__tvm_ffi_round", "round_compute_", "__do_global_dtors_aux", "__aarch64_ldadd4_acq_rel",
     "__stack_chk_fail", "TVMFFIErrorSetRaisedFromCStrParts"],
)  # fmt: skip
def test_integer_helpers_and_kernels_are_not_float_helpers(name):
    assert not FLOAT_HELPER.fullmatch(name)


@pytest.mark.parametrize(
    ("arch", "call", "helper_body"),
    [
        ("x86_64", "call 2e540 <__truncsfhf2>", "vcvtps2ph $0x4,%xmm0,%xmm0"),
        ("x86_64", "jmp 1030 <expf@plt>", "vcvtps2ph $0x4,%xmm0,%xmm0"),
        ("x86_64", "call *0x2fe2(%rip)        # 3fd8 <expf@GLIBC_2.27>", "vcvtps2ph $0x4,%xmm0,%xmm0"),
        ("aarch64", "bl 28b90 <__truncsfhf2>", "fcvt h0, s0"),
    ],
)
def test_a_call_into_a_float_helper_is_found_but_the_helper_is_not_scanned(arch, call, helper_body):
    text = disassembly("take_compute_", "mov x0, x1", call) + disassembly("__truncsfhf2", helper_body)
    assert list(kernel_functions(text)) == ["take_compute_"]
    assert float_instructions(text, arch) == [("take", "1004", call)]


def test_unknown_architecture_is_refused():
    with pytest.raises(TargetError, match=r"architecture 'riscv64'; known: x86_64, aarch64"):
        float_instructions("", "riscv64")


def test_missing_objdump_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(cross.shutil, "which", lambda name: None)
    with pytest.raises(TargetError, match=r"aarch64-linux-gnu-objdump is not installed.*binutils-aarch64"):
        disassemble(tmp_path / "model.so", "aarch64")


# ---- real float kernels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_a_float_kernel_built_by_tvm_is_found(name, parallel, tmp_path):
    """A float32 multiply-add PrimFunc compiled by TVM for the target's CPU: found, named, refused. Parallel,
    its float code is in a lambda without a symbol, after the body's return: scanned and named after it."""
    require_tools(name)
    options, arch, export, instruction = TARGETS[name]
    a = te.placeholder((4096,), "float32", name="a")
    b = te.compute((4096,), lambda i: a[i] * 2.5 + 1.0, name="b")
    func = te.create_prim_func([a, b]).with_attr("global_symbol", "scale_shift")
    if parallel:
        sch = s_tir.Schedule(func)
        outer, inner = sch.split(sch.get_loops(sch.get_sblock("b"))[0], [None, 16])
        sch.parallel(outer)
        sch.vectorize(inner)
        func = sch.mod["main"]
    library = tmp_path / "float.so"
    target = get_target(name, **options).tvm_target()
    tvm.compile(tvm.IRModule({"scale_shift": func}), target=target).export_library(str(library), **export)
    text = disassemble(library, arch)
    found = float_instructions(text, arch)
    assert {f.kernel for f in found} == {"scale_shift"}
    body = kernel_functions(text)["scale_shift_compute_"]
    first_return = next(i for i, (_, instruction) in enumerate(body) if instruction.split()[0] == "ret")
    in_lambda = {address for address, _ in body[first_return + 1:]}  # the code after the body's own return
    assert bool(in_lambda & {f.address for f in found}) == parallel
    assert any(f.instruction.startswith(instruction) for f in found)
    refusal = rf"{arch}: {len(found)} floating-point .* kernel\(s\) scale_shift of .*: report it"
    with pytest.raises(TargetError, match=refusal):
        check_float_free(library, arch)


def _float_add(n):
    """An Add converter that computes in float32 (a deliberately wrong lowering)."""
    x, y = n.args()
    wide = relax.op.add(relax.op.astype(x, "float32"), relax.op.astype(y, "float32"))
    return relax.op.astype(wide, str(x.ty.dtype))


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_build_refuses_a_float_kernel_naming_it(name, tmp_path, monkeypatch):
    require_tools(name)
    options, arch = TARGETS[name][:2]
    target = get_target(name, **options)
    monkeypatch.setattr(type(target), "kernels", lambda self: {("", "Add"): _float_add})
    model = region([node("Add", ["a", "b"], ["y"])], {"a": ("int32", (64,)), "b": ("int32", (64,))}, ["y"])
    refusal = rf"{arch}: \d+ floating-point instruction\(s\) in kernel\(s\) \S*add\S* of .*report it"
    with pytest.raises(TargetError, match=refusal):
        target.compile(model, tmp_path)


# ---- the project's models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
def test_compiled_model_kernels_are_float_free(name, tmp_path):
    """The tiny CNN (every CNN op family): the scanner sees every kernel, entry and body, and no float. The
    other models are covered where they are built (test_fashion_vit, test_aarch64 ...): every build checks."""
    require_tools(name)
    calibration = {"input": np.random.default_rng(0).standard_normal((16, 1, 16, 16)).astype(np.float32)}
    artifact = qcompiler.compile(build_tiny_cnn(tmp_path / "tiny.onnx"), target=name, calibration=calibration,
                                 input_shapes={"input": (1, 1, 16, 16)})
    library = artifact.save(tmp_path / "artifact") / "model.so"
    arch = TARGETS[name][1]
    text = disassemble(library, arch)
    kernels = kernel_functions(text)
    entries = [k for k in kernels if k.startswith("__tvm_ffi_")]
    assert len(entries) > 10 and all(k.removeprefix("__tvm_ffi_") + "_compute_" in kernels for k in entries)
    assert float_instructions(text, arch) == []
