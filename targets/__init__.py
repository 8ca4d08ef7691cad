"""qc's compilation targets: a registry of :class:`Target` s, each a capability table plus hooks.

>>> available_targets()
['aarch64', 'cortex-m4', 'cortex-m55', 'cortex-m7', 'cuda', 'x86']

Adding a target (aarch64, cortex-m, cuda) means a subpackage with a :class:`Target` subclass and one line in
``_REGISTRY``; nothing outside the subpackage branches on the target's name. This package is the only part of
qc that imports tvm.
"""

from __future__ import annotations

import importlib
from typing import Any

from qcompiler.errors import TargetError
from qcompiler.targets._base import Progress, Target

__all__ = [
    "CompiledModule",
    "InputMismatchError",
    "Progress",
    "Target",
    "TensorSpec",
    "available_targets",
    "check_target_name",
    "get_target",
    "set_num_threads",
]

#: names re-exported from the runtime, which imports TVM (seconds): loaded on first use, so that naming and
#: checking targets stays cheap (the CLI refuses an unknown target before loading anything heavy).
_RUNTIME = {"CompiledModule", "InputMismatchError", "TensorSpec", "set_num_threads"}


def __getattr__(name: str):
    """The runtime's names, imported when first asked for."""
    if name in _RUNTIME:
        from qcompiler.targets import _runtime

        return getattr(_runtime, name)
    raise AttributeError(f"module 'qcompiler.targets' has no attribute {name!r}")

#: target name -> "module:class"; imported on first use.
_REGISTRY = {
    "x86": "qcompiler.targets.x86:X86Target",
    "aarch64": "qcompiler.targets.aarch64:Aarch64Target",
    "cuda": "qcompiler.targets.cuda:CudaTarget",
    "cortex-m4": "qcompiler.targets.cortex_m:CortexM4Target",
    "cortex-m7": "qcompiler.targets.cortex_m:CortexM7Target",
    "cortex-m55": "qcompiler.targets.cortex_m:CortexM55Target",
}


def available_targets() -> list[str]:
    """Names accepted by :func:`get_target`."""
    return sorted(_REGISTRY)


def check_target_name(name: str) -> None:
    """Refuse a name that is not a target, listing the targets (cheap: imports no target)."""
    if name not in _REGISTRY:
        raise TargetError(f"unknown target {name!r}; available targets: {', '.join(available_targets())}")


def get_target(name: str, **options: Any) -> Target:
    """The target called ``name``, configured with ``options`` (e.g. ``get_target("x86", mcpu="znver4")``)."""
    check_target_name(name)
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls).from_options(**options)
