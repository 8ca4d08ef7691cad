"""The Cortex-M targets: capability table and options, the static memory plan, the generated C tree, flash and
RAM figures and limits, and bit-exact runs under QEMU on all three boards (tiny CNN and Fashion-MNIST CNN).

Tests that build or emulate are skipped, with the reason, when arm-none-eabi-gcc or qemu-system-arm is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from targets_testkit import node, random_feeds, region, run_ort

import qcompiler
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.errors import QcError, TargetError
from qcompiler.model_io import boundary
from qcompiler.qmath import quantize
from qcompiler.targets import InputMismatchError, get_target
from qcompiler.targets.cortex_m import BOARDS, SOURCES
from qcompiler.targets.cortex_m._harness import CALIBRATION_INSTRUCTIONS
from qcompiler.targets.cortex_m._kernels import fuse, kernel_source
from qcompiler.targets.cortex_m._plan import ARENA_ALIGN, PACK_MIN_VALUES, UNPACK_KERNELS, pack_codes, plan
from qcompiler.targets.cortex_m._toolchain import EmulatorRun
from qcompiler.targets.relax_lowering import lower
from tests.e2e.zoo import REPO, build_tiny_cnn

#: the registry lines this subpackage adds (see targets/__init__.py); patched in until they land there.
BOARD_NAMES = ["cortex-m4", "cortex-m7", "cortex-m55"]
TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "make")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} on PATH")

#: what the issue asks every model to fit in.
FLASH_BUDGET, RAM_BUDGET = 2 * 1024 * 1024, 512 * 1024


def small_model():
    """Reshapes that stay views (of an input, of a kernel result) and outputs that alias other outputs."""
    nodes = [
        node("Reshape", ["a", "shape"], ["flat_a"]),
        node("Add", ["a", "b"], ["sum"]),
        node("Reshape", ["sum", "shape"], ["flat"]),
        node("Mul", ["flat", "flat_a"], ["y"]),
    ]
    return region(nodes, {"a": ("int8", (2, 3)), "b": ("int8", (3,))}, ["y", "sum", "flat", "flat_a"],
                  {"shape": np.array([6], np.int64)})  # fmt: skip


# ---- capability table and options (no toolchain needed) ---------------------------------------------------


@pytest.mark.parametrize("name", BOARD_NAMES)
def test_capability_table_is_json_and_mcu_shaped(name):
    table = get_target(name).describe()
    assert json.loads(json.dumps(table)) == table
    assert table["name"] == name and table["cpu"] == BOARDS[name].cpu
    assert table["native_int_widths"] == [8, 16, 32]
    assert table["cheap_int64_multiply"] is False and table["runs_on_host"] is False
    assert table["library_name"] == "mcu" and table["emulator"] == BOARDS[name].machine
    assert table["ram_limit"] is None and table["flash_limit"] is None and table["arg_checks"] is True
    assert table["simd"] is True and table["dot_product"] == ("mve" if name == "cortex-m55" else "smlad")
    assert get_target(name, simd="off").describe()["dot_product"] is None


def test_options_accept_byte_strings_from_the_cli():
    target = get_target("cortex-m7", ram_limit="512K", flash_limit="2M", arg_checks="false")
    assert (target.ram_limit, target.flash_limit, target.arg_checks) == (512 * 1024, 2 * 1024 * 1024, False)
    assert get_target("cortex-m4", ram_limit=65536).ram_limit == 65536


@pytest.mark.parametrize(("options", "message"), [
    ({"ram_limit": "lots"}, r"ram_limit='lots' is not a byte count"),
    ({"flash_limit": 0}, r"flash_limit must be positive"),
    ({"arg_checks": "maybe"}, r"arg_checks='maybe' is not a boolean"),
    ({"mcpu": "cortex-m4"}, r"no option\(s\) mcpu; valid options: ram_limit, flash_limit, arg_checks"),
])  # fmt: skip
def test_bad_options_are_refused(options, message):
    with pytest.raises(TargetError, match=message):
        get_target("cortex-m55", **options)


def test_load_refuses_and_points_at_the_emulator(tmp_path):
    with pytest.raises(QcError, match=r"microcontroller.*cannot be loaded on this host.*emulate=True"):
        get_target("cortex-m4").load(tmp_path, {})


def test_without_the_toolchain_the_tree_is_written_but_not_measured(tmp_path, monkeypatch):
    from qcompiler.targets.cortex_m import _toolchain

    monkeypatch.setattr(_toolchain, "missing_tools", lambda tools: list(tools))
    info = get_target("cortex-m4").compile(small_model(), tmp_path)
    assert (
        info["measured"] is False
        and info["flash_bytes"] is None
        and "arm-none-eabi-gcc" in info["missing_tools"]
    )
    assert all((tmp_path / "mcu" / name).is_file() for name in SOURCES)
    with pytest.raises(
        TargetError,
        match=r"RAM needs 33 bytes at least \(not built: no make, arm-none-eabi-gcc.*\), over 16 \(ram_limit=16\)",
    ):
        get_target("cortex-m4", ram_limit=16).compile(small_model(), tmp_path)
    with pytest.raises(TargetError, match=r"cannot emulate without qemu-system-arm, make, arm-none-eabi-gcc"):
        get_target("cortex-m4").run_emulated(tmp_path, info, random_feeds(small_model()))


# ---- the static memory plan --------------------------------------------------------------------------------


def _assert_plan_is_sound(graph):
    """No two arena buffers alive at the same step share a byte; every buffer fits in the arena."""
    arena = [b for b in graph.buffers if b.kind == "arena"]
    for i, a in enumerate(arena):
        assert a.offset % ARENA_ALIGN == 0 and a.offset + a.nbytes <= graph.arena_bytes
        for b in arena[i + 1 :]:
            alive_together = a.first <= b.last and b.first <= a.last
            disjoint = a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset
            assert disjoint or not alive_together, (a, b)


def test_memory_plan_reuses_the_arena_without_overlap(tiny_region):
    module = fuse(lower(tiny_region))
    kernels = kernel_source(module, arg_checks=False)
    graph = plan(module["main"], kernels.workspace)
    _assert_plan_is_sound(graph)
    arena = [b for b in graph.buffers if b.kind == "arena"]
    assert graph.arena_bytes < sum(b.nbytes for b in arena)  # buffers share memory
    peak = max(sum(b.nbytes for b in arena if b.first <= step <= b.last) for step in range(len(graph.steps)))
    assert peak <= graph.arena_bytes
    assert [b.kind for b in graph.buffers].count("output") == 1 and not graph.copies  # written in place
    assert graph.constants and all(c.dtype.kind in "iub" for c in graph.constants)


def test_reshapes_are_views_and_outputs_are_written_in_place():
    module = fuse(lower(small_model()))
    graph = plan(module["main"], {})
    _assert_plan_is_sound(graph)
    y, total, flat, flat_a = (graph.tensors[t] for t in graph.outputs)
    assert graph.buffers[total.buffer].kind == "output"  # the Add kernel writes into the caller's buffer
    views = {t.shape for t in graph.tensors if t.buffer == total.buffer}
    assert views == {(2, 3), (6,)}  # the reshape reads the same bytes
    assert len(graph.copies) == 2  # `flat` (already output 1) and `flat_a` (the input itself) are copied
    assert graph.arena_bytes == 0


# ---- build, measure, emulate -------------------------------------------------------------------------------


TINY_CALIBRATION = {"input": np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    pytest.importorskip("torch")
    return build_tiny_cnn(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def tiny_quantized(tiny_path):
    config = CompileConfig(input_shapes={"input": (1, 1, 16, 16)})
    quantized = quantize_model(tiny_path, TINY_CALIBRATION, config)
    samples = np.random.default_rng(1).standard_normal((2, 1, 1, 16, 16)).astype(np.float32)
    return quantized, _integer_feeds(quantized.int_model, samples)


@pytest.fixture(scope="module")
def tiny_region(tiny_quantized):
    return tiny_quantized[0].region()


def _fashion_quantized(folder: Path, model_file: str, weight_bits: int = 8):
    """A bundled Fashion-MNIST model quantized for batch 1, with two test images as integer feeds."""
    data = pytest.importorskip("examples.fashion_mnist.data")
    if not data.DATA_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}: apt-get install dataset-fashion-mnist")
    calibration = folder / "calib.npz"
    data.write_calibration_npz(calibration, n=128)
    model = REPO / "examples" / "fashion_mnist" / model_file
    config = CompileConfig(input_shapes={"input": (1, 1, 28, 28)}, weight_bits=weight_bits)
    quantized = quantize_model(model, calibration, config)
    images, _ = data.load_split("test")
    samples = data.preprocess(images[[0, 4321]])[:, None]
    return quantized, _integer_feeds(quantized.int_model, samples)


@pytest.fixture(scope="module")
def fashion_quantized(tmp_path_factory):
    return _fashion_quantized(tmp_path_factory.mktemp("fashion"), "cnn.onnx")


@pytest.fixture(scope="module")
def fashion_vit_quantized(tmp_path_factory):
    return _fashion_quantized(tmp_path_factory.mktemp("fashion_vit"), "vit.onnx")


def _integer_feeds(int_model: onnx.ModelProto, samples: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Float samples (one per row) quantized as the model's boundary QuantizeLinear does."""
    (entry,) = boundary(int_model)[0]
    return [
        {entry["int_name"]: quantize(x, entry["scale"], entry["zero_point"], entry["int_dtype"])}
        for x in samples
    ]


def _compile_and_compare(name, quantized, feeds, out_dir, **options):
    region_model = quantized.region()
    target = get_target(name, **options)
    info = target.compile(region_model, out_dir)
    info = json.loads(json.dumps(info))  # what a manifest would hold
    for feed in feeds:
        got, run = target.emulate(out_dir, info, feed)
        want = run_ort(region_model, feed)
        for spec, g, w in zip(info["outputs"], got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, spec
            assert np.count_nonzero(g != w) == 0, f"{name} {spec['name']}: {g} != {w}"
        assert run.stack_used is not None and run.stack_used <= info["stack_bytes"]
    return info


def _record(record_property, info):
    figures = {
        k: info[k] for k in ("flash_bytes", "ram_bytes", "arena_bytes", "stack_bytes", "weights_bytes")
    }
    for key, value in figures.items():
        record_property(key, value)
    print(json.dumps(figures))
    assert info["flash_bytes"] <= FLASH_BUDGET and info["ram_bytes"] <= RAM_BUDGET, figures
    assert info["ram_bytes"] >= info["arena_bytes"] + info["stack_bytes"] + info["io_bytes"]
    assert info["flash_bytes"] >= info["weights_bytes"]


@needs_tools
@pytest.mark.parametrize("name", BOARD_NAMES)
def test_tiny_cnn_bit_exact_under_qemu(name, tiny_quantized, tmp_path, record_property):
    quantized, feeds = tiny_quantized
    info = _compile_and_compare(name, quantized, feeds, tmp_path)
    _record(record_property, info)
    tree = tmp_path / "mcu"
    assert (
        all((tree / f).is_file() for f in SOURCES)
        and (tree / "include" / "tvm" / "ffi" / "c_api.h").is_file()
    )
    assert info["measured"] is True and info["kernels"] > 10


@needs_tools
@pytest.mark.parametrize("name", BOARD_NAMES)
def test_fashion_mnist_cnn_bit_exact_under_qemu(name, fashion_quantized, tmp_path, record_property):
    quantized, feeds = fashion_quantized
    _record(record_property, _compile_and_compare(name, quantized, feeds, tmp_path))


@needs_tools
@pytest.mark.slow
@pytest.mark.parametrize("name", BOARD_NAMES)
def test_fashion_mnist_vit_bit_exact_under_qemu(name, fashion_vit_quantized, tmp_path, record_property):
    """The transformer (integer LayerNorm, Softmax, GELU, attention) on each board, inside 2 MB / 512 KB."""
    quantized, feeds = fashion_vit_quantized
    _record(record_property, _compile_and_compare(name, quantized, feeds, tmp_path))


@needs_tools
def test_without_arg_checks_the_image_shrinks_and_stays_bit_exact(tiny_quantized, tmp_path, record_property):
    quantized, feeds = tiny_quantized
    info = _compile_and_compare("cortex-m4", quantized, feeds, tmp_path, arg_checks=False)
    _record(record_property, info)
    assert info["flash_bytes"] < 64 * 1024


@needs_tools
def test_python_api_compiles_for_the_mcu_and_refuses_to_load(tiny_path):
    artifact = qcompiler.compile(
        tiny_path, target="cortex-m4", calibration=TINY_CALIBRATION, input_shapes={"input": (1, 1, 16, 16)},
        target_options={"arg_checks": False},
    )  # fmt: skip
    info = artifact.library_info
    assert artifact.target_info["name"] == "cortex-m4" and info["measured"] and info["ram_bytes"] > 0
    assert (artifact.build_dir / info["elf"]).is_file()
    with pytest.raises(QcError, match="emulate=True"):
        artifact.module()


@needs_tools
def test_too_small_ram_limit_names_the_figures(tiny_region, tmp_path):
    with pytest.raises(TargetError) as err:
        get_target("cortex-m4", ram_limit="8K", arg_checks=False).compile(tiny_region, tmp_path)
    message = str(err.value)
    assert (
        "cortex-m4: the model does not fit: RAM needs" in message and "over 8192 (ram_limit=8192)" in message
    )
    for figure in ("arena ", "stack ", "I/O buffers ", "weights "):
        assert figure in message


@needs_tools
def test_model_larger_than_the_board_is_refused(tmp_path):
    model = region([node("Add", ["a", "a"], ["y"])], {"a": ("int32", (1, 100_000))}, ["y"])
    with pytest.raises(
        TargetError, match=r"cortex-m55: the model does not fit the mps3-an547 board .*RAM' overflowed"
    ):
        get_target("cortex-m55", arg_checks=False).compile(model, tmp_path)


@needs_tools
def test_emulation_checks_inputs_and_times_out_cleanly(tmp_path):
    model = small_model()
    target = get_target("cortex-m4", arg_checks=False)
    info = target.compile(model, tmp_path)
    feeds = random_feeds(model)
    for got, want in zip(target.run_emulated(tmp_path, info, feeds), run_ort(model, feeds), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputMismatchError, match=r"input 'a' is int16\[2, 3\], expected int8\[2, 3\]"):
        target.run_emulated(tmp_path, info, {**feeds, "a": feeds["a"].astype(np.int16)})
    with pytest.raises(TargetError, match=r"did not finish within 0 s"):
        target.run_emulated(tmp_path, info, feeds, timeout=0.001)


@needs_tools
def test_c_tree_rebuilds_with_its_own_makefile(tmp_path):
    """The tree is self-contained: ``make`` rebuilds it from scratch without Python."""
    info = get_target("cortex-m55", arg_checks=False).compile(small_model(), tmp_path)
    tree = tmp_path / info["library"]
    elf = Path(tree / "qc_model.elf")
    shutil.rmtree(tree / "build")
    elf.unlink()
    subprocess.run(["make", "-s", "-C", str(tree)], check=True, capture_output=True, timeout=300)
    assert elf.is_file() and (tree / "libqcmodel.a").is_file()


# ---- sub-8-bit weights packed in flash ---------------------------------------------------------------------


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """What the generated C does (``_emit._unpack_kernel``), in numpy."""
    per_byte, half = 8 // bits, 1 << (bits - 1)
    i = np.arange(count)
    codes = (packed[i // per_byte].astype(np.int32) >> ((i % per_byte) * bits)) & ((1 << bits) - 1)
    return ((codes ^ half) - half).astype(np.int8)


@pytest.mark.parametrize("bits", sorted(UNPACK_KERNELS))
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_packing_round_trips_every_value_of_the_range(bits, count):
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.random.default_rng(count).integers(low, high + 1, count).astype(np.int8)
    values[: min(count, 2)] = [low, high][: min(count, 2)]
    packed = pack_codes(values, bits)
    assert packed.dtype == np.uint8 and len(packed) == -(-count * bits // 8)
    assert np.array_equal(_unpack(packed, bits, count), values)


def _weight_model(values: np.ndarray):
    """``y = x @ W`` in int32, W an int8 constant: the constant the plan may pack."""
    return region([node("MatMulInteger", ["x", "w"], ["y"])], {"x": ("int8", (1, values.shape[0]))}, ["y"],
                  {"w": values})


@pytest.mark.parametrize(("high", "bits"), [(1, 2), (7, 4), (8, 8)])
def test_the_plan_unpacks_a_narrow_constant_just_before_its_kernel(high, bits):
    values = np.random.default_rng(0).integers(-high, high + 1, (16, 8)).astype(np.int8)
    assert values.size >= PACK_MIN_VALUES
    module = fuse(lower(_weight_model(values)))
    for pack in (True, False):
        graph = plan(module["main"], {}, pack_weights=pack)
        _assert_plan_is_sound(graph)
        kernels = [step.kernel for step in graph.steps]
        if pack and bits < 8:
            assert kernels[0] == UNPACK_KERNELS[bits] and len(kernels) == 2
            (stored,) = [c for c in graph.constants if c.dtype == np.uint8]
            assert np.array_equal(_unpack(stored, bits, values.size), values.reshape(-1))
            unpacked = graph.buffers[graph.tensors[graph.steps[0].args[1]].buffer]
            assert unpacked.kind == "arena" and (unpacked.first, unpacked.last) == (0, 1)
        else:
            assert not set(kernels) & set(UNPACK_KERNELS.values())
            assert any(c.dtype == np.int8 and c.size == values.size for c in graph.constants)


@pytest.fixture(scope="module")
def fashion_w4_quantized(tmp_path_factory):
    return _fashion_quantized(tmp_path_factory.mktemp("fashion_w4"), "cnn.onnx", weight_bits=4)


@needs_tools
@pytest.mark.parametrize("name", ["cortex-m4", "cortex-m55"])
def test_4_bit_weights_take_half_the_flash_and_stay_bit_exact(name, fashion_w4_quantized, tmp_path,
                                                               record_property):
    quantized, feeds = fashion_w4_quantized
    packed = _compile_and_compare(name, quantized, feeds, tmp_path / "packed")
    plain = _compile_and_compare(name, quantized, feeds, tmp_path / "plain", pack_weights=False)
    _record(record_property, packed)
    assert packed["packed_weights"] >= 7 and plain["packed_weights"] == 0
    saved = plain["weights_bytes"] - packed["weights_bytes"]
    assert saved > 0.4 * plain["weights_bytes"]  # the conv and head weights are most of the constants
    assert plain["flash_bytes"] - packed["flash_bytes"] >= 0.9 * saved  # the unpack code is small
    print(json.dumps({"name": name, "flash": [plain["flash_bytes"], packed["flash_bytes"]],
                      "ram": [plain["ram_bytes"], packed["ram_bytes"]]}))


# ---- instruction counts under qemu -icount -----------------------------------------------------------------


@pytest.mark.parametrize(("console", "instructions"), [
    ("qc: ticks=100 calibration_ticks=104857\nqc: ok stack_used=8", round(100 * CALIBRATION_INSTRUCTIONS / 104857)),
    ("qc: ticks=4294967295 calibration_ticks=104857\nqc: ok stack_used=8", None),  # SysTick wrapped
    ("qc: ok stack_used=8", None),
])
def test_instruction_count_is_read_from_the_console(console, instructions):
    assert EmulatorRun(console).instructions == instructions


@needs_tools
@pytest.mark.parametrize("name", ["cortex-m4", "cortex-m55"])
def test_instruction_counts_are_deterministic_and_grow_with_the_work(name, tiny_quantized, fashion_quantized,
                                                                      tmp_path):
    target = get_target(name)
    counts = {}
    for label, (quantized, feeds) in {"tiny": tiny_quantized, "fashion": fashion_quantized}.items():
        info = json.loads(json.dumps(target.compile(quantized.region(), tmp_path / label)))
        runs = [target.emulate(tmp_path / label, info, feeds[0])[1] for _ in range(2)]
        assert runs[0].instructions == runs[1].instructions and runs[0].instructions > 0
        counts[label] = runs[0].instructions
    # the Fashion CNN's Conv/MatMul layers do 2,311,712 multiply-accumulates at batch 1 (SMLAD does two per
    # instruction); the tiny CNN's 16x16 input is far less work
    assert counts["fashion"] > 4 * counts["tiny"] and counts["fashion"] > 2_311_712 // 2
