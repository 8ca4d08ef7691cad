"""qc: a quantizing compiler from float ONNX models to integer-only native code.

Public API (stable within a major version; everything else is private)::

    art = qcompiler.compile("model.onnx", target="x86", calibration="calib.npz")
    art.save("out/")
    m = qcompiler.load("out/")
    y = m.run({"input": x})
    result = qcompiler.search("model.onnx", "calib.npz", "eval.npz", budget=0.6, output="search/")
    report = qcompiler.tune("model.onnx", "calib.npz", "tuning/")   # then compile with tuning_db="tuning/"
"""

import importlib
import logging

from qcompiler.config import CompileConfig
from qcompiler.errors import (
    ArtifactError,
    CalibrationError,
    ModelError,
    OverflowRiskError,
    QcError,
    TargetError,
    UnsupportedOpsError,
)

__all__ = [
    "Artifact",
    "ArtifactError",
    "CalibrationError",
    "CompileConfig",
    "ModelError",
    "Module",
    "OverflowRiskError",
    "QcError",
    "TargetError",
    "UnsupportedOpsError",
    "compile",
    "load",
    "search",
    "tune",
]
__version__ = "0.1.0"

#: libraries whose log records (onnxscript's folder notes, onnx-ir's tracebacks) reach users only when they
#: configure logging themselves (``qc --verbose`` does): without a handler Python would print them on stderr.
for _library in ("onnxscript", "onnx_ir"):
    logging.getLogger(_library).addHandler(logging.NullHandler())

#: public names imported on first use, with their modules (TVM and onnxruntime load with them).
_LAZY = {"Artifact": "qcompiler.api", "Module": "qcompiler.api", "compile": "qcompiler.api", "load": "qcompiler.api",
         "search": "qcompiler.autotune.search", "tune": "qcompiler.autotune.tune"}


def __getattr__(name: str):
    """Import the API (and with it TVM) only when it is first used: passes and tests need neither."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")
