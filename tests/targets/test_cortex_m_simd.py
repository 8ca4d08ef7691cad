"""The Cortex-M SMLAD dot-product kernels (qc_simd.c), bit-exact with onnxruntime under qemu over edge values:
activations all at the dtype's maximum and minimum, weights of -128, K that is not a multiple of 4, odd
channel counts, strides, dilations, asymmetric padding, groups, batched rows; which calls they take; and
the per-kernel instruction profile of the test image.

Every case of one activation dtype is one model (independent nodes, one output each), so one build and
three emulated runs cover them all. Skipped, with the reason, without arm-none-eabi-gcc or qemu-system-arm.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from targets_testkit import node, random_feeds, random_int, region, requantize, requantize_params, run_ort

from qcompiler.targets import get_target
from qcompiler.targets.cortex_m._kernels import fuse
from qcompiler.targets.cortex_m._simd import KERNEL_PREFIX, MIN_DOT_LENGTH
from qcompiler.targets.relax_lowering import lower

TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "make")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} on PATH")

#: name -> (input shape, weight shape, ConvInteger attributes); every one has K >= MIN_DOT_LENGTH.
CONVS = {
    "3x3": ((1, 8, 9, 11), (6, 8, 3, 3), {}),
    "3x3-stride2-odd-channels": ((1, 5, 12, 13), (9, 5, 3, 3), {"strides": [2, 2]}),
    "3x2-stride23-dilation21-batch2": ((2, 6, 13, 14), (7, 6, 3, 2), {"strides": [2, 3], "dilations": [2, 1]}),
    "pads-stride21-dilation12": ((2, 3, 9, 8), (6, 3, 3, 3),
                                 {"pads": [1, 2, 0, 1], "strides": [2, 1], "dilations": [1, 2]}),
    "grouped": ((1, 8, 6, 6), (6, 4, 3, 3), {"group": 2}),
    "depthwise-5x5-pads": ((1, 5, 13, 12), (5, 1, 5, 5), {"group": 5, "pads": [2, 2, 2, 2]}),
    "1x1": ((1, 16, 7, 7), (21, 16, 1, 1), {}),
}  # fmt: skip
#: name -> (activation shape, weight shape).
MATMULS = {"odd": ((7, 10), (10, 17)), "odd-k": ((5, 13), (13, 35)), "batched-long-k": ((2, 9, 1028), (1028, 40))}


def _simd_region(a_dtype: str, seed: int = 0):
    """All cases as one model; odd cases also requantize (int8, then uint8), as the graph's epilogues do."""
    rng = np.random.default_rng(seed)
    nodes, inputs, outputs, inits = [], {}, [], {}
    cases = [("ConvInteger", name, *spec) for name, spec in CONVS.items()]
    cases += [("MatMulInteger", name, a, w, {}) for name, (a, w) in MATMULS.items()]
    for i, (op, name, x_shape, w_shape, attrs) in enumerate(cases):
        x, w, acc = f"x_{i}", f"w_{i}", f"{op}_{name}"  # a mismatch names its case
        weight = random_int(rng, "int8", w_shape)
        weight.reshape(w_shape[0], -1)[0] = -128  # one saturating output channel (conv) / row (matmul)
        inputs[x], inits[w] = (a_dtype, x_shape), weight
        nodes.append(node(op, [x, w], [acc], **attrs))
        if i % 2:
            to = "int8" if i % 4 == 1 else "uint8"
            channels = w_shape[0] if op == "ConvInteger" else w_shape[1]
            shape = (channels, 1, 1) if op == "ConvInteger" else (channels,)
            info = np.iinfo(to)
            inits.update(requantize_params(f"rq_{i}", rng.integers(1, 2**31, size=channels).reshape(shape),
                                           rng.integers(1, 41, size=channels).reshape(shape),
                                           info.max if to == "uint8" else info.min, info.min, info.max))
            nodes.append(requantize(acc, f"{acc}_{to}", f"rq_{i}", to=to))
            acc = f"{acc}_{to}"
        outputs.append(acc)
    return region(nodes, inputs, outputs, inits), len(cases)


def _feeds(model, a_dtype: str) -> list[dict[str, np.ndarray]]:
    """Random activations, then every activation at the dtype's maximum, then at its minimum."""
    info = np.iinfo(a_dtype)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return [random_feeds(model, seed=1)] + [
        {name: np.full(shape, value, a_dtype) for name, shape in shapes.items()} for value in (info.max, info.min)
    ]


@needs_tools
@pytest.mark.parametrize(("board", "a_dtype"), [("cortex-m4", "uint8"), ("cortex-m4", "int8"),
                                                 ("cortex-m55", "uint8")])  # fmt: skip
def test_simd_kernels_bit_exact_under_qemu(tmp_path, board, a_dtype):
    model, cases = _simd_region(a_dtype)
    target = get_target(board, arg_checks=False)
    info = json.loads(json.dumps(target.compile(model, tmp_path)))
    assert info["simd_kernels"] == cases
    for feeds in _feeds(model, a_dtype):
        got, _ = target.emulate(tmp_path, info, feeds)
        for spec, g, w in zip(info["outputs"], got, run_ort(model, feeds), strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, spec
            mismatch = np.argwhere(g != w)
            assert mismatch.size == 0, f"{spec['name']}: {len(mismatch)} mismatches, first at {mismatch[:3].tolist()}"


def _simd_calls(model, simd=True) -> list[str]:
    module = fuse(lower(model), simd)
    return [gv.name_hint for gv in module.functions if gv.name_hint.startswith(KERNEL_PREFIX)]


def test_short_reductions_and_activation_products_stay_with_tvm():
    """K below MIN_DOT_LENGTH, a product of two activations, and simd=False take TVM's own loops."""
    rng = np.random.default_rng(2)
    model = region(
        [
            node("ConvInteger", ["x", "w1"], ["short"]),
            node("MatMulInteger", ["a", "b"], ["ab"]),
            node("MatMulInteger", ["a", "w2"], ["long"]),
        ],
        {"x": ("uint8", (1, MIN_DOT_LENGTH - 1, 5, 5)), "a": ("uint8", (3, 8)), "b": ("int8", (8, 5))},
        ["short", "ab", "long"],
        {"w1": random_int(rng, "int8", (4, MIN_DOT_LENGTH - 1, 1, 1)), "w2": random_int(rng, "int8", (8, 6))},
    )
    assert _simd_calls(model) == ["simd_matmul"]
    assert _simd_calls(model, simd=False) == []


@needs_tools
def test_profile_counts_every_kernel_call(tmp_path):
    """The profiling image runs the same kernels (same outputs) and counts each call's instructions; they add
    up to the whole run's count within a few instructions per step (the counter reads)."""
    model, _ = _simd_region("uint8")
    target = get_target("cortex-m4", arg_checks=False)
    info = json.loads(json.dumps(target.compile(model, tmp_path)))
    feeds = random_feeds(model, seed=3)
    plain, run = target.emulate(tmp_path, info, feeds)
    profiled, prun = target.emulate(tmp_path, info, feeds, profile=True)
    assert all(np.array_equal(a, b) for a, b in zip(plain, profiled, strict=True))
    assert run.step_instructions is None and len(prun.step_instructions) == len(info["steps"])
    assert all(n > 0 for n in prun.step_instructions)
    assert abs(sum(prun.step_instructions) - run.instructions) <= 50 * len(info["steps"])
    biggest = info["steps"][int(np.argmax(prun.step_instructions))]
    assert biggest["kernel"].startswith(KERNEL_PREFIX)  # the K = 1028 product
    simd_steps = [i for i, s in enumerate(info["steps"]) if s["kernel"].startswith(KERNEL_PREFIX)]
    epilogues = [s for s in info["steps"] if set(s["reads_from"]) & set(simd_steps)]
    assert len(epilogues) == 5  # the requantized cases: each reads its own dot product's result
