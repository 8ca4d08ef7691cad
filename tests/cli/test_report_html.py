"""``qc compile --eval`` writes the per-layer error report: ``qc inspect --errors`` prints it, and
``report.html`` renders offline in a real headless chromium with its plots drawn.

Without chromium the browser test skips; under ``CI=true`` that skip fails (``tests/conftest.py``), as
``.ci/setup`` installs chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from cli_testkit import Result, run_qc

from qcompiler.report_html import PALETTE
from tests.e2e.zoo import build_tiny_cnn

COMPILE = ("compile", "tiny.onnx", "--calib", "calib.npz", "--force")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report_html")
    build_tiny_cnn(work / "tiny.onnx")
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((8, 1, 16, 16)).astype(np.float32)
    np.savez(work / "calib.npz", input=samples)
    np.savez(work / "eval.npz", input=samples, labels=rng.integers(0, 10, len(samples)))
    return work


@pytest.fixture(scope="module")
def results(work) -> dict[str, Result]:
    """The artifact compiled with ``--eval`` (``evaluated``) and without (``plain``), then inspected."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        evaluated = pool.submit(run_qc, *COMPILE, "--eval", "eval.npz", "-o", "evaluated", cwd=work)
        plain = pool.submit(run_qc, *COMPILE, "-o", "plain", cwd=work)
        compiled = {"compile_evaluated": evaluated.result(), "compile_plain": plain.result()}
    for done in compiled.values():
        assert done.returncode == 0, done.stderr
    with ThreadPoolExecutor(max_workers=2) as pool:
        inspected = {f"inspect_{name}": pool.submit(run_qc, "inspect", name, "--errors", cwd=work)
                     for name in ("evaluated", "plain")}
        return {**compiled, **{name: done.result() for name, done in inspected.items()}}


@pytest.fixture(scope="module")
def layers(work, results) -> list[dict]:
    return json.loads((work / "evaluated" / "report.json").read_text())["layer_errors"]["layers"]


def table_layers(stdout: str) -> list[str]:
    """The layer column of each row of a printed errors table, top to bottom."""
    return [m[1] for m in re.finditer(r"^│\s*\d+\s*│\s*(\S+)", stdout, re.MULTILINE)]


def test_compile_prints_the_five_worst_layers_and_hashes_the_page(work, results, layers):
    done = results["compile_evaluated"]
    assert "worst layers" in done.stdout and "evaluated/report.html" in done.stdout
    assert table_layers(done.stdout) == [row["owner"] for row in layers[:5]]
    manifest = json.loads((work / "evaluated" / "manifest.json").read_text())
    assert "report.html" in manifest["files"]
    assert not (work / "plain" / "report.html").exists()
    assert "report.html" not in json.loads((work / "plain" / "manifest.json").read_text())["files"]


def test_inspect_errors_prints_every_layer_worst_first(results, layers):
    done = results["inspect_evaluated"]
    assert done.returncode == 0, done.stderr
    assert "per-layer error on 8 samples, worst first" in done.stdout
    for column in ("SQNR dB", "rel. L2", "float range", "integer range", "weight range"):
        assert column in done.stdout
    assert table_layers(done.stdout) == [row["owner"] for row in layers]
    sqnrs = [row["sqnr_db"] for row in layers]
    assert sqnrs == sorted(sqnrs) and len(layers) > 10
    assert f"{layers[0]['sqnr_db']:.1f}" in done.stdout


def test_inspect_errors_without_eval_is_one_clear_error(results):
    done = results["inspect_plain"]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "compiled without evaluation data" in done.stderr and "--eval eval.npz" in done.stderr


def test_the_page_is_self_contained(work, results):
    page = (work / "evaluated" / "report.html").read_text()
    assert "<svg" in page and "Layers, worst first" in page and "Top-1 accuracy on 8 samples" in page
    assert not re.search(r"<script|<link|<img|<iframe|\b(src|href)\s*=|url\(|@import", page)


def color_pixels(image: np.ndarray, color: str, tolerance: int = 8) -> int:
    """Pixels of ``image`` (H x W x 3) within ``tolerance`` of the ``#rrggbb`` ``color`` in every channel."""
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(image.astype(int) - rgb) <= tolerance, axis=-1)))


def test_chromium_renders_the_plots(work, results, tmp_path):
    from PIL import Image

    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/setup does)")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
                    (work / "evaluated" / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2000, 1200)
    for name, color in PALETTE.items():  # SQNR bars (worst five in red), both range plots
        assert color_pixels(image, color) > 2000, name
    assert np.mean(np.any(image < 250, axis=-1)) > 0.05  # far from a blank page


def test_inspect_recomputes_the_errors_of_an_artifact_compiled_without_eval(work, results, layers):
    done = run_qc("inspect", "plain", "--errors", "--eval", "eval.npz", "--model", "tiny.onnx", "--calib",
                  "calib.npz", cwd=work)
    assert done.returncode == 0, done.stderr
    assert table_layers(done.stdout) == [row["owner"] for row in layers]  # same model, data: same table
    assert not (work / "plain" / "report.html").exists()  # the artifact is left as it was


@pytest.mark.parametrize(("extra", "message"), [
    (["--calib", "other.npz"], "does not reproduce plain/model.int.onnx"),
    ([], "takes --errors with all of --eval, --model and --calib"),
])
def test_recomputing_with_other_data_or_missing_options_is_one_clear_error(work, results, extra, message):
    np.savez(work / "other.npz", input=np.random.default_rng(1).standard_normal((8, 1, 16, 16)).astype(np.float32))
    done = run_qc("inspect", "plain", "--errors", "--eval", "eval.npz", "--model", "tiny.onnx", *extra, cwd=work)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] and message in done.stderr
