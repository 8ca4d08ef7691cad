"""The target registry, the x86 capability table and options, build/export/reload, and the error paths."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper
from targets_testkit import ONNX_DTYPES, compile_region, node, random_feeds, region, run_ort
from tvm.target import codegen

from qcompiler.errors import ArtifactError, TargetError
from qcompiler.targets import InputMismatchError, Target, available_targets, get_target
from qcompiler.targets.relax_lowering import lower


def small_model():
    nodes = [node("Add", ["a", "b"], ["sum"]), node("Cast", ["sum"], ["wide"], to=ONNX_DTYPES["int32"])]
    return region(nodes, {"a": ("int8", (2, 3)), "b": ("int8", (3,))}, ["sum", "wide"])


def test_registry_lists_x86_and_rejects_unknown_names():
    assert "x86" in available_targets()
    assert isinstance(get_target("x86"), Target)
    with pytest.raises(TargetError, match=r"unknown target 'riscv'.*available targets: .*x86"):
        get_target("riscv")


def test_unknown_option_lists_valid_options():
    with pytest.raises(TargetError, match=r"no option\(s\) opt_level; valid options: mcpu, num_cores"):
        get_target("x86", opt_level=3)


def test_default_tvm_target_names_the_host_cpu_explicitly():
    target = get_target("x86")
    spec = target.tvm_target().export()
    assert spec["mcpu"] == codegen.llvm_get_system_cpu()
    assert spec["mcpu"] not in ("native", "generic", "")
    assert spec["num-cores"] == os.cpu_count()
    assert spec["mtriple"] == target.triple


@pytest.mark.parametrize(
    ("mcpu", "dot_product"), [("znver4", "avx512-vnni"), ("alderlake", "avx-vnni"), ("haswell", "avx2"), ("nehalem", None)]
)
def test_dot_product_capability_follows_mcpu(mcpu, dot_product):
    target = get_target("x86", mcpu=mcpu)
    assert target.dot_product == dot_product
    assert target.tvm_target().export()["mcpu"] == mcpu


@pytest.mark.parametrize("mcpu", ["native", "generic", "pentium-9000"])
def test_bad_mcpu_is_refused_with_examples(mcpu):
    with pytest.raises(TargetError, match=r"mcpu=.*pass mcpu=, e\.g\. .*znver4"):
        get_target("x86", mcpu=mcpu)


def test_bad_num_cores_is_refused():
    with pytest.raises(TargetError, match="num_cores"):
        get_target("x86", num_cores=0)


def test_describe_is_the_json_capability_table():
    table = get_target("x86", mcpu="znver4", num_cores=2).describe()
    assert json.loads(json.dumps(table)) == table
    assert table | {"runs_on_host": True} == {
        "name": "x86",
        "triple": "x86_64-pc-linux-gnu",
        "native_int_widths": [8, 16, 32, 64],
        "dot_product": "avx512-vnni",
        "cheap_int64_multiply": True,
        "requant_mantissa_bits": 31,
        "runs_on_host": True,
        "library_name": "model.so",
        "mcpu": "znver4",
        "num_cores": 2,
        "tuning_db": "",
        "amx": True,
    }


def test_amx_follows_mcpu_and_the_option():
    assert get_target("x86", mcpu="sapphirerapids").dot_product == "amx-int8"
    assert get_target("x86", mcpu="sapphirerapids", amx="off").dot_product == "avx512-vnni"
    assert get_target("x86", mcpu="znver4", amx=True).dot_product == "avx512-vnni"  # no AMX there
    with pytest.raises(TargetError, match=r"x86: amx='maybe' is not a boolean"):
        get_target("x86", amx="maybe")


def test_exported_library_reloads_in_a_fresh_module(tmp_path):
    model = small_model()
    steps = []
    info = get_target("x86").compile(model, tmp_path, progress=steps.append)
    assert steps == ["signature", "lower", "build", "export"]
    assert (tmp_path / "model.so").is_file() and info["library"] == "model.so"
    assert json.loads(info["tvm_target"])["mcpu"] == codegen.llvm_get_system_cpu()
    module = get_target("x86").load(tmp_path, json.loads(json.dumps(info)))
    assert module.input_names == ["a", "b"] and module.output_names == ["sum", "wide"]
    feeds = random_feeds(model)
    for got, want in zip(module.run(feeds), run_ort(model, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def test_rebuilt_library_in_the_same_directory_is_reloaded(tmp_path):
    """dlopen caches libraries by path: loading must not return the previous model.so from the same dir."""
    target = get_target("x86")
    x = {"x": np.array([1, 2, 3], np.int8)}
    for op, expected in (("Add", [2, 4, 6]), ("Mul", [1, 4, 9])):
        model = region([node(op, ["x", "x"], ["y"])], {"x": ("int8", (3,))}, ["y"])
        np.testing.assert_array_equal(
            target.load(tmp_path, target.compile(model, tmp_path)).run(x)[0], expected
        )


def test_baseline_cpu_build_runs_here(tmp_path):
    target = get_target("x86", mcpu="x86-64-v2", num_cores=1)
    model = small_model()
    module = target.load(tmp_path, target.compile(model, tmp_path))
    feeds = random_feeds(model, 3)
    np.testing.assert_array_equal(module.run(feeds)[1], run_ort(model, feeds)[1])


def test_run_reports_every_input_mismatch(tmp_path):
    module = compile_region(small_model(), tmp_path)
    bad = {"a": np.zeros((2, 3), np.int16), "c": np.zeros(1, np.int8)}
    with pytest.raises(InputMismatchError) as err:
        module.run(bad)
    message = str(err.value)
    assert "unexpected input 'c'" in message and "missing input 'b'" in message
    assert "input 'a' is int16[2, 3], expected int8[2, 3]" in message
    with pytest.raises(InputMismatchError, match=r"input 'b' is int8\[2\], expected int8\[3\]"):
        module.run({"a": np.zeros((2, 3), np.int8), "b": np.zeros(2, np.int8)})


def test_missing_library_is_an_artifact_error(tmp_path):
    target = get_target("x86")
    info = target.compile(small_model(), tmp_path)
    (tmp_path / "model.so").unlink()
    with pytest.raises(ArtifactError, match="does not exist"):
        target.load(tmp_path, info)


def test_unsupported_ops_are_listed_in_one_error():
    nodes = [
        node("BitShift", ["x", "x"], ["s1"], direction="LEFT"),
        node("BitShift", ["s1", "x"], ["s2"], direction="RIGHT"),
        node("Cast", ["s2"], ["wide"], to=ONNX_DTYPES["int32"]),
        node("Relu", ["wide"], ["r"]),
        node("Add", ["r", "wide"], ["y"]),
    ]
    model = region(nodes, {"x": ("uint8", (4,))}, ["y"])
    with pytest.raises(TargetError) as err:
        lower(model)
    message = str(err.value)
    assert message.startswith("3 node(s) have no lowering")
    for row in ("BitShift (node 's1')", "BitShift (node 's2')", "Relu (node 'r')"):
        assert row in message
    assert "'y'" not in message


def test_converter_rejection_names_the_node():
    nodes = [node("Resize", ["x", "", "", "sizes"], ["up"], mode="linear")]
    model = region(nodes, {"x": ("uint8", (1, 1, 2, 2))}, ["up"], {"sizes": np.array([1, 1, 4, 4], np.int64)})
    with pytest.raises(TargetError, match=r"Resize node 'up': only mode=nearest"):
        lower(model)


def test_constant_zero_divisor_is_refused():
    model = region(
        [node("Div", ["x", "d"], ["y"])], {"x": ("int8", (2,))}, ["y"], {"d": np.array([3, 0], np.int8)}
    )
    with pytest.raises(TargetError, match="Div node 'y': divides by a constant zero"):
        lower(model)


def test_computed_zero_divisor_does_not_trap(tmp_path):
    """onnxruntime raises on x / 0; the compiled graph cannot raise mid-kernel and yields x / 1 instead."""
    model = region(
        [node("Div", ["x", "d"], ["y"]), node("Mod", ["x", "d"], ["m"])],
        {"x": ("int32", (3,)), "d": ("int32", (3,))},
        ["y", "m"],
    )
    y, m = compile_region(model, tmp_path).run(
        {"x": np.array([7, -7, 5], np.int32), "d": np.array([0, 0, 2], np.int32)}
    )
    np.testing.assert_array_equal(y, [7, -7, 2])
    np.testing.assert_array_equal(m, [0, 0, 1])


def test_relax_type_errors_name_the_node():
    graph = helper.make_graph(
        [node("MatMulInteger", ["a", "b"], ["y"])],
        "bad",
        [
            helper.make_tensor_value_info("a", onnx.TensorProto.INT8, [2, 3]),
            helper.make_tensor_value_info("b", onnx.TensorProto.INT8, [4, 5]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, None)],
    )
    with pytest.raises(TargetError, match="MatMulInteger node 'y': cannot lower to Relax") as err:
        lower(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert err.value.__cause__ is not None


def test_tvm_build_failure_names_the_step(tmp_path, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise tvm.error.InternalError("codegen exploded\n  at some C++ frame")

    monkeypatch.setattr(tvm, "compile", broken_compile)
    with pytest.raises(
        TargetError, match=r"target 'x86': step 'build' failed: InternalError: codegen exploded"
    ) as err:
        get_target("x86").compile(small_model(), tmp_path)
    assert isinstance(err.value.__cause__, tvm.error.InternalError)
