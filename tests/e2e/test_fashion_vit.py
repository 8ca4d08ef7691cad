"""The bundled Fashion-MNIST ViT: integer-only W8A8 keeps its accuracy, compiles bit-exact, reports its methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import qcompiler
from qcompiler.evaluate import evaluate_accuracy
from qcompiler.verify import integer_region_problems
from tests.e2e.test_bit_exact import assert_bit_exact

data = pytest.importorskip("examples.fashion_mnist.data")
if not data.DATA_DIR.is_dir():
    pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}: apt-get install dataset-fashion-mnist",
                allow_module_level=True)

MODEL = Path(data.__file__).with_name("vit.onnx")
BATCH = 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion_vit")
    data.write_calibration_npz(folder / "calib.npz", n=500)
    data.write_eval_npz(folder / "eval.npz")
    return folder


@pytest.fixture(scope="module")
def artifact(folder):
    return qcompiler.compile(MODEL, target="x86", calibration=folder / "calib.npz",
                             input_shapes={"input": (BATCH, 1, 28, 28)})


@pytest.mark.slow
def test_integer_accuracy_within_half_a_point_of_float(artifact, folder):
    accuracy = evaluate_accuracy(artifact, folder / "eval.npz")
    assert accuracy["samples"] == 10_000
    assert accuracy["float"] > 0.87
    assert abs(accuracy["integer"] - accuracy["float"]) <= 0.005, accuracy


@pytest.mark.slow
def test_compiled_bit_exact(artifact, folder):
    images = np.load(folder / "eval.npz")["input"]
    assert_bit_exact(artifact, [{"input": images[i:i + BATCH]} for i in (0, 9900)])


@pytest.mark.slow
def test_integer_region_has_no_float_op(artifact):
    assert integer_region_problems(ir.serde.deserialize_model(artifact.quantized.int_model)) == []


@pytest.mark.slow
def test_report_lists_each_blocks_nonlinear_methods(artifact, tmp_path):
    artifact.save(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    blocks = {b["block"]: b["nonlinear"] for b in report["blocks"]}
    assert {f"blocks.{i}" for i in range(4)} <= set(blocks)
    for name in (f"blocks.{i}" for i in range(4)):
        ops = sorted(entry["op"] for entry in blocks[name])
        assert ops == ["Gelu", "LayerNormalization", "LayerNormalization", "Softmax"], (name, ops)
