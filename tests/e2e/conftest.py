"""Session-scoped compiled artifacts shared by the end-to-end tests (compiling is the slow part)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qcompiler
from tests.e2e.zoo import LIGHT_DIR, build_tiny_cnn, random_calibration


@pytest.fixture(scope="session")
def tiny_cnn_path(tmp_path_factory):
    return build_tiny_cnn(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_calibration():
    return {"input": np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="session")
def tiny_artifact(tiny_cnn_path, tiny_calibration):
    return qcompiler.compile(tiny_cnn_path, target="x86", calibration=tiny_calibration,
                             input_shapes={"input": (1, 1, 16, 16)})


def compile_light(name: str) -> qcompiler.Artifact:
    path = LIGHT_DIR / f"{name}.onnx"
    return qcompiler.compile(path, target="x86", calibration=random_calibration(onnx.load(str(path)), samples=4))
