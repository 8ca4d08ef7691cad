"""64-bit ARM (aarch64 Linux) target: LLVM cross-compilation with an explicit ``mcpu`` and ``-mattr`` features,
exported with ``aarch64-linux-gnu-g++``; int8 GEMMs and convolutions use ``sdot`` where the CPU has it.

On an x86 host the library cannot be loaded; :func:`run_emulated` / :func:`load_emulated` run it under
``qemu-aarch64`` through the C++ runner (examples/cpp), with the aarch64 TVM runtime from PyPI's wheels
(:func:`ensure_aarch64_runtime`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import platform
import shutil
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import onnx
import tvm
from tvm.target import codegen

from qcompiler.errors import ArtifactError, TargetError
from qcompiler.targets._base import Progress, Target, option
from qcompiler.targets._build import build_relax_library
from qcompiler.targets._cross import Toolchain, require_tool, run_library
from qcompiler.targets._database import check_database
from qcompiler.targets._runtime import CompiledModule, EmulatedModule
from qcompiler.targets.aarch64._runtime_libs import ensure_aarch64_runtime
from qcompiler.targets.int8_kernels import SDOT
from qcompiler.targets.int8_lowering import int8_kernels

__all__ = [
    "AARCH64_TOOLCHAIN",
    "Aarch64Target",
    "emulation_problems",
    "ensure_aarch64_runtime",
    "load_emulated",
    "run_emulated",
]

_TRIPLE = "aarch64-linux-gnu"
_SYSROOT = "/usr/aarch64-linux-gnu"
_CROSS_CXX = "aarch64-linux-gnu-g++"
_CROSS_FIX = "apt-get install g++-aarch64-linux-gnu"

#: CPU names suggested when ``mcpu`` is refused.
_EXAMPLE_CPUS = (
    "cortex-a53",
    "cortex-a55",
    "cortex-a76",
    "cortex-a78",
    "neoverse-n1",
    "neoverse-v1",
    "apple-m1",
)

#: LLVM feature -> dot-product capability name, best first.
_DOT_PRODUCTS = (("dotprod", "sdot"),)

#: dot-product capability -> the instruction the int8 GEMM/convolution kernels are built on.
_DOT_INSTRUCTIONS = {"sdot": SDOT}

AARCH64_TOOLCHAIN = Toolchain(
    arch="aarch64",
    cxx=_CROSS_CXX,
    cxx_fix=_CROSS_FIX,
    runtime_dirs=lambda: (ensure_aarch64_runtime(),),
    emulator=("qemu-aarch64", "-L", _SYSROOT),
    emulator_fix="apt-get install qemu-user",
)


@dataclasses.dataclass(frozen=True)
class Aarch64Target(Target):
    """aarch64 Linux with LLVM. Options: ``mcpu`` (default "cortex-a76"), ``features`` (LLVM ``-mattr``,
    default ``("+neon", "+dotprod")``; e.g. add "+i8mm"), ``num_cores`` (the device's cores: MetaSchedule's
    tuning needs the count; default 4), ``tuning_db`` (a directory written by ``qc tune
    --target aarch64 --rpc-tracker ...``; see :mod:`~qcompiler.targets.tuning`).

    ``dot_product`` follows from the CPU's features plus ``features``: "sdot" with dotprod, else None.
    """

    name: str = "aarch64"
    triple: str = _TRIPLE
    native_int_widths: tuple[int, ...] = (8, 16, 32, 64)
    dot_product: str | None = dataclasses.field(init=False, default=None)
    cheap_int64_multiply: bool = True
    requant_mantissa_bits: int = 31
    runs_on_host: bool = dataclasses.field(default_factory=lambda: platform.machine() in ("aarch64", "arm64"))
    library_name: str = "model.so"
    cpu_library: ClassVar[bool] = True
    library_cxx: ClassVar[str] = _CROSS_CXX
    mcpu: str = option(default="cortex-a76")
    features: tuple[str, ...] = option(default=("+neon", "+dotprod"))
    num_cores: int = option(default=4)
    tuning_db: str = option(default="")

    def __post_init__(self) -> None:
        if isinstance(self.features, str) or not all(isinstance(f, str) for f in self.features):
            raise TargetError(
                f"aarch64: features must be a sequence of strings like '+dotprod', got {self.features!r}"
            )
        object.__setattr__(self, "features", tuple(self.features))
        if isinstance(self.num_cores, bool) or not isinstance(self.num_cores, int) or self.num_cores < 1:
            raise TargetError(f"aarch64: num_cores must be a positive integer, got {self.num_cores!r}")
        check_database(self.name, self.tuning_db)
        if self.mcpu in ("", "generic", "native") or not codegen.llvm_is_valid_cpu(self.mcpu, self.triple):
            raise TargetError(
                f"aarch64: mcpu={self.mcpu!r} is not a CPU name LLVM knows for {self.triple} "
                f'("native" and "generic" are refused); pass mcpu=, e.g. {", ".join(_EXAMPLE_CPUS)}'
            )
        malformed = [f for f in self.features if len(f) < 2 or f[0] not in "+-"]
        if malformed:
            raise TargetError(f"aarch64: features must look like '+name' or '-name', got {malformed}")
        enabled = set(codegen.llvm_get_cpu_features(self.tvm_target()))
        unknown = [f for f in self.features if f[0] == "+" and f[1:] not in enabled]
        if unknown:
            raise TargetError(
                f"aarch64: LLVM does not know the feature(s) {unknown} for {self.triple}; "
                "valid examples: +neon, +dotprod, +i8mm, +fullfp16, +sve"
            )
        dot = next((name for feature, name in _DOT_PRODUCTS if feature in enabled), None)
        object.__setattr__(self, "dot_product", dot)

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target: llvm with the aarch64 triple, explicit mcpu, the ``mattr`` features, ``num-cores``."""
        return tvm.target.Target({"kind": "llvm", "mtriple": self.triple, "mcpu": self.mcpu,
                                  "mattr": list(self.features), "num-cores": self.num_cores})  # fmt: skip

    def kernels(self) -> Mapping:
        """Converter overrides the lowering uses for this target, chosen by the ``dot_product`` capability."""
        dot = _DOT_INSTRUCTIONS.get(self.dot_product)
        return int8_kernels(dot) if dot else {}

    def compile(
        self, region: onnx.ModelProto, out_dir: pathlib.Path, progress: Progress | None = None
    ) -> dict:
        """Lower (with the sdot kernels when available), cross-compile (tuned schedules from ``tuning_db``) and
        export ``out_dir / model.so``."""
        cxx = require_tool(_CROSS_CXX, f"the aarch64 cross compiler exports the library: {_CROSS_FIX}")
        return build_relax_library(
            self.name,
            region,
            self.tvm_target(),
            pathlib.Path(out_dir) / self.library_name,
            progress,
            kernels=self.kernels(),
            tuning_db=pathlib.Path(self.tuning_db) if self.tuning_db else None,
            cc=cxx,
        )

    def load(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """Load ``model.so`` into a Relax VM on an aarch64 host; elsewhere, say how to emulate it."""
        if not self.runs_on_host:
            raise TargetError(
                f"{pathlib.Path(out_dir) / library_info['library']} is an aarch64 library and this host is "
                f"{platform.machine()}: run it on an aarch64 machine (qc or examples/cpp/run_artifact), or "
                "emulate it here with qcompiler.load(artifact_dir, emulate=True) or "
                "qcompiler.targets.aarch64.run_emulated(out_dir, library_info, inputs) (needs qemu-user and the "
                "aarch64 cross compiler)"
            )
        return CompiledModule.from_library(
            pathlib.Path(out_dir) / library_info["library"], tvm.cpu(), library_info
        )

    def load_emulated(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """What :meth:`load` gives on an aarch64 host, here through qemu-aarch64 (see :func:`load_emulated`)."""
        return load_emulated(out_dir, library_info)


def emulation_problems() -> list[str]:
    """What is missing to build and emulate aarch64 code on this host, each with its fix (empty: nothing)."""
    problems = []
    if shutil.which(_CROSS_CXX) is None:
        problems.append(f"{_CROSS_CXX} is not installed: {_CROSS_FIX}")
    if not pathlib.Path(_SYSROOT, "lib", "ld-linux-aarch64.so.1").is_file():
        problems.append(f"the aarch64 sysroot {_SYSROOT} has no dynamic loader: {_CROSS_FIX}")
    if shutil.which(AARCH64_TOOLCHAIN.emulator[0]) is None:
        problems.append(f"{AARCH64_TOOLCHAIN.emulator[0]} is not installed: {AARCH64_TOOLCHAIN.emulator_fix}")
    return problems


def load_emulated(out_dir: pathlib.Path | str, library_info: Mapping) -> EmulatedModule:
    """The library ``compile`` wrote to ``out_dir`` (or an artifact's), ready to run under qemu-aarch64.

    Checks the tools and runtime up front: a missing qemu-aarch64, cross compiler, sysroot or runtime
    download is a :class:`TargetError` that names the fix.
    """
    library = pathlib.Path(out_dir) / library_info["library"]
    if not library.is_file():
        raise ArtifactError(f"compiled library {library} does not exist; compile the model again")
    problems = emulation_problems()
    if problems:
        raise TargetError("cannot emulate aarch64 here:\n  " + "\n  ".join(problems))
    ensure_aarch64_runtime()
    info = dict(library_info)
    names = [spec["name"] for spec in info["inputs"]]
    return EmulatedModule(
        info,
        lambda inputs: run_library(AARCH64_TOOLCHAIN, library, info, [np.asarray(inputs[n]) for n in names]),
    )


def run_emulated(
    out_dir: pathlib.Path | str, library_info: Mapping, inputs: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Run the aarch64 library in ``out_dir`` on integer ``inputs`` (by name) under qemu; outputs in order."""
    return load_emulated(out_dir, library_info).run(inputs)
