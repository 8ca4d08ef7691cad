"""``qc search`` from the command line: a search on the bundled CNN whose chosen.json ``qc compile --config``
accepts, and refusals of bad arguments as one message with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_testkit import run_batch, run_qc

from examples.fashion_mnist.data import load_split

CNN = "examples/fashion_mnist/cnn.onnx"


@pytest.fixture(scope="module")
def work(tmp_path_factory, request):
    work = tmp_path_factory.mktemp("qc_search")
    images, labels = load_split("test")
    x = ((images[:300] / 255.0 - 0.5) / 0.5).astype(np.float32)[:, None]
    np.savez(work / "calib.npz", input=x[:64])
    np.savez(work / "eval.npz", input=x[64:], labels=labels[64:300])
    (work / "cnn.onnx").write_bytes((request.config.rootpath / CNN).read_bytes())
    return work


BASE = ["search", "cnn.onnx", "--calib", "calib.npz", "--eval", "eval.npz"]
CASES = {
    "missing_eval": (["search", "cnn.onnx", "--calib", "calib.npz", "--eval", "nope.npz"],
                     "--eval file 'nope.npz' does not exist"),
    "bad_method": ([*BASE, "--method", "annealing"], "method 'annealing' is not one of ilp, random"),
    "bad_widths": ([*BASE, "--widths", "4,eight"], "--widths '4,eight': expected comma-separated integers"),
    "bad_target": ([*BASE, "--target", "z80"], "unknown target 'z80'"),
    "bad_budget": ([*BASE, "--budget", "1.5"], r"budget 1.5 must be a fraction in (0, 1]"),
    "prior_without_trials": ([*BASE, "--method", "xgboost", "--prior", "."], "prior . holds no recipe trials"),
    "prior_for_the_ilp": ([*BASE, "--prior", "."], "prior trials serve the recipe searches"),
    "tracker_without_latency": ([*BASE, "--rpc-tracker", "127.0.0.1:9190", "--rpc-key", "board"],
                                "serve --objective latency only"),
    "latency_on_an_mcu": ([*BASE, "--objective", "latency", "--target", "cortex-m4"],
                          "kernels are timed for --target x86 and aarch64"),
    "unreachable_tracker": ([*BASE, "--objective", "latency", "--target", "aarch64", "--rpc-tracker", "127.0.0.1:1",
                             "--rpc-key", "board"], "127.0.0.1:1"),
}


@pytest.fixture(scope="module")
def refusals(work):
    return run_batch({name: args for name, (args, _) in CASES.items()}, work)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_arguments_give_one_clear_error(name, refusals, work):
    result = refusals[name]
    assert result.returncode == 2, result.stderr
    assert CASES[name][1] in result.stderr and "Traceback" not in result.stderr
    assert not (work / "search").exists()


def test_search_then_compile_the_chosen_config(work):
    searched = run_qc(*BASE, "--samples", "100", "-o", "found", cwd=work)
    assert searched.returncode == 0, searched.stderr
    assert "(chosen)" in searched.stdout and "qc compile cnn.onnx --calib calib.npz --config found/chosen.json" \
        in searched.stdout
    chosen = json.loads((work / "found" / "chosen.json").read_text())
    assert {entry["weight_bits"] for entry in chosen["layers"].values()} == {4, 8}
    compiled = run_qc("compile", "cnn.onnx", "--calib", "calib.npz", "--config", "found/chosen.json", "-o", "out",
                      cwd=work)
    assert compiled.returncode == 0, compiled.stderr
    assert "bytes with sub-8-bit weights packed" in compiled.stdout
    inspected = run_qc("inspect", "out", cwd=work)
    assert "w4a8" in inspected.stdout and "w8a8" in inspected.stdout


def test_recipe_search_then_compile_the_chosen_recipe(work):
    searched = run_qc(*BASE, "--samples", "100", "--method", "grid", "--trials", "2", "--sensitivity", "proxy",
                      "-o", "recipes", cwd=work)
    assert searched.returncode == 0, searched.stderr
    assert "chosen recipe: calibration_set=large, calibration=minmax, weights=per_channel, bits=" in searched.stdout
    compiled = run_qc("compile", "cnn.onnx", "--calib", "calib.npz", "--config", "recipes/chosen.json", "-o",
                      "recipe_out", cwd=work)
    assert compiled.returncode == 0, compiled.stderr
