"""The ``qc`` command line, run in subprocesses as users run it.

Every bad input must exit with status 2 and one ``error:`` message naming the problem, with no Python
traceback and no output directory left behind. The happy path compiles once per module, with the installed
script; the error cases run through :func:`cli_testkit.run_batch` (one TVM import for all of them), and one
of them through the script too, to show both report errors identically. The module fixture starts all
independent commands at once; the tests only read their results.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_testkit import Result, run_batch, run_qc
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from qcompiler.qmath import dequantize
from tests.e2e.zoo import build_tiny_cnn

SHAPE = ("--input-shape", "input=1,1,16,16")
#: the initializer of the tiny CNN that the NaN-weights case breaks.
NAN_INITIALIZER = "depthwise.weight"
ARTIFACT_FILES = ["manifest.json", "model.int.onnx", "model.qdq.onnx", "model.so", "report.html", "report.json"]


@dataclass(frozen=True)
class Case:
    """A ``qc`` command that must fail, and the fragments its one error message must contain.

    ``usage``: a command-line usage error, reported by typer/click as ``Usage: ...`` plus ``Error: ...``
    rather than by qc as ``error: ...``.
    """

    args: tuple[str, ...]
    expect: tuple[str, ...]
    usage: bool = False


def compile_case(model: str, *options: str, expect: tuple[str, ...]) -> Case:
    return Case(("compile", model, *options), expect)


CASES = {
    "malformed_onnx": compile_case("random.onnx", "--calib", "calib.npz", *SHAPE,
                                   expect=("random.onnx is not a readable ONNX model",)),
    "truncated_onnx": compile_case("truncated.onnx", "--calib", "calib.npz", *SHAPE,
                                   expect=("truncated.onnx is not a readable ONNX model", "truncated or corrupt")),
    "missing_model": compile_case("absent.onnx", "--calib", "calib.npz", *SHAPE,
                                  expect=("model file not found: absent.onnx",)),
    "calib_wrong_name": compile_case("tiny.onnx", "--calib", "wrong_name.npz", *SHAPE,
                                     expect=("missing input(s): 'input'", "unexpected input(s)", "'image'",
                                             "The model expects", "'input': float32 samples of shape (1, 16, 16)")),
    "calib_wrong_shape": compile_case("tiny.onnx", "--calib", "wrong_shape.npz", *SHAPE,
                                      expect=("each sample must have shape (1, 16, 16)", "samples of shape (3, 16, 16)")),
    "calib_wrong_dtype": compile_case("tiny.onnx", "--calib", "int32.npz", *SHAPE,
                                      expect=("input 'input': dtype must be float32, got int32",)),
    "calib_empty": compile_case("tiny.onnx", "--calib", "empty.npz", *SHAPE,
                                expect=("the calibration set is empty (0 samples)",)),
    "calib_nan": compile_case("tiny.onnx", "--calib", "nan.npz", *SHAPE,
                              expect=("input 'input' holds NaN/Inf in sample(s) 3",)),
    "no_calib": compile_case("tiny.onnx", *SHAPE, expect=("calibration data is required", "--calib")),
    "dynamic_input": compile_case("dynamic_hw.onnx", "--calib", "calib.npz",
                                  expect=("input 'input' has a dynamic shape [batch,1,height,width]",
                                          "--input-shape input=1,1,1,1")),
    "output_exists": compile_case("tiny.onnx", "--calib", "calib.npz", *SHAPE,
                                  expect=("already exists", "--force")),
    "unsupported_ops": compile_case("unsupported.onnx", "--calib", "unsupported.npz",
                                    expect=("4 node(s) cannot be made integer-only",
                                            "Cos x3 (cos_first, cos_second, cos_third)",
                                            "Einsum x1 (einsum_copy)")),
    "nan_weights": compile_case("nan_weights.onnx", "--calib", "calib.npz", *SHAPE,
                                expect=("weights hold NaN or Inf", f"{NAN_INITIALIZER} (1 non-finite of")),
    "unknown_target": compile_case("tiny.onnx", "--calib", "calib.npz", *SHAPE, "--target", "arm",
                                   expect=("unknown target 'arm'", "available targets: aarch64, cortex-m4")),
    "unknown_method": compile_case("tiny.onnx", "--calib", "calib.npz", *SHAPE, "--calibration-method", "kl",
                                   expect=("calibration_method 'kl' is not one of minmax, percentile, entropy, mse",)),
    "bad_input_shape": compile_case("tiny.onnx", "--calib", "calib.npz", "--input-shape", "input=1,x",
                                    expect=("--input-shape 'input=1,x'", "name=d0,d1,...")),
    "unknown_config_key": compile_case("tiny.onnx", "--calib", "calib.npz", *SHAPE, "--config", "typo.json",
                                       expect=("unknown config key(s) ['calib_method']", "valid keys")),
    "run_not_an_artifact": Case(("run", "calib_dir", "--input", "x.npz", "--output", "y.npz"),
                                ("calib_dir is not a qc artifact (no manifest.json)", "qc compile")),
    "inspect_not_an_artifact": Case(("inspect", "calib_dir"), ("calib_dir is not a qc artifact",)),
    "inspect_incomplete_artifact": Case(("inspect", "manifest_only"), ("report.json",)),
    "mistyped_config_value": compile_case("tiny.onnx", "--calib", "calib.npz", *SHAPE, "--config", "mistyped.json",
                                          expect=("percentile",)),
    "unknown_option": Case(("compile", "tiny.onnx", "--bogus"), ("--bogus",), usage=True),
    "missing_option": Case(("run", "calib_dir"), ("--input",), usage=True),
    "zero_threads": Case(("run", "calib_dir", "--input", "x.npz", "--output", "y.npz", "--threads", "0"),
                         ("--threads",), usage=True),
    "unknown_command": Case(("frobnicate",), ("frobnicate",), usage=True),
}


def flat(text: str) -> str:
    """``text`` with every run of whitespace made one space (rich may still wrap long messages)."""
    return " ".join(text.split())


def output_args(name: str, case: Case) -> tuple[str, ...]:
    return (*case.args, "-o", f"out_{name}") if case.args[0] == "compile" else case.args


# -- inputs ----------------------------------------------------------------------------------------------


def write_inputs(work: Path) -> None:
    """The tiny CNN, broken variants of it, and calibration files good and bad, all in ``work``."""
    tiny = build_tiny_cnn(work / "tiny.onnx")
    good = tiny.read_bytes()
    (work / "random.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    (work / "truncated.onnx").write_bytes(good[: len(good) // 2])
    write_nan_weights(tiny, work / "nan_weights.onnx")
    write_dynamic_hw(tiny, work / "dynamic_hw.onnx")
    write_unsupported(work / "unsupported.onnx")

    rng = np.random.default_rng(0)
    samples = rng.standard_normal((8, 1, 16, 16)).astype(np.float32)
    with_nan = samples.copy()
    with_nan[3, 0, 5, 5] = np.nan
    np.savez(work / "calib.npz", input=samples)
    np.savez(work / "eval.npz", input=samples, labels=rng.integers(0, 10, len(samples)))
    np.savez(work / "x.npz", input=samples[:1])
    np.savez(work / "wrong_name.npz", image=samples)
    np.savez(work / "wrong_shape.npz", input=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    np.savez(work / "int32.npz", input=samples.astype(np.int32))
    np.savez(work / "empty.npz", input=samples[:0])
    np.savez(work / "nan.npz", input=with_nan)
    np.savez(work / "unsupported.npz", x=rng.standard_normal((4, 8)).astype(np.float32))
    (work / "typo.json").write_text(json.dumps({"calib_method": "minmax"}))
    (work / "mistyped.json").write_text(json.dumps({"percentile": "high"}))
    (work / "calib_dir").mkdir()
    (work / "manifest_only").mkdir()  # a manifest that lists a report.json the directory lacks
    (work / "manifest_only" / "manifest.json").write_text(json.dumps({"format": 1, "files": {"report.json": "0"}}))
    for existing in ("out_output_exists", "happy"):  # pre-existing outputs: refused, then replaced with --force
        (work / existing).mkdir()
        (work / existing / "keep.txt").write_text("user data")


def write_nan_weights(tiny: Path, path: Path) -> None:
    model = onnx.load(str(tiny))
    init = next(t for t in model.graph.initializer if t.name == NAN_INITIALIZER)
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(path))


def write_dynamic_hw(tiny: Path, path: Path) -> None:
    """The tiny CNN with dynamic height and width besides its dynamic batch: no default can fix those."""
    model = onnx.load(str(tiny))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, name in ((2, "height"), (3, "width")):
        dims[index].Clear()
        dims[index].dim_param = name
    onnx.save(model, str(path))


def write_unsupported(path: Path) -> None:
    """``x [1, 8]`` through three Cos, an Einsum and a (supported) Relu."""
    nodes = [
        oh.make_node("Cos", ["x"], ["a"], name="cos_first"),
        oh.make_node("Relu", ["a"], ["b"], name="relu"),
        oh.make_node("Cos", ["b"], ["c"], name="cos_second"),
        oh.make_node("Einsum", ["c"], ["d"], name="einsum_copy", equation="ij->ij"),
        oh.make_node("Cos", ["d"], ["y"], name="cos_third"),
    ]
    graph = oh.make_graph(nodes, "unsupported", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]), str(path))


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    write_inputs(work)
    return work


#: no --input-shape: the dynamic batch, the only dynamic dim, defaults to 1.
HAPPY = ("compile", "tiny.onnx", "-o", "happy", "--calib", "calib.npz", "--eval", "eval.npz", "--force")
#: the error case also run through the installed script (its own output directory name).
SCRIPT_CASE = "dynamic_input"


@pytest.fixture(scope="module")
def results(work) -> dict[str, Result]:
    """Every independent ``qc`` command of this module, run concurrently: name -> result."""
    commands = {name: output_args(name, case) for name, case in CASES.items()}
    commands |= {"help": ("--help",), "version": ("--version",)}
    narrow = {"targets": ("targets",), "compile_help": ("compile", "--help")}  # output to a pipe, COLUMNS unset
    with ThreadPoolExecutor(max_workers=3) as pool:
        happy = pool.submit(run_qc, *HAPPY, cwd=work)  # the longest: first
        batch = pool.submit(run_batch, commands, work)
        script = pool.submit(run_qc, *output_args(f"{SCRIPT_CASE}_script", CASES[SCRIPT_CASE]), cwd=work)
        piped = {name: pool.submit(run_qc, *args, cwd=work, wide=False) for name, args in narrow.items()}
    return {**batch.result(), "happy": happy.result(), "script": script.result(),
            **{name: done.result() for name, done in piped.items()}}


@pytest.fixture(scope="module")
def artifact(work, results) -> Path:
    done = results["happy"]
    assert done.returncode == 0, done.stderr
    return work / "happy"


# -- errors ----------------------------------------------------------------------------------------------


def assert_one_clean_error(done: Result, case: Case) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.strip().startswith("error:" if not case.usage else "Error")]
    assert len(errors) == 1, done.stderr
    message = flat(done.stderr)
    for fragment in case.expect:
        assert fragment in message, (fragment, message)


def assert_no_output_left(work: Path, name: str) -> None:
    if name == "output_exists":  # the user's directory is untouched
        assert sorted(p.name for p in (work / f"out_{name}").iterdir()) == ["keep.txt"]
    else:
        assert not (work / f"out_{name}").exists()
    assert not list(work.glob(f".out_{name}*")), "a hidden staging directory was left behind"


@pytest.mark.parametrize(
    "name",
    list(CASES),
)
def test_bad_input_gives_one_clear_error(name, work, results):
    assert_one_clean_error(results[name], CASES[name])
    assert_no_output_left(work, name)


def test_the_installed_script_reports_errors_like_the_batch(work, results):
    assert results["script"] == results[SCRIPT_CASE]
    assert_no_output_left(work, f"{SCRIPT_CASE}_script")


# -- the happy path --------------------------------------------------------------------------------------


def test_compile_writes_the_artifact_and_prints_the_op_table(artifact, results):
    done = results["happy"]
    assert "Traceback" not in done.stderr
    for fragment in ("op type", "nodes", "integer", "Conv", "Softmax", "weights:", "accuracy on 8 samples"):
        assert fragment in done.stdout, fragment
    assert sorted(p.name for p in artifact.iterdir()) == ARTIFACT_FILES  # keep.txt is gone: --force replaced it
    assert not list(artifact.parent.glob(".happy*"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["format"] == 1 and sorted(manifest["files"]) == sorted(set(ARTIFACT_FILES) - {"manifest.json"})
    assert [e["name"] for e in manifest["inputs"]] == ["input"]
    assert manifest["inputs"][0]["shape"] == [1, 1, 16, 16]
    report = json.loads((artifact / "report.json").read_text())
    assert report["accuracy"]["samples"] == 8


def test_run_writes_outputs_equal_to_the_python_api(work, artifact):
    done = run_qc("run", "happy", "--input", "x.npz", "--output", "y.npz", "--integer", "--threads", "2", cwd=work)
    assert done.returncode == 0, done.stderr
    import qcompiler

    module = qcompiler.load(artifact)
    with np.load(work / "x.npz") as x, np.load(work / "y.npz") as y:
        out = module.outputs[0]
        assert sorted(y.files) == sorted(["probs", out["int_name"]])  # the names run_integer uses
        expected = module.run({"input": x["input"]})["probs"]
        np.testing.assert_array_equal(y["probs"], expected)
        assert y[out["int_name"]].dtype == np.dtype(out["int_dtype"])
        np.testing.assert_array_equal(dequantize(y[out["int_name"]], out["scale"], out["zero_point"]), expected)


def test_inspect_lists_the_nodes(work, artifact):
    done = run_qc("inspect", "happy", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "target x86" in done.stdout and "input input: uint8[1, 1, 16, 16]" in done.stdout
    report = json.loads((artifact / "report.json").read_text())
    for node in report["nodes"]:
        assert node["name"] in done.stdout


def test_inspect_json_prints_the_report(work, artifact):
    done = run_qc("inspect", "happy", "--json", cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((artifact / "report.json").read_text())


def test_help_lists_the_commands(results):
    done = results["help"]
    assert done.returncode == 0, done.stderr
    for command in ("compile", "search", "run", "inspect", "targets"):
        assert command in done.stdout


def test_compile_help_shows_every_option_and_its_default(results):
    """Not on a terminal, help is not cut at 80 columns; config options show their defaults; no aliases."""
    done = results["compile_help"]
    assert done.returncode == 0, done.stderr
    for option in ("--calibration-method", "--activation-type", "--input-shape", "--target-option", "--softmax",
                   "--gelu", "--bits", "--attn-bits", "--reparam", "--config"):
        assert option in done.stdout, option
    for default in ("[default: table]", "[default: w8a8]", "[default: minmax]", "[default: x86]"):
        assert default in done.stdout, default
    assert "--calibration_method" not in done.stdout and "--activation_type" not in done.stdout
    assert "…" not in done.stdout


def test_version(results):
    done = results["version"]
    assert done.returncode == 0 and done.stdout.startswith("qc "), (done.stdout, done.stderr)


def test_artifact_directory_is_not_private(artifact):
    assert artifact.stat().st_mode & 0o055 == 0o055  # group and others may read and enter it (umask 022)


def test_targets_lists_x86(results):
    done = results["targets"]
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 3}
    assert {"x86", "aarch64", "cortex-m4", "cuda"} <= set(rows)
    from qcompiler.targets import get_target

    assert f" {get_target('x86').dot_product} " in rows["x86"]  # this host's capability (avx512-vnni, avx2, None)
    assert "…" not in done.stdout
