"""The shared Relax lowering with a target's converter overrides (``kernels``), and the library build around it.

Stopgap until ``relax_lowering.lower`` and ``_build.build_relax_library`` take ``kernels=`` themselves (see
the aarch64 report): when ``lower`` accepts ``kernels`` it is called with them; otherwise the overrides are
installed into ``CONVERTERS`` for the duration of the call, under a lock, and the table is restored after.
Overrides may only replace ops the generic table already has, so the set of supported ops is unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import pathlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import onnx
import tvm

from qcompiler.errors import TargetError
from qcompiler.targets import relax_lowering
from qcompiler.targets._base import Progress
from qcompiler.targets._build import _step
from qcompiler.targets._runtime import region_signature

__all__ = ["build_library", "lower_with_kernels"]

_LOCK = threading.Lock()


@contextlib.contextmanager
def _installed(kernels: Mapping) -> Iterator[None]:
    table = relax_lowering.CONVERTERS
    with _LOCK:
        saved = {key: table[key] for key in kernels}
        table.update(kernels)
        try:
            yield
        finally:
            table.update(saved)


def lower_with_kernels(region: onnx.ModelProto, kernels: Mapping) -> tvm.IRModule:
    """``relax_lowering.lower(region)`` with ``kernels`` (``(domain, op) -> converter``) replacing converters."""
    unknown = sorted(set(kernels) - set(relax_lowering.CONVERTERS))
    if unknown:
        raise TargetError(f"kernel overrides for ops the lowering does not support: {unknown}")
    if "kernels" in inspect.signature(relax_lowering.lower).parameters:
        return relax_lowering.lower(region, kernels=kernels)
    with _installed(kernels):
        return relax_lowering.lower(region)


def build_library(
    target_name: str,
    region: onnx.ModelProto,
    tvm_target: tvm.target.Target,
    library: pathlib.Path,
    kernels: Mapping,
    progress: Progress | None = None,
    **export_options: Any,
) -> dict[str, Any]:
    """As ``_build.build_relax_library``, lowering with ``kernels``; same steps, errors and info dict."""
    start = time.perf_counter()
    inputs, outputs = _step(target_name, "signature", progress, lambda: region_signature(region))
    module = _step(target_name, "lower", progress, lambda: lower_with_kernels(region, kernels))
    executable = _step(target_name, "build", progress, lambda: tvm.compile(module, target=tvm_target))
    library.parent.mkdir(parents=True, exist_ok=True)
    _step(target_name, "export", progress, lambda: executable.export_library(str(library), **export_options))
    return {
        "library": library.name,
        "tvm_target": str(tvm_target),
        "seconds": round(time.perf_counter() - start, 3),
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
    }
