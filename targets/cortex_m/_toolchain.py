"""The host tools around the generated C: arm-none-eabi-gcc (through make), size, and qemu-system-arm.

Every tool failure is a :class:`TargetError` that names the command and keeps the end of its output.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

from qcompiler.errors import TargetError
from qcompiler.targets.cortex_m._harness import CALIBRATION_INSTRUCTIONS

__all__ = [
    "EmulatorRun",
    "build",
    "emulate",
    "float_uses",
    "missing_tools",
    "section_sizes",
    "stack_bytes",
]

#: build tools (compile + measure) and the emulator.
BUILD_TOOLS = ("make", "arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-objdump", "arm-none-eabi-nm")
EMULATOR = "qemu-system-arm"

#: functions on the call path from reset to a kernel (harness and driver).
_CALL_PATH = ("Reset_Handler", "main", "qc_run_buffers")
#: bytes kept for code without -fstack-usage data (libgcc 64-bit helpers, newlib's memcpy/strlen).
_LIBRARY_STACK = 256
_OUTPUT_LINES = 25


def missing_tools(tools: tuple[str, ...]) -> list[str]:
    """The tools in ``tools`` that are not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def _run(command: list[str], cwd: pathlib.Path, what: str, timeout: float) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise TargetError(f"cortex-m: {what} timed out after {timeout:.0f} s: {' '.join(command)}") from err
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_OUTPUT_LINES:])
        raise TargetError(f"cortex-m: {what} failed ({' '.join(command)} in {cwd}):\n{tail}")
    return done.stdout


def build(directory: pathlib.Path, goal: str, timeout: float = 600) -> None:
    """``make -C directory goal``."""
    _run(["make", "-s", goal], directory, f"make {goal}", timeout)


def stack_bytes(build_dir: pathlib.Path) -> int:
    """Worst-case stack from gcc's ``.su`` files: the reset-to-kernel path, the deepest kernel, the deepest
    helper a kernel calls (error reporting, workspace, a SIMD kernel), and a margin for library code; rounded up to 256 bytes."""
    frames: dict[str, int] = {}
    for su in build_dir.glob("*.su"):
        for line in su.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 3:
                name = fields[0].rsplit(":", 1)[-1]
                frames[name] = max(frames.get(name, 0), int(fields[1]))
    kernels = [size for name, size in frames.items() if name.startswith("__tvm_ffi_")]
    total = sum(frames.get(name, 0) for name in _CALL_PATH)
    error_path = frames.get("TVMFFIErrorSetRaisedFromCStrParts", 0) + frames.get("qc_append", 0)
    simd = max((size for name, size in frames.items() if name.startswith("qc_simd_")), default=0)
    total += max(kernels, default=0) + max(error_path, frames.get("TVMBackendAllocWorkspace", 0), simd)
    total += _LIBRARY_STACK
    return -(-total // 256) * 256


#: float instructions (VFP/MVE ``.f16/.f32/.f64`` and conversions) and the soft-float helper calls.
_FLOAT_INSTRUCTION = re.compile(
    r"^\s*[0-9a-f]+:\s+(?:[0-9a-f]{4} ?){1,2}\s+(v\w*\.f(?:16|32|64)\b[^\n]*|vcvt\S*)", re.MULTILINE
)
_FLOAT_HELPER = re.compile(r"\b(__aeabi_(?:[fd]\w+|[ul]?[il]2[fd]|[fd]2\w+)|__\w+[sdt]f[23]?)\b")


def float_uses(objects: list[pathlib.Path]) -> list[str]:
    """Float instructions and soft-float helper calls in ``objects`` (``objdump -d``, ``nm -u``)."""
    names = [str(o) for o in objects]
    found = []
    disassembly = _run(["arm-none-eabi-objdump", "-d", *names], objects[0].parent, "objdump", 300)
    found += sorted({m.group(1).split()[0] for m in _FLOAT_INSTRUCTION.finditer(disassembly)})
    undefined = _run(["arm-none-eabi-nm", "-u", *names], objects[0].parent, "nm", 60)
    found += sorted({m.group(1) for m in _FLOAT_HELPER.finditer(undefined)})
    return found


def section_sizes(elf: pathlib.Path) -> dict[str, int]:
    """Section name -> bytes (``arm-none-eabi-size -A``)."""
    out = _run(["arm-none-eabi-size", "-A", str(elf)], elf.parent, "arm-none-eabi-size", 60)
    sizes = {}
    for line in out.splitlines():
        match = re.match(r"^(\.\S+)\s+(\d+)\s+\d+", line)
        if match:
            sizes[match.group(1)] = int(match.group(2))
    return sizes


class EmulatorRun:
    """What one emulated run printed (its console), the stack it used, and the model's instruction count
    under ``-icount`` (None when the run was too long to count; see :mod:`._harness`); from the profiling
    image also the count of each kernel call (``step_instructions``, else None). Instructions, not cycles."""

    def __init__(self, console: str):
        self.console = console
        match = re.search(r"stack_used=(\d+)", console)
        self.stack_used = int(match.group(1)) if match else None
        ticks = re.search(r"ticks=(\d+) calibration_ticks=(\d+)", console)
        counted = ticks and 0xFFFFFFFF not in (int(ticks[1]), int(ticks[2])) and int(ticks[2]) > 0
        scale = CALIBRATION_INSTRUCTIONS / int(ticks[2]) if counted else None
        self.instructions = round(int(ticks[1]) * scale) if counted else None
        steps = re.search(r"step_ticks=([\d,]*)", console)
        self.step_instructions = (
            [round(int(t) * scale) for t in steps[1].split(",") if t] if counted and steps else None
        )


def emulate(elf: pathlib.Path, machine: str, cpu: str, workdir: pathlib.Path, timeout: float) -> EmulatorRun:
    """Run ``elf`` on ``machine`` with semihosting in ``workdir``; a non-zero exit or a timeout raises."""
    command = [
        EMULATOR, "-M", machine, "-cpu", cpu, "-nographic", "-monitor", "none", "-serial", "none",
        "-semihosting-config", "enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf.resolve()),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise TargetError(
            f"cortex-m: {machine} emulation did not finish within {timeout:.0f} s "
            f"(a hung kernel, or raise the timeout): {' '.join(command)}"
        ) from err
    console = done.stdout + done.stderr
    if done.returncode != 0 or "qc: ok" not in console:
        tail = "\n".join(console.strip().splitlines()[-_OUTPUT_LINES:])
        raise TargetError(f"cortex-m: the model failed on {machine} (exit {done.returncode}):\n{tail}")
    return EmulatorRun(console)
