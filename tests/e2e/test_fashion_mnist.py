"""The bundled example: the Fashion-MNIST CNN keeps its accuracy when integer-only, and compiles bit-exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qcompiler
from qcompiler.evaluate import evaluate_accuracy
from tests.e2e.test_bit_exact import assert_bit_exact

data = pytest.importorskip("examples.fashion_mnist.data")
if not data.DATA_DIR.is_dir():
    pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}: apt-get install dataset-fashion-mnist",
                allow_module_level=True)

MODEL = Path(data.__file__).with_name("cnn.onnx")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    data.write_calibration_npz(folder / "calib.npz", n=500)
    data.write_eval_npz(folder / "eval.npz")
    art = qcompiler.compile(MODEL, target="x86", calibration=folder / "calib.npz",
                            input_shapes={"input": (100, 1, 28, 28)})
    return art, folder / "eval.npz"


@pytest.mark.slow
def test_integer_accuracy_within_0_3_points_of_float(artifact):
    art, evaluation = artifact
    accuracy = evaluate_accuracy(art, evaluation)
    assert accuracy["samples"] == 10_000
    assert accuracy["float"] > 0.90
    assert abs(accuracy["integer"] - accuracy["float"]) <= 0.003, accuracy


@pytest.mark.slow
def test_compiled_bit_exact(artifact):
    art, evaluation = artifact
    images = np.load(evaluation)["input"]
    assert_bit_exact(art, [{"input": images[i:i + 100]} for i in (0, 5000, 9900)])
