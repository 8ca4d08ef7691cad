"""NVIDIA GPUs through CUDA: dlight-scheduled TIR kernels, written as CUDA C, run through the Relax VM.

Compiling needs no GPU: without one, TVM stores the kernels' CUDA C source in the library, and loading the
library on a GPU machine compiles it there (JIT, through ``tvm_callback_cuda_compile``: NVRTC from the
``cuda-bindings`` package by default, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``). Running needs the NVIDIA
driver and the CUDA 13 runtime (``libcudart.so.13``, which TVM's ``libtvm_runtime_cuda.so`` links against).

Every build is checked for floating point: the CUDA C always, the PTX too when nvcc is on PATH (option
``ptx_check``). A float is a :class:`~qcompiler.errors.TargetError`, never a silent library. The source is
saved as ``model.cu`` (and the PTX as ``model.ptx``) next to the library, both named in the library info.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import subprocess
import time

import onnx
import tvm

from qcompiler.errors import TargetError
from qcompiler.targets._base import Progress, Target, option
from qcompiler.targets._build import run_step
from qcompiler.targets._runtime import CompiledModule, region_signature
from qcompiler.targets.cuda import check
from qcompiler.targets.cuda._pipeline import build_pipeline, schedule, unscheduled_kernels
from qcompiler.targets.relax_lowering import lower

__all__ = ["ARCHS", "CudaTarget", "cuda_device_visible"]

#: supported ``arch`` values: Ampere (A100, A10/RTX 30), Ada (L4, RTX 40), Hopper (H100, H200).
ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")

_PTX_CHECKS = ("auto", "on", "off")

#: static shared memory per block (the 48 KiB every arch listed has without opting in to more).
_SHARED_MEMORY_PER_BLOCK = 48 * 1024

#: the host side (VM glue, kernel launches): x86-64 Linux, generic CPU so that any GPU server runs it.
_HOST = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu"}

#: a kernel definition (TVM also declares each kernel first, ending in ";").
_KERNEL_DEFINITION = re.compile(r'extern "C" __global__[^;{]*\{')

#: how many float findings a refusal lists.
_SHOWN = 10


@functools.cache
def cuda_device_visible() -> bool:
    """Whether TVM's CUDA runtime loads and sees a GPU (False without a driver; computed once)."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # missing libcuda / libcudart surfaces as several error types
        return False


@dataclasses.dataclass(frozen=True)
class CudaTarget(Target):
    """CUDA on NVIDIA GPUs. Options: ``arch`` (default "sm_90"), ``ptx_check`` ("auto": check the PTX when
    nvcc is on PATH; "on": require nvcc; "off": check the CUDA C only).

    ``dot_product`` is "dp4a": nvcc compiles the int8 multiply-adds of the SIMT schedules to ``dp4a``.
    ``runs_on_host`` is whether a CUDA device is visible here.
    """

    name: str = "cuda"
    triple: str = "nvptx64-nvidia-cuda"
    native_int_widths: tuple[int, ...] = (8, 16, 32, 64)
    dot_product: str | None = "dp4a"
    #: int64 multiplies are several 32-bit IMADs on NVIDIA GPUs (exact, but not cheap).
    cheap_int64_multiply: bool = False
    requant_mantissa_bits: int = 31
    runs_on_host: bool = dataclasses.field(default_factory=cuda_device_visible)
    library_name: str = "model.so"
    arch: str = option(default="sm_90")
    ptx_check: str = option(default="auto")

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise TargetError(f"cuda: arch={self.arch!r} is not supported; valid: {', '.join(ARCHS)}")
        if self.ptx_check not in _PTX_CHECKS:
            raise TargetError(f"cuda: ptx_check={self.ptx_check!r}; valid: {', '.join(_PTX_CHECKS)}")

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target: cuda for ``arch`` (explicit limits, no device query), llvm x86-64 host."""
        device = {
            "kind": "cuda",
            "arch": self.arch,
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": _SHARED_MEMORY_PER_BLOCK,
            "thread_warp_size": 32,
        }
        return tvm.target.Target(device, host=_HOST)

    def compile(
        self, region: onnx.ModelProto, out_dir: pathlib.Path, progress: Progress | None = None
    ) -> dict:
        """Lower, schedule every kernel (dlight), build, refuse floats, export ``model.so`` + ``model.cu``.

        Steps: signature, lower, schedule, build, check (CUDA C, then PTX when nvcc runs), export.
        """
        start = time.perf_counter()
        out_dir = pathlib.Path(out_dir)
        target = self.tvm_target()
        inputs, outputs = run_step(self.name, "signature", progress, lambda: region_signature(region))
        module = run_step(self.name, "lower", progress, lambda: lower(region))
        module, declined = run_step(self.name, "schedule", progress, lambda: schedule(module, target))
        _require_scheduled(module)
        executable = run_step(
            self.name,
            "build",
            progress,
            lambda: tvm.compile(module, target=target, relax_pipeline=build_pipeline(target)),
        )
        source = "\n".join(check.kernel_sources(executable))  # "" when every op became a VM builtin
        _refuse_floats("CUDA source", check.float_instructions(source))
        ptx = self._ptx(source, progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / check.SOURCE_NAME).write_text(source)
        files = [check.SOURCE_NAME]
        if ptx is not None:  # also when empty: the check ran
            (out_dir / check.PTX_NAME).write_text(ptx)
            files.append(check.PTX_NAME)
        library = out_dir / self.library_name
        run_step(self.name, "export", progress, lambda: executable.export_library(str(library)))
        return {
            "library": library.name,
            "tvm_target": str(target),
            "seconds": round(time.perf_counter() - start, 3),
            "inputs": [s.to_json() for s in inputs],
            "outputs": [s.to_json() for s in outputs],
            "arch": self.arch,
            "kernels": len(_KERNEL_DEFINITION.findall(source)),
            "cuda_source": check.SOURCE_NAME,
            # kernels a preferred dlight rule raised on, scheduled by a later (simpler) rule instead
            "declined_rules": [dataclasses.asdict(d) for d in declined],
            "extra_files": files,
            "float_check": {
                "cuda_source": 0,
                "ptx": None if ptx is None else 0,
                "nvcc": _nvcc_version() if ptx is not None else None,
            },
            "ptx_instructions": None if ptx is None else check.dot_product_instructions(ptx),
        }

    def _ptx(self, source: str, progress: Progress | None) -> str | None:
        """The PTX of ``source`` after checking it for floats ("" without kernels), or None when the check is
        off or nvcc absent."""
        if self.ptx_check == "off" or (self.ptx_check == "auto" and not check.nvcc_available()):
            return None
        if not source:
            return ""
        if progress is not None:
            progress("ptx")
        ptx = check.compile_ptx(source, self.arch)
        _refuse_floats("PTX", check.float_ptx_instructions(ptx))
        return ptx

    def load(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """Load ``model.so`` into a Relax VM on CUDA device 0 (its kernels are JIT-compiled on load)."""
        if not self.runs_on_host:
            raise TargetError(
                "cuda libraries need a visible NVIDIA GPU: the driver (libcuda.so.1), the CUDA 13 runtime "
                "(libcudart.so.13), and cuda-bindings or nvcc with TVM_CUDA_COMPILE_MODE=nvcc for the JIT"
            )
        return CompiledModule.from_library(
            pathlib.Path(out_dir) / library_info["library"], tvm.cuda(0), library_info
        )


def _require_scheduled(module: tvm.IRModule) -> None:
    missing = unscheduled_kernels(module)
    if missing:
        raise TargetError(
            f"cuda: {len(missing)} kernel(s) got no GPU schedule from dlight (they would run without threads): "
            f"{', '.join(missing)}"
        )


def _refuse_floats(where: str, found: list[check.FloatUse]) -> None:
    if found:
        rows = "\n  ".join(f"line {f.line}: {f.token!r} in {f.text[:120]}" for f in found[:_SHOWN])
        more = f"\n  ... and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        raise TargetError(
            f"cuda: the generated {where} uses floating point ({len(found)} place(s)); qc emits integer-only "
            f"code, so this is a compiler bug:\n  {rows}{more}"
        )


@functools.cache
def _nvcc_version() -> str | None:
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.split("release")[-1].strip() for line in out.splitlines() if "release" in line), None)
