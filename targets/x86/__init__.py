"""x86-64 host target: LLVM with an explicit ``mcpu`` (never "native", which TVM 0.27 silently compiles as
generic x86-64), executed through the Relax VM on this host.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
from typing import ClassVar

import onnx
import tvm
from tvm.target import codegen

from qcompiler.errors import TargetError
from qcompiler.targets._base import Progress, Target, option, parse_bool
from qcompiler.targets._build import build_relax_library
from qcompiler.targets._database import check_database
from qcompiler.targets._runtime import CompiledModule
from qcompiler.targets.amx_kernels import AMX_INT8, amx_permitted
from qcompiler.targets.int8_kernels import AVX2, AVX512_VNNI, AVX_VNNI
from qcompiler.targets.int8_lowering import int8_kernels

__all__ = ["X86Target"]

_TRIPLE = "x86_64-pc-linux-gnu"

#: CPU names suggested when ``mcpu`` is refused.
_EXAMPLE_CPUS = (
    "x86-64-v3",
    "x86-64-v4",
    "skylake-avx512",
    "icelake-server",
    "sapphirerapids",
    "znver4",
    "znver5",
)

#: LLVM features -> dot-product capability name, best first.
_DOT_PRODUCTS = (
    (("amx-int8", "amx-tile", "avx512vnni"), "amx-int8"),
    (("avx512vnni",), "avx512-vnni"),
    (("avxvnni",), "avx-vnni"),
    (("avx2",), "avx2"),
)

#: dot-product capability -> the instruction the int8 GEMM/convolution kernels are built on.
_DOT_INSTRUCTIONS = {d.name: d for d in (AMX_INT8, AVX512_VNNI, AVX_VNNI, AVX2)}


def _host_cpu() -> str:
    return codegen.llvm_get_system_cpu()


@dataclasses.dataclass(frozen=True)
class X86Target(Target):
    """x86-64 with LLVM. Options: ``mcpu`` (default: this host's CPU), ``num_cores`` (default: all),
    ``tuning_db`` (a directory written by ``qc tune``: its schedules replace the default ones of the
    kernels they match; see :mod:`~qcompiler.targets.tuning`).

    ``dot_product`` follows from ``mcpu``: "amx-int8" (AMX tiles beside AVX-512 VNNI), "avx512-vnni",
    "avx-vnni", "avx2" (``vpmaddwd`` pairs) or None. ``amx=False`` keeps an AMX CPU on AVX-512 VNNI; AMX
    is also left out when ``mcpu`` is this host's CPU and Linux refuses this process the tile state.
    """

    name: str = "x86"
    triple: str = _TRIPLE
    native_int_widths: tuple[int, ...] = (8, 16, 32, 64)
    dot_product: str | None = dataclasses.field(init=False, default=None)
    cheap_int64_multiply: bool = True
    requant_mantissa_bits: int = 31
    runs_on_host: bool = dataclasses.field(default_factory=lambda: platform.machine() in ("x86_64", "AMD64"))
    library_name: str = "model.so"
    cpu_library: ClassVar[bool] = True
    mcpu: str = option(default_factory=_host_cpu)
    num_cores: int = option(default_factory=lambda: os.cpu_count() or 1)
    tuning_db: str = option(default="")
    amx: bool = option(default=True)

    def __post_init__(self) -> None:
        if self.mcpu in ("", "generic", "native") or not codegen.llvm_is_valid_cpu(self.mcpu, self.triple):
            known = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": self.triple}))
            examples = [cpu for cpu in _EXAMPLE_CPUS if cpu in known]
            raise TargetError(
                f"x86: mcpu={self.mcpu!r} is not a CPU name LLVM knows for {self.triple} "
                f'("native" and "generic" are refused); pass mcpu=, e.g. {", ".join(examples)}'
            )
        if not isinstance(self.num_cores, int) or self.num_cores < 1:
            raise TargetError(f"x86: num_cores must be a positive integer, got {self.num_cores!r}")
        check_database(self.name, self.tuning_db)
        object.__setattr__(self, "amx", parse_bool(self.amx, "x86: amx"))
        features = set(codegen.llvm_get_cpu_features(self.tvm_target()))
        if not self.amx or (self.mcpu == _host_cpu() and not amx_permitted()):
            features.discard("amx-int8")
        dot = next((name for needed, name in _DOT_PRODUCTS if features.issuperset(needed)), None)
        object.__setattr__(self, "dot_product", dot)

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target: llvm, explicit triple and mcpu, ``num-cores`` for the thread pool and tuning."""
        return tvm.target.Target(
            {"kind": "llvm", "mtriple": self.triple, "mcpu": self.mcpu, "num-cores": self.num_cores}
        )

    def kernels(self) -> dict:
        """Converter overrides the lowering uses, chosen by the ``dot_product`` capability (none without one)."""
        dot = _DOT_INSTRUCTIONS.get(self.dot_product)
        return int8_kernels(dot) if dot else {}

    def compile(
        self, region: onnx.ModelProto, out_dir: pathlib.Path, progress: Progress | None = None
    ) -> dict:
        """Lower (int8 GEMMs/convolutions on the dot-product kernels), build with TVM's CPU pipeline (tuned
        schedules from ``tuning_db``) and export ``out_dir / model.so``; with a database, the info records
        its sha256 and record count."""
        return build_relax_library(
            self.name, region, self.tvm_target(), pathlib.Path(out_dir) / self.library_name, progress,
            kernels=self.kernels(), tuning_db=pathlib.Path(self.tuning_db) if self.tuning_db else None,
        )  # fmt: skip

    def load(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """Load ``model.so`` into a Relax VM on the host CPU."""
        if not self.runs_on_host:
            raise TargetError(f"x86 libraries cannot run on this {platform.machine()} host")
        return CompiledModule.from_library(
            pathlib.Path(out_dir) / library_info["library"], tvm.cpu(), library_info
        )
