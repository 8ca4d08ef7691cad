"""The target contract: a capability table (frozen dataclass fields) plus three hooks.

A target never branches on another target's name. Passes read capabilities (``native_int_widths``,
``requant_mantissa_bits``, ...) from :meth:`Target.describe` or the fields; the driver calls the hooks
:meth:`Target.compile` and :meth:`Target.load`. A new target (aarch64, cortex-m, cuda) is a subpackage that
subclasses :class:`Target` with its own defaults and hooks, and one line in ``qcompiler.targets._REGISTRY``.

Fields marked ``option`` in their metadata are the only ones a user may set (``get_target("x86", mcpu=...)``);
the other fields are facts about the target and not overridable.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import onnx

from qcompiler.errors import TargetError

if TYPE_CHECKING:
    from qcompiler.targets._runtime import CompiledModule

__all__ = ["Progress", "Target", "option", "parse_bool"]

#: ``progress(step)`` is called with a short step name ("lower", "build", "export") before each step.
Progress = Callable[[str], None]


def option(**kwargs: Any) -> Any:
    """A dataclass field that users may set through ``get_target(name, **options)``."""
    return dataclasses.field(metadata={"option": True}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Target:
    """What a target can do (data) and how to build for it and run on it (hooks).

    Invariant: an instance is fully validated; constructing it with an unsupported option raises
    :class:`~qcompiler.errors.TargetError`.
    """

    name: str
    triple: str
    native_int_widths: tuple[int, ...]
    dot_product: str | None
    cheap_int64_multiply: bool
    requant_mantissa_bits: int
    runs_on_host: bool
    library_name: str
    #: True where the library is a shared object that a Relax VM runs on a CPU (x86, aarch64): qc tune times
    #: such a target's kernels, and the library runs, here or on a device behind a TVM RPC tracker.
    cpu_library: ClassVar[bool] = False
    #: the C++ compiler that links that library (None: TVM's default, the host's).
    library_cxx: ClassVar[str | None] = None

    @classmethod
    def option_names(cls) -> list[str]:
        """Names of the fields a user may set."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("option")]

    @classmethod
    def from_options(cls, **options: Any) -> Target:
        """Build the target from user options; an unknown option name is a :class:`TargetError`."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            valid = ", ".join(cls.option_names()) or "(none)"
            target = getattr(cls, "name", cls.__name__)
            raise TargetError(
                f"target {target!r} has no option(s) {', '.join(unknown)}; valid options: {valid}"
            )
        return cls(**options)

    def describe(self) -> dict[str, Any]:
        """The capability table and options as a JSON-able dict (for the artifact manifest)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def compile(
        self, region: onnx.ModelProto, out_dir: pathlib.Path, progress: Progress | None = None
    ) -> dict:
        """Build ``region`` into ``out_dir / self.library_name``; return a JSON-able description of the build.

        The returned dict is what :meth:`load` needs back (file name, input/output signature) plus facts for
        the manifest (backend target string, build seconds).
        """
        raise NotImplementedError(f"target {self.name!r} does not implement compile()")

    def load(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """Load what :meth:`compile` wrote to ``out_dir`` for execution on this host."""
        raise NotImplementedError(f"target {self.name!r} does not implement load()")

    def load_emulated(self, out_dir: pathlib.Path, library_info: dict) -> CompiledModule:
        """What :meth:`load` gives on the target machine, run here through an emulator (qemu)."""
        raise TargetError(f"target {self.name!r} has no emulator: load it with qcompiler.load() on a machine "
                          "that can run it")


def parse_bool(value: Any, what: str) -> bool:
    """A bool, or "true"/"false"/"1"/"0"/"on"/"off" (CLI options arrive as strings); ``what`` names the
    option in the error, e.g. "x86: amx"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise TargetError(f"{what}={value!r} is not a boolean (true/false)")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
