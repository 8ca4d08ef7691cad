"""The x86 int8 kernels (AMX tiles, VNNI and AVX2 GEMM and convolution with the fused epilogue, the paired-tap
depthwise convolution), bit-exact with onnxruntime over edge values: saturating inputs, zero points at the extremes, K and N that do not divide
the tiles, strides and dilations; plus which nodes the lowering fuses and which it leaves to the generic
converters."""

from __future__ import annotations

import doctest
import pathlib

import numpy as np
import onnx.numpy_helper
import pytest
from targets_testkit import (
    ONNX_DTYPES,
    assert_bit_exact,
    node,
    random_feeds,
    random_int,
    region,
    requantize,
    requantize_params,
)

from qcompiler.targets import get_target, int8_kernels
from qcompiler.targets.amx_kernels import pack_amx_conv_weight
from qcompiler.targets.int8_kernels import pack_gemm_weight
from qcompiler.targets.relax_lowering import lower


def _cpu_flags() -> set[str]:
    text = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()[2:]}


#: mcpu -> the host feature its kernels need; a kernel the host cannot run is skipped, and says so.
_INSTRUCTIONS = {
    "sapphirerapids": "amx_int8", "icelake-server": "avx512_vnni", "alderlake": "avx_vnni", "haswell": "avx2",
}
_FLAGS = _cpu_flags()
INSTRUCTION_MCPUS = [
    pytest.param(mcpu, marks=pytest.mark.skipif(flag not in _FLAGS, reason=f"host CPU lacks {flag}"))
    for mcpu, flag in _INSTRUCTIONS.items()
]


def _compile(model, tmp_path, mcpu):
    target = get_target("x86", mcpu=mcpu)
    assert target.dot_product is not None
    return target.load(tmp_path, target.compile(model, tmp_path))


def _epilogue_params(rng, channels: int, to: str, shape, shifts=(1, 40)) -> dict:
    """Per-channel bias and requantization with wide multipliers, shifts from 1 to 40 (or ``shifts``) and an
    extreme zp."""
    info = np.iinfo(to)
    zero_point = info.max if to == "uint8" else info.min
    multiplier = rng.integers(1, 2**31, size=channels).reshape(shape)
    shift = rng.integers(shifts[0], shifts[1] + 1, size=channels).reshape(shape)
    params = requantize_params("rq", multiplier, shift, zero_point, info.min, info.max)
    params["bias"] = rng.integers(-(2**20), 2**20, size=channels, dtype=np.int32).reshape(shape)
    return params


def _gemm_region(m, k, n, a_dtype, epilogue: str | None, seed=0, lead=(), shifts=(1, 40)):
    rng = np.random.default_rng(seed)
    w = random_int(rng, "int8", (k, n))
    w[0, :] = -128  # saturating weights in the first row
    inits = {"w": w}
    nodes = [node("MatMulInteger", ["a", "w"], ["acc"])]
    out = "acc"
    if epilogue:
        inits.update(_epilogue_params(rng, n, epilogue, (n,), shifts))
        nodes += [node("Add", ["acc", "bias"], ["biased"]), requantize("biased", "y", "rq", to=epilogue)]
        out = "y"
    return region(nodes, {"a": (a_dtype, (*lead, m, k))}, [out], inits)


def _saturated(model, dtype: str) -> dict:
    """Every activation at the dtype's maximum, then every one at the minimum (two feeds)."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    info = np.iinfo(dtype)
    return [{model.graph.input[0].name: np.full(shape, v, dtype)} for v in (info.max, info.min)]


@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("epilogue", [None, "uint8", "int8"])
@pytest.mark.parametrize(("m", "k", "n"), [(7, 10, 17), (5, 13, 35), (13, 64, 48), (6, 20, 64), (1, 3, 1),
                                           (45, 70, 40), (64, 128, 33)])
def test_gemm_bit_exact(tmp_path, mcpu, a_dtype, epilogue, m, k, n):
    model = _gemm_region(m, k, n, a_dtype, epilogue)
    module = _compile(model, tmp_path, mcpu)
    for feeds in [random_feeds(model, seed=1), *_saturated(model, a_dtype)]:
        assert_bit_exact(model, module, feeds)


@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
def test_gemm_with_batched_rows_and_long_k(tmp_path, mcpu):
    """A 3-D activation (rows flattened) and K = 1028, where saturated sums reach 1028 * 255 * 128."""
    model = _gemm_region(9, 1028, 40, "uint8", "int8", lead=(2,))
    module = _compile(model, tmp_path, mcpu)
    for feeds in [random_feeds(model, seed=2), *_saturated(model, "uint8")]:
        assert_bit_exact(model, module, feeds)


def _conv_region(x_shape, w_shape, a_dtype, epilogue, seed=0, shifts=(1, 40), **attrs):
    rng = np.random.default_rng(seed)
    inits = {"w": random_int(rng, "int8", w_shape)}
    nodes = [node("ConvInteger", ["x", "w"], ["acc"], **attrs)]
    out = "acc"
    if epilogue:
        inits.update(_epilogue_params(rng, w_shape[0], epilogue, (w_shape[0], 1, 1), shifts))
        nodes += [node("Add", ["acc", "bias"], ["biased"]), requantize("biased", "y", "rq", to=epilogue)]
        out = "y"
    return region(nodes, {"x": (a_dtype, x_shape)}, [out], inits)


CONVS = {
    "3x3": ((1, 8, 9, 11), (6, 8, 3, 3), {}),
    "3x3-stride2": ((1, 5, 12, 13), (9, 5, 3, 3), {"strides": [2, 2]}),
    "7x7-stride2-rgb": ((1, 3, 21, 21), (5, 3, 7, 7), {"strides": [2, 2]}),
    "1x1-stride2": ((1, 16, 7, 7), (20, 16, 1, 1), {"strides": [2, 2]}),
    "3x2-stride23-dilation21": ((2, 6, 13, 14), (7, 6, 3, 2), {"strides": [2, 3], "dilations": [2, 1]}),
    "3x3-pads-stride21-dilation12": ((2, 3, 9, 8), (6, 3, 3, 3),
                                     {"pads": [1, 2, 0, 1], "strides": [2, 1], "dilations": [1, 2]}),
    # >= 48 input channels: AMX tiles where the CPU has them (C padded to 64, output channels to 32)
    "3x3-wide": ((1, 50, 9, 11), (36, 50, 3, 3), {}),
    "1x1-stride2-wide": ((1, 64, 7, 7), (70, 64, 1, 1), {"strides": [2, 2]}),
    "3x2-stride23-dilation21-wide": ((2, 65, 13, 14), (7, 65, 3, 2), {"strides": [2, 3], "dilations": [2, 1]}),
    "3x3-pads-stride2-wide": ((1, 96, 10, 9), (40, 96, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 2]}),
    "depthwise-3x3": ((1, 8, 9, 11), (8, 1, 3, 3), {"group": 8}),
    "depthwise-3x3-pads": ((1, 4, 7, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    "depthwise-5x5-stride2": ((2, 5, 13, 12), (5, 1, 5, 5), {"group": 5, "strides": [2, 2]}),
    "depthwise-3x3-dilation2": ((1, 3, 10, 10), (3, 1, 3, 3), {"group": 3, "dilations": [2, 2]}),
    "depthwise-1x1": ((1, 3, 5, 7), (3, 1, 1, 1), {"group": 3}),  # one tap: paired with a zero weight
}


@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("epilogue", [None, "uint8", "int8"])
@pytest.mark.parametrize("case", list(CONVS))
def test_conv_bit_exact(tmp_path, mcpu, a_dtype, epilogue, case):
    x_shape, w_shape, attrs = CONVS[case]
    model = _conv_region(x_shape, w_shape, a_dtype, epilogue, **attrs)
    module = _compile(model, tmp_path, mcpu)
    for feeds in [random_feeds(model, seed=3), *_saturated(model, a_dtype)]:
        assert_bit_exact(model, module, feeds)


@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
@pytest.mark.parametrize("case", ["gemm-short-k", "gemm-long-k", "3x3", "3x3-wide", "depthwise-3x3"])
def test_high_word_epilogue_bit_exact(tmp_path, mcpu, case):
    """Every shift >= 33: the kernels take the 32-bit form of the requantization (see ``_epilogue``)."""
    shifts = (33, 44)
    if case.startswith("gemm"):
        a_dtype = "uint8"
        model = _gemm_region(45, 10 if case == "gemm-short-k" else 70, 40, a_dtype, "int8", shifts=shifts)
    else:
        a_dtype, (x_shape, w_shape, attrs) = "int8", CONVS[case]
        model = _conv_region(x_shape, w_shape, a_dtype, "uint8", shifts=shifts, **attrs)
    module = _compile(model, tmp_path, mcpu)
    for feeds in [random_feeds(model, seed=9), *_saturated(model, a_dtype)]:
        assert_bit_exact(model, module, feeds)


ONNX_NP = {code: np.dtype(name) for name, code in ONNX_DTYPES.items()}


def _kernel_names(module) -> list[str]:
    return [gv.name_hint for gv in module.functions]


def _kernel_calls(module) -> list[str]:
    return [name for name in _kernel_names(module) if name.startswith("qc_avx512_vnni")]


def test_bias_and_requantize_are_absorbed_into_the_kernel():
    module = lower(_gemm_region(7, 10, 17, "uint8", "int8"), get_target("x86", mcpu="icelake-server").kernels())
    assert _kernel_calls(module) == ["qc_avx512_vnni_gemm_uint8_int8_1x7x10x17"]
    text = module["main"].script()
    assert "int64" not in text and "add" not in text  # no int64 tensor, no separate bias add


def test_a_shared_accumulator_is_not_absorbed(tmp_path):
    """The accumulator also feeds a graph output: the kernel stops at int32, the epilogue runs generically."""
    base = _gemm_region(5, 13, 35, "int8", "uint8")
    graph = base.graph
    model = region(
        list(graph.node),
        {"a": ("int8", (5, 13))},
        ["y", "acc"],
        {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer},
    )
    target = get_target("x86", mcpu="icelake-server")
    assert _kernel_calls(lower(model, target.kernels())) == ["qc_avx512_vnni_gemm_int8_int32_1x5x13x35"]
    if "avx512_vnni" in _FLAGS:
        assert_bit_exact(model, _compile(model, tmp_path, "icelake-server"), random_feeds(model, seed=4))


def test_amx_tiles_take_gemms_and_wide_convolutions():
    """On an AMX CPU, GEMMs of K > 64 and convolutions of >= 48 input channels run on tiles; short GEMMs,
    narrow and depthwise convolutions stay on VNNI; amx=false keeps everything on VNNI (lowering only: no
    AMX host needed)."""
    model = region(
        [
            node("MatMulInteger", ["a", "w"], ["ab"]),
            node("MatMulInteger", ["a_long", "w_long"], ["ab_long"]),
            node("ConvInteger", ["wide", "w_wide"], ["c1"]),
            node("ConvInteger", ["narrow", "w_narrow"], ["c2"]),
            node("ConvInteger", ["narrow", "w_depthwise"], ["c3"], group=8),
        ],
        {"a": ("uint8", (3, 8)), "a_long": ("uint8", (3, 65)), "wide": ("int8", (1, 48, 6, 6)),
         "narrow": ("uint8", (1, 8, 6, 6))},
        ["ab", "ab_long", "c1", "c2", "c3"],
        {name: random_int(np.random.default_rng(7), "int8", shape) for name, shape in
         [("w", (8, 5)), ("w_long", (65, 5)), ("w_wide", (4, 48, 3, 3)), ("w_narrow", (4, 8, 3, 3)), ("w_depthwise", (8, 1, 3, 3))]},
    )
    amx = get_target("x86", mcpu="sapphirerapids")
    assert amx.dot_product == "amx-int8"
    kernels = [name for name in _kernel_names(lower(model, amx.kernels()))
               if name.startswith("qc_") and not name.endswith("_pack")]
    assert sorted(kernels) == [
        "qc_amx_int8_conv2d_int8_int32_1x48x6x6x4x48x3x3x1x1x1x1x0x0x0x0",
        "qc_amx_int8_gemm_uint8_int32_1x3x65x5",
        "qc_avx512_vnni_conv2d_uint8_int32_1x8x6x6x4x8x3x3x1x1x1x1x0x0x0x0",
        "qc_avx512_vnni_depthwise_conv2d_uint8_int32_1x8x6x6x8x1x3x3x1x1x1x1x0x0x0x0",
        "qc_avx512_vnni_gemm_uint8_int32_1x3x8x5",
        "qc_pad_columns_uint8_1x3x65x128",  # K to whole tiles
    ]
    vnni = get_target("x86", mcpu="sapphirerapids", amx="false")
    assert vnni.dot_product == "avx512-vnni"
    assert not any("amx" in name for name in _kernel_names(lower(model, vnni.kernels())))


def test_grouped_and_activation_operands_use_the_generic_lowering(tmp_path):
    rng = np.random.default_rng(5)
    model = region(
        [
            node("ConvInteger", ["x", "wg"], ["g"], group=2),
            node("MatMulInteger", ["a", "b"], ["ab"]),
        ],
        {"x": ("uint8", (1, 4, 6, 6)), "a": ("int8", (3, 8)), "b": ("int8", (8, 5))},
        ["g", "ab"],
        {"wg": random_int(rng, "int8", (6, 2, 3, 3))},
    )
    target = get_target("x86", mcpu="icelake-server")
    assert _kernel_calls(lower(model, target.kernels())) == []
    host = get_target("x86")
    assert_bit_exact(model, host.load(tmp_path, host.compile(model, tmp_path)), random_feeds(model, seed=6))


def test_kernel_layout_doctests():
    result = doctest.testmod(int8_kernels)
    assert result.attempted >= 3 and result.failed == 0


def test_pack_amx_conv_weight_layout():
    """Every A tile (16 output channels x 64 input channels of one tap) is 1 KiB of consecutive bytes."""
    w = random_int(np.random.default_rng(8), "int8", (20, 70, 3, 2))
    packed = pack_amx_conv_weight(w, 32)
    assert packed.shape == (2, 3, 2, 2, 16, 64) and packed.flags.c_contiguous
    for o, c, dy, dx in [(0, 0, 0, 0), (19, 69, 2, 1), (17, 64, 1, 0), (5, 63, 0, 1)]:
        assert packed[o // 16, dy, dx, c // 64, o % 16, c % 64] == w[o, c, dy, dx]
    assert not packed[1, :, :, :, 4:].any() and not packed[:, :, :, 1, :, 6:].any()  # zero padding


def test_pack_gemm_weight_layout():
    w = np.arange(5 * 3, dtype=np.int8).reshape(5, 3)
    packed = pack_gemm_weight(w, 4)
    assert packed.shape == (1, 2, 4, 4)
    for k in range(8):
        for c in range(4):
            want = w[k, c] if k < 5 and c < 3 else 0
            assert packed[c // 4, k // 4, c % 4, k % 4] == want


def _attention_region(a_dtype, za, b_dtype, zb, lead, m, k, n, epilogue, seed=0):
    """``MatMul(Cast(a) - za, Cast(b) - zb)`` over int32 (attention's Q.K^T / A.V form) [+ Requantize]."""
    rng = np.random.default_rng(seed)
    int32 = ONNX_DTYPES["int32"]
    nodes = [node("Cast", ["a"], ["a32"], to=int32), node("Cast", ["b"], ["b32"], to=int32)]
    inits = {}
    names = []
    for side, zp in (("a", za), ("b", zb)):
        if zp is None:
            names.append(f"{side}32")
        else:
            inits[f"{side}_zp"] = np.int32(zp)
            nodes.append(node("Sub", [f"{side}32", f"{side}_zp"], [f"{side}c"]))
            names.append(f"{side}c")
    nodes.append(node("MatMul", names, ["acc"]))
    out = "acc"
    if epilogue:
        params = _epilogue_params(rng, n, epilogue, (n,))
        del params["bias"]
        inits.update(params)
        nodes.append(requantize("acc", "y", "rq", to=epilogue))
        out = "y"
    return region(nodes, {"a": (a_dtype, (*lead, m, k)), "b": (b_dtype, (*lead, k, n))}, [out], inits)


ATTENTION = {
    "qk-uint8-zp": ("uint8", 131, "uint8", 97, (1, 3), 7, 10, 17, "int8"),
    "qk-int8-extreme-zp": ("int8", -128, "int8", 127, (2,), 5, 13, 35, "uint8"),
    "av-mixed-no-zp": ("uint8", None, "int8", 3, (1, 2), 9, 33, 16, None),
    "int8-uint8-255": ("int8", 0, "uint8", 255, (3,), 4, 4, 1, "int8"),
    "k100-rows-past-a-tile-pair": ("uint8", 131, "uint8", 97, (2,), 33, 100, 20, "int8"),  # AMX tiles
}


@pytest.mark.parametrize("mcpu", INSTRUCTION_MCPUS)
@pytest.mark.parametrize("case", list(ATTENTION))
def test_activation_matmul_bit_exact(tmp_path, mcpu, case):
    model = _attention_region(*ATTENTION[case])
    module = _compile(model, tmp_path, mcpu)
    assert any(name.startswith("qc_") and "batched_gemm" in name
               for name in _kernel_names(lower(model, get_target("x86", mcpu=mcpu).kernels())))
    saturated = {v.name: np.full([d.dim_value for d in v.type.tensor_type.shape.dim],
                                 np.iinfo(ONNX_NP[v.type.tensor_type.elem_type]).max,
                                 ONNX_NP[v.type.tensor_type.elem_type]) for v in model.graph.input}
    for feeds in [random_feeds(model, seed=7), saturated]:
        assert_bit_exact(model, module, feeds)


def _at_pair_bound(rng, shape, axis: int) -> np.ndarray:
    """int8 weights of magnitude <= 64 whose first reduction pairs sit exactly on vpmaddubsw's bound
    (|w0| + |w1| = 128: -128 + 0, 127 + -1, -64 + -64, 100 + 28)."""
    w = rng.integers(-64, 65, size=shape).astype(np.int8)
    view = np.moveaxis(w, axis, 0)
    for p, pair in enumerate([(-128, 0), (127, -1), (-64, -64), (100, 28)][: view.shape[0] // 2]):
        view[2 * p], view[2 * p + 1] = pair
    return w


@pytest.mark.parametrize("a_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("kind", ["gemm", "conv3x3", "conv1x1-stride2"])
@pytest.mark.skipif("avx2" not in _FLAGS, reason="host CPU lacks avx2")
def test_narrow_weights_run_on_vpmaddubsw_bit_exact(tmp_path, a_dtype, kind):
    """On AVX2, weights whose reduction pairs have |w0| + |w1| <= 128 (every weight of <= 7 bits) run on the
    vpmaddubsw kernels, exact with every activation at its extremes; one pair at 129 keeps the vpmaddwd ones."""
    rng = np.random.default_rng(11)
    if kind == "gemm":
        model = _gemm_region(6, 13, 35, a_dtype, "int8")
        w_shape, axis, op = (13, 35), 0, "gemm"
    else:
        x_shape, w_shape, attrs = CONVS["3x3" if kind == "conv3x3" else "1x1-stride2"]
        model = _conv_region(x_shape, w_shape, a_dtype, "int8", **attrs)
        axis, op = 1, "conv2d"
    weight = next(t for t in model.graph.initializer if t.name == "w")
    narrow = _at_pair_bound(rng, w_shape, axis)
    weight.CopyFrom(onnx.numpy_helper.from_array(narrow, "w"))
    target = get_target("x86", mcpu="haswell")
    names = _kernel_names(lower(model, target.kernels()))
    assert any(name.startswith(f"qc_avx2_narrow_{op}") for name in names), names
    module = _compile(model, tmp_path, "haswell")
    for feeds in [random_feeds(model, seed=12), *_saturated(model, a_dtype)]:
        assert_bit_exact(model, module, feeds)

    wide = narrow.copy()
    np.moveaxis(wide, axis, 0)[1] = -1  # pairs (-128, -1): 129
    weight.CopyFrom(onnx.numpy_helper.from_array(wide, "w"))
    names = _kernel_names(lower(model, target.kernels()))
    assert not any(name.startswith("qc_avx2_narrow") for name in names)
    assert any(name.startswith(f"qc_avx2_{op}") for name in names), names
