"""``qc compile`` with the transformer options, and ``qc inspect`` listing each block's integer methods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_testkit import run_qc

data = pytest.importorskip("examples.fashion_mnist.data")
if not data.DATA_DIR.is_dir():
    pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}", allow_module_level=True)

VIT = Path(data.__file__).with_name("vit.onnx")
OPTIONS = ("--softmax", "shift", "--softmax-quant", "log2", "--attn-bits", "4", "--gelu", "poly", "--bits", "w8a8",
           "--no-reparam")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli_vit")
    data.write_calibration_npz(work / "calib.npz", n=16)
    done = run_qc("compile", str(VIT), "-o", "vit", "--calib", "calib.npz", "--input-shape", "input=1,1,28,28",
                  *OPTIONS, cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "vit"


@pytest.mark.slow
def test_options_reach_the_saved_config(artifact):
    config = json.loads((artifact / "manifest.json").read_text())["config"]
    assert (config["softmax"], config["softmax_quant"], config["attention_bits"], config["gelu"]) == (
        "shift", "log2", 4, "poly")
    assert (config["weight_bits"], config["activation_bits"], config["reparam"]) == (8, 8, False)


@pytest.mark.slow
def test_inspect_shows_each_blocks_methods_and_constants(artifact):
    done = run_qc("inspect", str(artifact), cwd=artifact.parent)
    assert done.returncode == 0, done.stderr
    assert "integer nonlinearities per block" in done.stdout
    report = json.loads((artifact / "report.json").read_text())
    blocks = {b["block"]: {e["op"]: e for e in b["nonlinear"]} for b in report["blocks"]}
    for name in (f"blocks.{i}" for i in range(4)):
        assert name in done.stdout
        methods = blocks[name]
        assert methods["Softmax"]["method"] == "shift" and methods["Gelu"]["method"] == "poly"
        assert methods["LayerNormalization"]["method"] == "isqrt"
        assert methods["Softmax"]["constants"] and methods["Gelu"]["constants"]  # fitted per layer
        assert methods["Softmax"]["error"] is not None  # chosen on calibration samples
