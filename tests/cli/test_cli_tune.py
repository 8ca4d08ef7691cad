"""``qc tune`` from the command line, as the README shows it: tune the bundled CNN, then ``qc compile
--tuning-db`` (the manifest names the database); refusals of bad arguments as one message, exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_testkit import run_batch, run_qc

from examples.fashion_mnist.data import load_split

CNN = "examples/fashion_mnist/cnn.onnx"


@pytest.fixture(scope="module")
def work(tmp_path_factory, request):
    work = tmp_path_factory.mktemp("qc_tune")
    images, _ = load_split("test")
    np.savez(work / "calib.npz", input=((images[:64] / 255.0 - 0.5) / 0.5).astype(np.float32)[:, None])
    (work / "cnn.onnx").write_bytes((request.config.rootpath / CNN).read_bytes())
    return work


CASES = {
    "mcu_target": (["tune", "cnn.onnx", "--calib", "calib.npz", "--target", "cortex-m4"],
                   "kernels are timed for --target x86"),
    "no_calib": (["tune", "cnn.onnx", "--calib", "nope.npz"], "--calib file 'nope.npz' does not exist"),
    "zero_trials": (["tune", "cnn.onnx", "--calib", "calib.npz", "--trials", "0"], "must be positive"),
    "compile_without_db": (["compile", "cnn.onnx", "--calib", "calib.npz", "--tuning-db", "nodb", "-o", "o"],
                           "holds no tuning database"),
    "aarch64_here": (["tune", "cnn.onnx", "--calib", "calib.npz", "--target", "aarch64"],
                     "aarch64 code does not run on this x86_64 host"),
    "key_without_tracker": (["tune", "cnn.onnx", "--calib", "calib.npz", "--rpc-key", "phone"], "go together"),
    "bad_tracker": (["tune", "cnn.onnx", "--calib", "calib.npz", "--rpc-tracker", "9190", "--rpc-key", "phone"],
                    "--rpc-tracker must be host:port"),
    "server_arch": (["rpc-server", "--tracker", "127.0.0.1:9190", "--key", "k", "--emulate", "riscv"],
                    "--emulate must be one of aarch64, host"),
}


def test_bad_arguments_give_one_clear_error(work):
    results = run_batch({name: args for name, (args, _) in CASES.items()}, work)
    for name, (_, message) in CASES.items():
        assert results[name].returncode == 2, (name, results[name].stderr)
        assert message in results[name].stderr and "Traceback" not in results[name].stderr, name
    assert not (work / "tuning").exists() and not (work / "o").exists()


@pytest.mark.slow
def test_tune_then_compile_with_the_database(work):
    tuned = run_qc("tune", "cnn.onnx", "--calib", "calib.npz", "--trials", "8", "--kernels", "1", "--samples", "2",
                   "--db", "tuning", cwd=work)
    assert tuned.returncode == 0, tuned.stderr
    assert "qc compile cnn.onnx --calib calib.npz --tuning-db tuning" in tuned.stdout
    report = json.loads((work / "tuning" / "tune.json").read_text())
    (row,) = report["kernels"]
    assert row["kernel"][:20] in tuned.stdout and report["samples"] == 2
    assert row["trials"] == 8 and row["default_seconds"] > 0 and row["tuned_seconds"] > 0
    assert row["speedup"] == pytest.approx(row["default_seconds"] / row["tuned_seconds"], abs=5e-4)
    kept = row["status"] == "kept"  # only a faster schedule, and only after the bit-exact check
    assert kept == (row["speedup"] > 1.0) or row["status"].startswith("refused")
    assert report["records"] == int(kept)
    compiled = run_qc("compile", "cnn.onnx", "--calib", "calib.npz", "--tuning-db", "tuning", "-o", "out", cwd=work)
    assert compiled.returncode == 0, compiled.stderr
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["library"]["tuning_db"]["records"] == report["records"]
