"""A corpus of hostile inputs: each gets exit status 2, one ``error:`` line naming the file, node, tensor or
dtype at fault, no traceback, and nothing left on disk (see ``test_cli_errors.py`` for the everyday mistakes).

All commands run in one :func:`cli_testkit.run_batch` (one TVM import); the corpus is written by
:func:`write_corpus`, one small file per case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_testkit import Result, run_batch
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from tests.e2e.zoo import build_tiny_cnn

#: case name -> (qc arguments, fragments the one error message must contain)
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def case(name: str, *args: str, expect: tuple[str, ...]) -> None:
    CASES[name] = (args, expect)


def compile_args(model: str, calib: str = "calib.npz") -> tuple[str, ...]:
    return ("compile", model, "--calib", calib)


# -- the model files -------------------------------------------------------------------------------------

for dtype in ("float64", "bfloat16", "float16", "string"):
    case(f"input_{dtype}", *compile_args(f"{dtype}.onnx"),
         expect=(f"{dtype}.onnx: graph input 'input' is {dtype}", "export the model in float32"))
case("empty_file", *compile_args("empty.onnx"), expect=("empty.onnx is empty (0 bytes)",))
case("random_bytes", *compile_args("random.onnx"), expect=("random.onnx is not a readable ONNX model",))
case("directory_as_model", *compile_args("folder.onnx"), expect=("folder.onnx",))
case("empty_op_type", *compile_args("empty_op.onnx"),
     expect=("empty_op.onnx: node 1 ('nameless_op', outputs ['hidden']) has an empty op_type",))
case("no_nodes", *compile_args("no_nodes.onnx"), expect=("no_nodes.onnx: the graph has no nodes",))
case("unknown_rank", *compile_args("unknown_rank.onnx"), expect=("graph input 'input' has unknown rank",))
case("negative_inner_dim", *compile_args("negative_dim.onnx"),
     expect=("input 'input' has a dynamic shape [1,1,?,16]", "--input-shape input=1,1,1,16"))
case("zero_size_weight", *compile_args("zero_weight.onnx", "vector_calib.npz"),
     expect=("node 'empty_matmul' (MatMul) computes the empty tensor 'y' of shape [1, 0]", "'w' [8, 0]"))
case("external_data_outside", *compile_args("external_outside.onnx", "vector_calib.npz"),
     expect=("external_outside.onnx", "'w'"))
case("external_data_missing", *compile_args("external_missing.onnx", "vector_calib.npz"),
     expect=("external_missing.onnx", "'w'", "missing_weights.bin"))
case("future_opset", *compile_args("opset99.onnx", "vector_calib.npz"), expect=("opset99.onnx", "99"))
case("custom_domain_op", *compile_args("custom_op.onnx", "vector_calib.npz"),
     expect=("cannot be made integer-only", "vendor_gelu"))
case("cycle", *compile_args("cycle.onnx", "vector_calib.npz"), expect=("cycle.onnx fails the ONNX checker",))
case("duplicate_output", *compile_args("duplicate.onnx", "vector_calib.npz"),
     expect=("duplicate.onnx fails the ONNX checker", "'twice'"))
case("huge_input_shape", *compile_args("tiny.onnx"), "--input-shape", "input=100000000000,1,16,16",
     expect=("input",))

# -- the calibration files -------------------------------------------------------------------------------

case("calib_inf", *compile_args("tiny.onnx", "inf.npz"), expect=("input 'input' holds NaN/Inf in sample(s) 2",))
case("calib_rank_one", *compile_args("tiny.onnx", "rank_one.npz"), expect=("input 'input'", "(1, 16, 16)"))
case("calib_object_array", *compile_args("tiny.onnx", "objects.npz"), expect=("objects.npz",))
case("calib_not_npz", *compile_args("tiny.onnx", "not_npz.npz"), expect=("not_npz.npz",))
case("calib_missing", *compile_args("tiny.onnx", "absent.npz"), expect=("absent.npz",))

# -- running an artifact ---------------------------------------------------------------------------------

case("run_batch_mismatch", "run", "artifact", "--input", "batch_of_two.npz", "--output", "y.npz",
     expect=("input 'input' has shape [2, 1, 16, 16]", "compiled for [1, 1, 16, 16]",
             "--input-shape input=2,1,16,16"))


def retyped(tiny: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(tiny)
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    return model


def vector_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 21,
                 out_shape: tuple[int, ...] = (1, 8)) -> onnx.ModelProto:
    """``x [1, 8] -> y`` through ``nodes``."""
    graph = oh.make_graph(nodes, "hostile", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def external(path: Path, location: str) -> None:
    """A MatMul whose weight ``w`` lives in external data at ``location`` (relative to the model)."""
    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    onnx.save(vector_model([oh.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], [weight]), str(path),
              save_as_external_data=False)


def write_corpus(work: Path) -> None:
    tiny_path = build_tiny_cnn(work / "tiny.onnx")
    tiny = onnx.load(str(tiny_path))
    types = {"float64": TensorProto.DOUBLE, "bfloat16": TensorProto.BFLOAT16, "float16": TensorProto.FLOAT16,
             "string": TensorProto.STRING}
    for name, elem_type in types.items():
        onnx.save(retyped(tiny, elem_type), str(work / f"{name}.onnx"))
    (work / "empty.onnx").write_bytes(b"")
    (work / "random.onnx").write_bytes(np.random.default_rng(1).bytes(512))
    (work / "folder.onnx").mkdir()
    empty_op = onnx.ModelProto()
    empty_op.CopyFrom(tiny)
    empty_op.graph.node[1].op_type = ""
    empty_op.graph.node[1].name = "nameless_op"
    empty_op.graph.node[1].output[0] = "hidden"
    empty_op.graph.node[2].input[0] = "hidden"
    onnx.save(empty_op, str(work / "empty_op.onnx"))
    no_nodes = onnx.ModelProto()
    no_nodes.CopyFrom(tiny)
    del no_nodes.graph.node[:]
    onnx.save(no_nodes, str(work / "no_nodes.onnx"))
    unknown_rank = retyped(tiny, TensorProto.FLOAT)
    unknown_rank.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(unknown_rank, str(work / "unknown_rank.onnx"))
    negative = retyped(tiny, TensorProto.FLOAT)
    dims = negative.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = 1
    dims[2].Clear()
    dims[2].dim_value = -1
    onnx.save(negative, str(work / "negative_dim.onnx"))
    zero = numpy_helper.from_array(np.zeros((8, 0), np.float32), "w")
    onnx.save(vector_model([oh.make_node("MatMul", ["x", "w"], ["y"], name="empty_matmul")], [zero],
                           out_shape=(1, 0)), str(work / "zero_weight.onnx"))
    external(work / "external_outside.onnx", "../../../../etc/passwd")
    external(work / "external_missing.onnx", "missing_weights.bin")
    relu = [oh.make_node("Relu", ["x"], ["y"], name="relu")]
    onnx.save(vector_model(relu, [], opset=99), str(work / "opset99.onnx"))
    custom = vector_model([oh.make_node("Gelu", ["x"], ["y"], name="vendor_gelu", domain="com.vendor")], [])
    custom.opset_import.append(oh.make_opsetid("com.vendor", 1))
    onnx.save(custom, str(work / "custom_op.onnx"))
    cycle = [oh.make_node("Add", ["x", "b"], ["a"], name="first"), oh.make_node("Relu", ["a"], ["b"], name="second"),
             oh.make_node("Relu", ["b"], ["y"], name="third")]
    onnx.save(vector_model(cycle, []), str(work / "cycle.onnx"))
    twice = [oh.make_node("Relu", ["x"], ["twice"], name="first"), oh.make_node("Neg", ["x"], ["twice"], name="second"),
             oh.make_node("Relu", ["twice"], ["y"], name="third")]
    onnx.save(vector_model(twice, []), str(work / "duplicate.onnx"))

    rng = np.random.default_rng(0)
    samples = rng.standard_normal((8, 1, 16, 16)).astype(np.float32)
    np.savez(work / "calib.npz", input=samples)
    np.savez(work / "vector_calib.npz", x=rng.standard_normal((8, 1, 8)).astype(np.float32))
    with_inf = samples.copy()
    with_inf[2, 0, 0, 0] = np.inf
    np.savez(work / "inf.npz", input=with_inf)
    np.savez(work / "rank_one.npz", input=samples.reshape(-1))
    np.savez(work / "objects.npz", input=np.array([object(), "text"], dtype=object))
    (work / "not_npz.npz").write_text("input,1,2,3\n")
    np.savez(work / "batch_of_two.npz", input=samples[:2])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Result]]:
    work = tmp_path_factory.mktemp("hostile")
    write_corpus(work)
    commands = {"artifact": ("compile", "tiny.onnx", "--calib", "calib.npz", "-o", "artifact")}
    commands |= {name: (*args, "-o", f"out_{name}") if args[0] == "compile" else args
                 for name, (args, _) in CASES.items()}
    return work, run_batch(commands, work)


def test_the_artifact_for_the_run_cases_compiles(corpus):
    work, results = corpus
    assert results["artifact"].returncode == 0, results["artifact"].stderr
    assert (work / "artifact" / "manifest.json").exists()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_gives_one_clear_error_and_leaves_nothing(name, corpus):
    work, results = corpus
    done = results[name]
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "Warning" in line or "[W:" in line]
    assert warnings == [], done.stderr  # no library warning leaks
    message = " ".join(done.stderr.split())
    for fragment in CASES[name][1]:
        assert fragment in message, (fragment, message)
    assert not (work / f"out_{name}").exists()
    assert not list(work.glob(f".out_{name}*")), "a staging directory was left behind"
    assert not (work / "y.npz").exists()


def test_run_cases_left_the_artifact_intact(corpus):
    work, _ = corpus
    manifest = json.loads((work / "artifact" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 1, 16, 16]
