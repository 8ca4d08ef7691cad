"""Build steps shared by targets that compile a Relax module into one exported library.

Each step runs under its name; a failure inside TVM becomes a :class:`TargetError` naming the target and the
step, with TVM's exception kept as ``__cause__``.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import onnx
import tvm

from qcompiler.errors import QcError, TargetError
from qcompiler.targets._base import Progress
from qcompiler.targets._runtime import region_signature
from qcompiler.targets.relax_lowering import lower

__all__ = ["build_relax_library"]

_T = TypeVar("_T")

#: lines of TVM's message kept in a TargetError (the full text stays on ``__cause__``).
_MESSAGE_LINES = 8


def run_step(target_name: str, step: str, progress: Progress | None, run: Callable[[], _T]) -> _T:
    if progress is not None:
        progress(step)
    try:
        return run()
    except QcError:
        raise
    except Exception as err:  # TVM raises many unrelated types; none may escape raw
        message = "\n".join(str(err).strip().splitlines()[:_MESSAGE_LINES])
        raise TargetError(
            f"target {target_name!r}: step {step!r} failed: {type(err).__name__}: {message}"
        ) from err


def build_relax_library(
    target_name: str,
    region: onnx.ModelProto,
    tvm_target: tvm.target.Target,
    library: pathlib.Path,
    progress: Progress | None = None,
    kernels: Mapping | None = None,
    **export_options: Any,
) -> dict[str, Any]:
    """lower (with the target's ``kernels``) -> ``tvm.compile`` -> ``export_library``; return the library info.

    The info dict holds the library file name, the TVM target, build seconds, and the input/output signature
    that :class:`~qcompiler.targets.CompiledModule` checks calls against.
    """
    start = time.perf_counter()
    inputs, outputs = run_step(target_name, "signature", progress, lambda: region_signature(region))
    module = run_step(target_name, "lower", progress, lambda: lower(region, kernels))
    executable = run_step(target_name, "build", progress, lambda: tvm.compile(module, target=tvm_target))
    library.parent.mkdir(parents=True, exist_ok=True)
    run_step(target_name, "export", progress, lambda: executable.export_library(str(library), **export_options))
    return {
        "library": library.name,
        "tvm_target": str(tvm_target),
        "seconds": round(time.perf_counter() - start, 3),
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
    }
