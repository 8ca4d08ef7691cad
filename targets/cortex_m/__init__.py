"""Cortex-M microcontrollers: TVM's C kernels plus a generated C graph driver with a static memory plan.

``compile`` writes a self-contained C source tree into ``out_dir / "mcu"`` (kernels from TVM's "c" target,
``model.c`` driver with one arena whose offsets are fixed at compile time, ``weights.c`` with the weights as
``const`` arrays for flash, ``model.h``, a Makefile, a semihosting test program, startup code and a linker
script for the board), builds it with arm-none-eabi-gcc when that is installed, measures flash and RAM with
arm-none-eabi-size, and refuses builds over ``flash_limit`` / ``ram_limit``. The artifact cannot run on the
host: :meth:`CortexMTarget.run_emulated` runs it in qemu-system-arm instead.

One class, three boards (:data:`BOARDS`); the registry names ``cortex-m4``, ``cortex-m7``, ``cortex-m55``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from qcompiler.errors import QcError, TargetError
from qcompiler.targets._base import Progress, Target, option, parse_bool
from qcompiler.targets._build import run_step
from qcompiler.targets._runtime import (
    CompiledModule,
    EmulatedModule,
    InputMismatchError,
    TensorSpec,
    region_signature,
)
from qcompiler.targets.cortex_m import _emit, _harness, _simd, _toolchain
from qcompiler.targets.cortex_m._kernels import KernelSource, fuse, kernel_source
from qcompiler.targets.cortex_m._plan import UNPACK_KERNELS, Plan, plan
from qcompiler.targets.relax_lowering import lower

__all__ = ["BOARDS", "ELF", "PROFILE_ELF", "Board", "CortexM4Target", "CortexM55Target", "CortexM7Target", "CortexMTarget"]

_KB, _MB = 1 << 10, 1 << 20


@dataclasses.dataclass(frozen=True)
class Board:
    """One core and the emulated board it runs on: compiler flags, qemu machine, memory regions."""

    cpu: str
    triple: str
    cpu_flags: str
    machine: str
    flash: tuple[int, int]  # (origin, bytes): code, constants, .data image
    ram: tuple[int, int]  # (origin, bytes): stack, .data, .bss (arena)
    constants: tuple[int, int] | None = None  # (origin, bytes): a separate flash for .rodata (weights)
    dot_product: str = "smlad"  # what qc_simd.c's dot product runs on for this core ("mve": Helium, then SMLAD)

    @property
    def flash_bytes(self) -> int:
        """All flash: the code flash plus the constants flash, if any."""
        return self.flash[1] + (self.constants[1] if self.constants else 0)


#: target name -> board. Flash and RAM are what the qemu machine maps at those addresses.
BOARDS = {
    "cortex-m4": Board(
        "cortex-m4", "thumbv7em-none-eabi", "-mcpu=cortex-m4 -mthumb -mfloat-abi=soft",
        "mps2-an386", (0x00000000, 4 * _MB), (0x20000000, 4 * _MB),
    ),
    "cortex-m7": Board(
        "cortex-m7", "thumbv7em-none-eabihf", "-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16",
        "mps2-an500", (0x00000000, 4 * _MB), (0x20000000, 4 * _MB),
    ),
    # SSE-300: ITCM (512 KB) holds the code, DTCM (512 KB) the data, the 8 MB QSPI flash the weights; the
    # FPU/MVE is enabled at reset.
    "cortex-m55": Board(
        "cortex-m55", "thumbv8.1m.main-none-eabihf", "-mcpu=cortex-m55 -mthumb -mfloat-abi=hard",
        "mps3-an547", (0x00000000, 512 * _KB), (0x20000000, 512 * _KB), (0x28000000, 8 * _MB), "mve",
    ),
}  # fmt: skip

#: the files of the C tree, relative to the library directory (build outputs aside).
SOURCES = ("model.h", "model.c", "kernels.c", _simd.SIMD_HEADER, _simd.SIMD_SOURCE, "weights.h", "weights.c",
           "main.c", "startup.c", "board.ld", "Makefile")  # fmt: skip
#: headers copied from the tvm / tvm-ffi wheels, so the tree builds without Python.
_HEADERS = {
    "tvm_ffi": ("dlpack/dlpack.h", "tvm/ffi/c_api.h", "tvm/ffi/extra/c_env_api.h"),
    "tvm": ("tvm/runtime/base.h", "tvm/runtime/c_backend_api.h"),
}
ELF = "qc_model.elf"
PROFILE_ELF = "qc_profile.elf"
_EMULATION_TIMEOUT = 120.0
_SIZE_SUFFIX = {"": 1, "k": _KB, "kb": _KB, "m": _MB, "mb": _MB}


def _parse_bytes(value: Any, what: str) -> int | None:
    """``None``, an int, or a string such as "65536", "512K", "2MB" (CLI options arrive as strings)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([kKmM][bB]?)?\s*", str(value))
        if not match:
            raise TargetError(f"cortex-m: {what}={value!r} is not a byte count (e.g. 65536, 512K, 2M)")
        number = int(match.group(1)) * _SIZE_SUFFIX[(match.group(2) or "").lower()]
    if number <= 0:
        raise TargetError(f"cortex-m: {what} must be positive, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class CortexMTarget(Target):
    """A Cortex-M core (see :data:`BOARDS`). Options: ``ram_limit`` and ``flash_limit`` in bytes (also
    "512K", "2M"; the board's own memory is always a limit), and ``arg_checks`` (default True): every
    kernel checks its arguments' dtype and shape; False drops the checks and their messages, which are most
    of the code size (the driver passes the planned descriptors by construction). ``pack_weights`` (default
    True): int8 constants whose values all fit 4 (or 2) bits are stored packed, two (four) per byte, in flash
    and unpacked into the arena just before the kernel that reads them (see
    :mod:`~qcompiler.targets.cortex_m._plan`): sub-8-bit weights then really take less flash, at the price
    of RAM for the largest unpacked weight alive at once.

    ``simd`` (default True): integer convolutions and constant-weight matrix products run on qc's
    dot-product kernels (:mod:`~qcompiler.targets.cortex_m._simd`): ``dot_product`` is "smlad" (M4, M7) or
    "mve" (M55: Helium, then SMLAD for the rest of K); False keeps TVM's scalar C loops for them
    (``dot_product`` None). The other kernels are TVM's scalar C.
    qc's requantization multiplies in int64, which a Cortex-M does in several 32-bit multiplies: exact,
    not cheap.
    """

    name: str = "cortex-m"
    triple: str = dataclasses.field(init=False, default="")
    native_int_widths: tuple[int, ...] = (8, 16, 32)
    dot_product: str | None = dataclasses.field(init=False, default=None)
    cheap_int64_multiply: bool = False
    requant_mantissa_bits: int = 31
    runs_on_host: bool = False
    library_name: str = "mcu"
    cpu: str = dataclasses.field(init=False, default="")
    emulator: str = dataclasses.field(init=False, default="")
    ram_limit: int | None = option(default=None)
    flash_limit: int | None = option(default=None)
    arg_checks: bool = option(default=True)
    pack_weights: bool = option(default=True)
    simd: bool = option(default=True)

    def __post_init__(self) -> None:
        if self.name not in BOARDS:
            raise TargetError(f"cortex-m: no board for {self.name!r}; known: {', '.join(BOARDS)}")
        board = self.board
        object.__setattr__(self, "triple", board.triple)
        object.__setattr__(self, "cpu", board.cpu)
        object.__setattr__(self, "emulator", board.machine)
        object.__setattr__(self, "ram_limit", _parse_bytes(self.ram_limit, "ram_limit"))
        object.__setattr__(self, "flash_limit", _parse_bytes(self.flash_limit, "flash_limit"))
        object.__setattr__(self, "arg_checks", parse_bool(self.arg_checks, "cortex-m: arg_checks"))
        object.__setattr__(self, "pack_weights", parse_bool(self.pack_weights, "cortex-m: pack_weights"))
        object.__setattr__(self, "simd", parse_bool(self.simd, "cortex-m: simd"))
        object.__setattr__(self, "dot_product", board.dot_product if self.simd else None)

    @property
    def board(self) -> Board:
        """This core's row of :data:`BOARDS`."""
        return BOARDS[self.name]

    def compile(
        self, region: onnx.ModelProto, out_dir: pathlib.Path, progress: Progress | None = None
    ) -> dict:
        """Write the C tree to ``out_dir / "mcu"``, build and measure it, and check it fits.

        Steps: signature, lower, fuse, codegen (TVM "c"), plan (memory), emit, build (when
        arm-none-eabi-gcc is installed). The info holds the memory figures in bytes: ``flash_bytes`` and
        ``ram_bytes`` of the whole test image, and the parts (``arena_bytes``, ``stack_bytes``,
        ``weights_bytes``, ``io_bytes``).
        """
        start = time.perf_counter()
        directory = pathlib.Path(out_dir) / self.library_name
        inputs, outputs = run_step(self.name, "signature", progress, lambda: region_signature(region))
        module = run_step(self.name, "lower", progress, lambda: lower(region))
        module = run_step(self.name, "fuse", progress, lambda: fuse(module, self.simd))
        kernels = run_step(self.name, "codegen", progress, lambda: kernel_source(module, self.arg_checks))
        graph = run_step(self.name, "plan", progress, lambda: plan(module["main"], kernels.workspace, self.pack_weights))
        if progress is not None:
            progress("emit")
        self._write_tree(directory, inputs, outputs, graph, kernels)
        info: dict[str, Any] = {
            "library": self.library_name,
            "tvm_target": "c",
            "inputs": [s.to_json() for s in inputs],
            "outputs": [s.to_json() for s in outputs],
            "cpu": self.board.cpu,
            "cpu_flags": self.board.cpu_flags,
            "emulator": self.board.machine,
            "elf": f"{self.library_name}/{ELF}",
            "extra_files": [f"{self.library_name}/{name}" for name in SOURCES],
            "kernels": len(graph.steps),
            "arena_bytes": graph.arena_bytes,
            "weights_bytes": int(sum(c.nbytes for c in graph.constants)),
            "packed_weights": sum(step.kernel in UNPACK_KERNELS.values() for step in graph.steps),
            "simd_kernels": sum(step.kernel.startswith(_simd.KERNEL_PREFIX) for step in graph.steps),
            "steps": [{"kernel": step.kernel, "reads_from": graph.producers(i)} for i, step in enumerate(graph.steps)],
            "io_bytes": int(sum(_nbytes(s) for s in [*inputs, *outputs])),
        }
        missing = _toolchain.missing_tools(_toolchain.BUILD_TOOLS)
        if missing:
            info.update(measured=False, missing_tools=missing, flash_bytes=None, stack_bytes=None,
                        ram_bytes=None)  # fmt: skip
        else:
            if progress is not None:
                progress("build")
            info.update(self._build(directory))
        info["seconds"] = round(time.perf_counter() - start, 3)
        self._check_limits(info)
        return info

    def _write_tree(
        self,
        directory: pathlib.Path,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        graph: Plan,
        kernels: KernelSource,
    ) -> None:
        if directory.exists():
            shutil.rmtree(directory)
        (directory / "include").mkdir(parents=True)
        names = list(dict.fromkeys(s.kernel for s in graph.steps if s.kernel not in UNPACK_KERNELS.values()))
        files = {
            "model.h": _emit.model_h(inputs, outputs, graph),
            "model.c": _emit.model_c(graph, names, inputs, outputs),
            "kernels.c": kernels.text,
            _simd.SIMD_HEADER: _simd.simd_h(),
            _simd.SIMD_SOURCE: _simd.simd_c(),
            "weights.h": _emit.weights_h(graph),
            "weights.c": _emit.weights_c(graph),
            "main.c": _harness.main_c(inputs, outputs),
            "startup.c": _harness.startup_c(),
            "board.ld": _harness.linker_script(self.board.flash, self.board.ram, self.board.constants),
            "Makefile": _harness.makefile(self.board.cpu, self.board.cpu_flags),
        }
        for name, text in files.items():
            (directory / name).write_text(text)
        for package, headers in _HEADERS.items():
            root = pathlib.Path(__import__(package).__file__).parent / "include"
            for header in headers:
                (directory / "include" / header).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / header, directory / "include" / header)

    def _build(self, directory: pathlib.Path) -> dict[str, Any]:
        """Compile, size the stack from -fstack-usage, link, refuse floats, and measure the image."""
        _toolchain.build(directory, "objects")
        stack = _toolchain.stack_bytes(directory / "build")
        (directory / "stack.mk").write_text(f"STACK_SIZE = {stack}\n")
        try:
            _toolchain.build(directory, "all")
        except TargetError as err:
            if "overflowed" not in str(err):
                raise
            flash, ram = self.board.flash_bytes, self.board.ram[1]
            overflow = [line.split("ld: ")[-1] for line in str(err).splitlines() if "overflowed" in line]
            raise TargetError(
                f"{self.name}: the model does not fit the {self.board.machine} board ({flash} bytes of flash, "
                f"{ram} bytes of RAM): {'; '.join(overflow)}"
            ) from err
        floats = _toolchain.float_uses(
            [directory / "build" / f"{n}.o" for n in ("model", "kernels", "qc_simd", "weights")]
        )
        if floats:
            raise TargetError(f"cortex-m: the compiled model uses floating point: {', '.join(floats[:10])}")
        sections = _toolchain.section_sizes(directory / ELF)
        flash = sum(sections.get(name, 0) for name in (".text", ".rodata", ".ARM.exidx", ".data"))
        ram = sections.get(".stack", 0) + sections.get(".data", 0) + sections.get(".bss", 0)
        return {"measured": True, "flash_bytes": flash, "ram_bytes": ram, "stack_bytes": stack,
                "sections": sections}  # fmt: skip

    def _check_limits(self, info: dict) -> None:
        """Refuse a build over ``ram_limit`` / ``flash_limit`` (or the board), naming every figure."""
        ram_floor = info["arena_bytes"] + info["io_bytes"]
        ram = info["ram_bytes"] if info["measured"] else ram_floor
        flash = info["flash_bytes"] if info["measured"] else info["weights_bytes"]
        qualifier = (
            "" if info["measured"] else f" at least (not built: no {', '.join(info['missing_tools'])})"
        )
        problems = []
        for what, used, limit, board in (
            ("RAM", ram, self.ram_limit, self.board.ram[1]),
            ("flash", flash, self.flash_limit, self.board.flash_bytes),
        ):
            cap = min(limit or board, board)
            if used > cap:
                source = "ram_limit" if what == "RAM" else "flash_limit"
                named = f"{source}={limit}" if limit and limit <= board else f"the {self.board.machine} board"
                problems.append(f"{what} needs {used} bytes{qualifier}, over {cap} ({named})")
        if problems:
            parts = (f"arena {info['arena_bytes']} + stack {info['stack_bytes'] or '?'} + I/O buffers "
                     f"{info['io_bytes']} bytes; weights {info['weights_bytes']} bytes")  # fmt: skip
            raise TargetError(f"{self.name}: the model does not fit: {'; '.join(problems)} ({parts})")

    def load(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """Refuse: the artifact is C source and an ELF for a microcontroller, not a host library."""
        raise QcError(
            f"a {self.name} artifact is C source and a firmware image for a microcontroller "
            f"({pathlib.Path(out_dir) / self.library_name}); it cannot be loaded on this host. Build it into "
            f"your firmware with its Makefile, or run it in QEMU: "
            "qcompiler.load(artifact_dir, emulate=True)"
        )

    def load_emulated(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """The firmware image run in qemu-system-arm, one emulated boot per :meth:`~EmulatedModule.run`."""
        return EmulatedModule(library_info, lambda inputs: self.run_emulated(out_dir, library_info, inputs))

    def run_emulated(
        self,
        out_dir: pathlib.Path,
        library_info: dict,
        inputs: Mapping[str, np.ndarray],
        timeout: float = _EMULATION_TIMEOUT,
    ) -> list[np.ndarray]:
        """Run the test image in qemu-system-arm (semihosting) on ``inputs``; return the outputs in order."""
        return self.emulate(out_dir, library_info, inputs, timeout)[0]

    def emulate(
        self,
        out_dir: pathlib.Path,
        library_info: dict,
        inputs: Mapping[str, np.ndarray],
        timeout: float = _EMULATION_TIMEOUT,
        profile: bool = False,
    ) -> tuple[list[np.ndarray], _toolchain.EmulatorRun]:
        """:meth:`run_emulated`, also returning the console and the measured stack use; with ``profile``, run
        the profiling image instead (built on first use), whose run also counts each kernel call's
        instructions (``EmulatorRun.step_instructions``, one per entry of the library info's ``steps``)."""
        in_specs, out_specs = (
            [TensorSpec.from_json(d) for d in library_info[k]] for k in ("inputs", "outputs")
        )
        _check_inputs(in_specs, inputs)
        elf = pathlib.Path(out_dir) / library_info["elf"]
        missing = _toolchain.missing_tools((_toolchain.EMULATOR,))
        if not elf.is_file() or profile:
            missing += _toolchain.missing_tools(_toolchain.BUILD_TOOLS)
        if missing:
            raise TargetError(f"{self.name}: cannot emulate without {', '.join(missing)} on PATH")
        if not elf.is_file():
            self._build(elf.parent)
        if profile:
            _toolchain.build(elf.parent, "profile")
            elf = elf.parent / PROFILE_ELF
        with tempfile.TemporaryDirectory(prefix="qc-qemu-") as scratch:
            work = pathlib.Path(scratch)
            for i, spec in enumerate(in_specs):
                (work / f"in{i}.bin").write_bytes(
                    np.ascontiguousarray(inputs[spec.name], spec.dtype).tobytes()
                )
            run = _toolchain.emulate(elf, self.board.machine, self.board.cpu, work, timeout)
            results = [
                np.frombuffer((work / f"out{i}.bin").read_bytes(), spec.dtype).reshape(spec.shape).copy()
                for i, spec in enumerate(out_specs)
            ]
        return results, run


def _nbytes(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize


def _check_inputs(specs: list[TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    names = [s.name for s in specs]
    problems = [f"unexpected input {name!r}" for name in inputs if name not in names]
    for spec in specs:
        if spec.name not in inputs:
            problems.append(f"missing input {spec.name!r}")
            continue
        value = np.asarray(inputs[spec.name])
        if value.dtype.name != spec.dtype or value.shape != spec.shape:
            problems.append(f"input {spec.name!r} is {value.dtype.name}{list(value.shape)}, "
                            f"expected {spec.dtype}{list(spec.shape)}")  # fmt: skip
    if problems:
        raise InputMismatchError("inputs do not match the compiled model:\n  " + "\n  ".join(problems))


@dataclasses.dataclass(frozen=True)
class CortexM4Target(CortexMTarget):
    """Cortex-M4 (soft-float ABI), emulated on mps2-an386."""

    name: str = "cortex-m4"


@dataclasses.dataclass(frozen=True)
class CortexM7Target(CortexMTarget):
    """Cortex-M7 (FPv5 hard-float ABI), emulated on mps2-an500."""

    name: str = "cortex-m7"


@dataclasses.dataclass(frozen=True)
class CortexM55Target(CortexMTarget):
    """Cortex-M55 (Helium/MVE, hard-float ABI), emulated on mps3-an547."""

    name: str = "cortex-m55"
