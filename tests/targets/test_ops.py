"""Every converter, one tiny region per case, bit-exact against onnxruntime on full-range random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from targets_testkit import (
    ONNX_DTYPES,
    assert_bit_exact,
    compile_region,
    node,
    random_feeds,
    region,
    requantize,
    requantize_params,
)

I8, U8, I16, I32, I64 = "int8", "uint8", "int16", "int32", "int64"
INT64_MAX = np.iinfo(np.int64).max


def i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def weights(shape, dtype=I8, seed=1) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def binary(op, dtype, a_shape=(3, 4), b_shape=(3, 4)):
    return [node(op, ["a", "b"], ["y"])], {"a": (dtype, a_shape), "b": (dtype, b_shape)}, ["y"]


def unary(op, dtype, shape=(4, 5)):
    return [node(op, ["x"], ["y"])], {"x": (dtype, shape)}, ["y"]


def by_constant(op, dtype, divisor, **attrs):
    """``op(x, divisor)`` with a constant nonzero divisor (constants without -1 take the unguarded path)."""
    nodes = [node(op, ["x", "d"], ["y"], **attrs)]
    return nodes, {"x": (dtype, (5, len(divisor)))}, ["y"], {"d": np.array(divisor, dtype=dtype)}


def conv(x_dtype, x_shape, w_shape, **attrs):
    nodes = [node("ConvInteger", ["x", "w"], ["y"], **attrs)]
    return nodes, {"x": (x_dtype, x_shape)}, ["y"], {"w": weights(w_shape)}


def max_pool(dtype, shape, **attrs):
    return [node("MaxPool", ["x"], ["y"], **attrs)], {"x": (dtype, shape)}, ["y"]


def resize(sizes, **attrs):
    nodes = [node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", **attrs)]
    return nodes, {"x": (U8, (1, 2, 3, 4))}, ["y"], {"sizes": i64(*sizes)}


RESIZE_COORDINATES = [
    "half_pixel",
    "pytorch_half_pixel",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "align_corners",
]
RESIZE_NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def resize_matrix():
    """Every supported (coordinate, nearest) mode pair, up- and down-sampling and scale 1, in one region."""
    nodes, outputs = [], []
    for c in RESIZE_COORDINATES:
        for m in RESIZE_NEAREST:
            for tag, sizes in (("up", "up"), ("down", "down"), ("same", "same")):
                out = f"{c}_{m}_{tag}"
                nodes.append(
                    node(
                        "Resize",
                        ["x", "", "", sizes],
                        [out],
                        coordinate_transformation_mode=c,
                        nearest_mode=m,
                    )
                )
                outputs.append(out)
    return (
        nodes,
        {"x": (I8, (1, 1, 5, 7))},
        outputs,
        {"up": i64(1, 1, 13, 11), "down": i64(1, 1, 3, 4), "same": i64(1, 1, 5, 14)},
    )


def compare_and_logic():
    nodes = [
        node("Greater", ["a", "b"], ["gt"]),
        node("Less", ["a", "b"], ["lt"]),
        node("Equal", ["a", "c"], ["eq"]),
        node("Not", ["gt"], ["not_gt"]),
        node("And", ["gt", "eq"], ["and"]),
        node("Or", ["lt", "eq"], ["or"]),
        node("Where", ["gt", "a", "b"], ["where"]),
    ]
    inputs = {"a": (I8, (4, 6)), "b": (I8, (4, 6)), "c": (I8, (6,))}
    return nodes, inputs, ["gt", "lt", "eq", "not_gt", "and", "or", "where"]


def casts():
    """int <-> int casts wrap like C (ORT); int -> bool is ``!= 0``."""
    pairs = [(I32, I8), (I32, U8), (I32, I16), (I8, U8), (U8, I8), (I64, I32), (I8, I32), (I32, "bool")]
    nodes, inputs, outputs = [], {}, []
    for src, dst in pairs:
        inputs.setdefault(src, (src, (64,)))
        out = f"{src}_to_{dst}"
        nodes.append(node("Cast", [src], [out], to=ONNX_DTYPES[dst]))
        outputs.append(out)
    nodes.append(node("Cast", ["int32_to_bool"], ["bool_to_int8"], to=ONNX_DTYPES[I8]))
    return nodes, inputs, [*outputs, "bool_to_int8"]


def reduces():
    """Full-range int32 sums overflow: onnxruntime saturates them, and so must the lowering."""
    nodes = [
        node("ReduceSum", ["x32", "ax1"], ["sum_keep"]),
        node("ReduceSum", ["x32", "ax_last_first"], ["sum_drop"], keepdims=0),
        node("ReduceSum", ["x32"], ["sum_all"], keepdims=0),
        node("ReduceSum", ["x32"], ["sum_noop"], noop_with_empty_axes=1),
        node("ReduceMax", ["x8", "ax1"], ["max_keep"]),
        node("ReduceMax", ["x8", "ax_last_first"], ["max_drop"], keepdims=0),
        node("ReduceMin", ["xu8", "ax1"], ["min_drop"], keepdims=0),
    ]
    inputs = {"x32": (I32, (2, 3, 4)), "x8": (I8, (2, 3, 4)), "xu8": (U8, (2, 3, 4))}
    outputs = ["sum_keep", "sum_drop", "sum_all", "sum_noop", "max_keep", "max_drop", "min_drop"]
    return nodes, inputs, outputs, {"ax1": i64(1), "ax_last_first": i64(-1, 0)}


def shifts():
    """qc.ShiftLeft / qc.ShiftRight by every legal amount (constant and computed), wrapping on overflow."""
    nodes = [
        node("ShiftLeft", ["x32", "s32"], ["left32"], domain="qc"),
        node("ShiftRight", ["x32", "s32"], ["right32"], domain="qc"),
        node("ShiftLeft", ["x64", "s64"], ["left64"], domain="qc"),
        node("ShiftRight", ["x64", "s64"], ["right64"], domain="qc"),
        node("Cast", ["u8"], ["u8_wide"], to=6),
        node("Mod", ["u8_wide", "thirty_one"], ["computed"], fmod=0),
        node("ShiftRight", ["x32", "computed"], ["right_computed"], domain="qc"),
    ]
    inits = {
        "s32": np.arange(31, dtype=np.int32),
        "s64": np.arange(63, dtype=np.int64),
        "thirty_one": np.array(31, np.int32),
    }
    inputs = {"x32": (I32, (3, 31)), "x64": (I64, (2, 63)), "u8": (U8, (3, 31))}
    return nodes, inputs, ["left32", "right32", "left64", "right64", "right_computed"], inits


def proven_positive_divisors():
    """Divisors proven >= 1 by their producer (Max / Clip / Min / Gather from a table >= 1): no zero guard."""
    nodes = [
        node("Max", ["d", "one"], ["d_max"]),
        node("Clip", ["d", "one"], ["d_clip"]),
        node("Min", ["d_max", "d_clip"], ["d_min"]),
        node("Cast", ["u8"], ["index"], to=6),
        node("Gather", ["table", "index"], ["d_table"], axis=0),
        *(node("Div", ["x", d], [f"q_{d}"]) for d in ("d_max", "d_clip", "d_min", "d_table")),
    ]
    inits = {"one": np.array(1, np.int32), "table": np.arange(1, 257, dtype=np.int32) * 7}
    inputs = {"x": (I32, (4, 6)), "d": (I32, (4, 6)), "u8": (U8, (4, 6))}
    return nodes, inputs, [f"q_{d}" for d in ("d_max", "d_clip", "d_min", "d_table")], inits


def lookup_tables():
    """Per-tensor int8 table (offset 128) and per-channel int32 tables (offsets pick the channel's table)."""
    nodes = [
        node("LookupTable", ["x8", "t8", "off8"], ["y8"], domain="qc"),
        node("LookupTable", ["xu8", "t32", "off32"], ["y32"], domain="qc"),
    ]
    inits = {
        "t8": weights((256,), seed=5),
        "off8": np.array(128, np.int32),
        "t32": weights((3 * 256,), I32, seed=6),
        "off32": np.array([[0], [256], [512]], np.int32),
    }
    return nodes, {"x8": (I8, (2, 3, 4)), "xu8": (U8, (1, 3, 5))}, ["y8", "y32"], inits


def requantize_edges():
    """Per-channel shifts 1..62, negative multipliers, zero points and saturation at both ends."""
    params = requantize_params(
        "rq",
        multiplier=[[1], [-1], [1610612736], [-1518500250], [3], [2**31 - 1]],
        shift=[[1], [1], [36], [40], [2], [62]],
        zero_point=-3,
        qmin=-128,
        qmax=127,
    )
    params |= requantize_params("ru", multiplier=[[1]] * 6, shift=[[4]] * 6, zero_point=128, qmin=0, qmax=255)
    nodes = [requantize("x", "y", "rq"), requantize("x", "yu", "ru", to=U8)]
    return nodes, {"x": (I32, (6, 16))}, ["y", "yu"], params


def slices():
    nodes = [
        node("Slice", ["x", "s1", "e1", "a1"], ["neg_start_clamped_end"]),
        node("Slice", ["x", "s2", "e2", "a2", "st2"], ["negative_step"]),
        node("Slice", ["x", "s3", "e3", "a3", "st3"], ["step2_clamped"]),
    ]
    inits = {
        "s1": i64(-3, 1),
        "e1": i64(INT64_MAX, -1),
        "a1": i64(0, 2),
        "s2": i64(-1),
        "e2": i64(-100),
        "a2": i64(1),
        "st2": i64(-2),
        "s3": i64(1, -100),
        "e3": i64(1000, 4),
        "a3": i64(-1, 0),
        "st3": i64(2, 1),
    }
    return nodes, {"x": (I8, (5, 6, 7))}, ["neg_start_clamped_end", "negative_step", "step2_clamped"], inits


def shapes():
    nodes = [
        node("Reshape", ["x", "shape"], ["reshape"]),
        node("Flatten", ["x"], ["flatten2"], axis=2),
        node("Flatten", ["x"], ["flatten0"], axis=0),
        node("Transpose", ["x"], ["transpose"], perm=[0, 2, 3, 1]),
        node("Transpose", ["x"], ["reverse"]),
        node("Squeeze", ["ones", "sq_axes"], ["squeeze"]),
        node("Squeeze", ["ones"], ["squeeze_all"]),
        node("Unsqueeze", ["squeeze", "unsq_axes"], ["unsqueeze"]),
        node("Expand", ["col", "expand_shape"], ["expand"]),
        node("Tile", ["col", "repeats"], ["tile"]),
        node("Identity", ["x"], ["identity"]),
    ]
    inputs = {"x": (I8, (2, 3, 4, 5)), "ones": (U8, (1, 3, 1, 4)), "col": (I8, (3, 1))}
    inits = {
        "shape": i64(0, -1, 5),
        "sq_axes": i64(0, -2),
        "unsq_axes": i64(0, -1),
        "expand_shape": i64(2, 1, 4),
        "repeats": i64(2, 3),
    }
    outputs = [
        "reshape",
        "flatten2",
        "flatten0",
        "transpose",
        "reverse",
        "squeeze",
        "squeeze_all",
        "unsqueeze",
        "expand",
        "tile",
        "identity",
    ]
    return nodes, inputs, outputs, inits


def gathers():
    nodes = [
        node("Gather", ["x", "idx2d"], ["axis1"], axis=1),
        node("Gather", ["x", "scalar"], ["scalar_axis0"]),
        node("Gather", ["x", "idx32"], ["last_axis"], axis=-1),
    ]
    inits = {
        "idx2d": i64(0, -1, 2, -5).reshape(2, 2),
        "scalar": i64(-1).reshape(()),
        "idx32": np.array([1, -2, 1], np.int32),
    }
    return nodes, {"x": (I8, (3, 5, 2))}, ["axis1", "scalar_axis0", "last_axis"], inits


def splits():
    nodes = [
        node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),
        node("Split", ["t"], ["u0", "u1", "u2"], axis=0, num_outputs=3),
    ]
    return nodes, {"x": (I8, (2, 7)), "t": (U8, (7, 2))}, ["s0", "s1", "u0", "u1", "u2"], {"sizes": i64(3, 4)}


def pads():
    nodes = [
        node("Pad", ["x", "p4", "v_u8"], ["pad_u8"]),
        node("Pad", ["y", "p_last", "v_i8", "last"], ["pad_axes_i8"]),
        node("Pad", ["z", "p2"], ["pad_zero_i32"]),
    ]
    inits = {
        "p4": i64(0, 0, 1, 2, 0, 0, 2, 1),
        "v_u8": np.array(200, np.uint8),
        "p_last": i64(1, 2),
        "v_i8": np.array(-5, np.int8),
        "last": i64(-1),
        "p2": i64(1, 0, 0, 2),
    }
    inputs = {"x": (U8, (1, 2, 3, 3)), "y": (I8, (2, 3, 4)), "z": (I32, (3, 3))}
    return nodes, inputs, ["pad_u8", "pad_axes_i8", "pad_zero_i32"], inits


def concat_int8():
    nodes = [
        node("Concat", ["a", "b", "c"], ["axis1"], axis=1),
        node("Concat", ["a", "a"], ["axis_neg2"], axis=-2),
    ]
    return nodes, {"a": (I8, (2, 3)), "b": (I8, (2, 1)), "c": (I8, (2, 2))}, ["axis1", "axis_neg2"]


CASES = {
    "add_int8_broadcast_wraps": binary("Add", I8, b_shape=(4,)),
    "sub_uint8_wraps": binary("Sub", U8),
    "mul_int32_wraps": binary("Mul", I32),
    "div_int32_truncates": by_constant("Div", I32, [-7, -2, 3, 5, 1000]),
    "div_int8_by_minus_one_wraps": by_constant("Div", I8, [-7, -1, 3, 5, 127]),
    "mod_int32_divisor_sign": by_constant("Mod", I32, [-7, -1, 3, 5, 1000]),
    "mod_int8_divisor_sign": by_constant("Mod", I8, [-7, -2, 3, 5, -128]),
    "fmod_int32_dividend_sign": by_constant("Mod", I32, [-7, -2, 3, 5, 1000], fmod=1),
    "neg_int8": unary("Neg", I8),
    "abs_int8": unary("Abs", I8),
    "sign_int32": unary("Sign", I32),
    "max_variadic_broadcast": (
        [node("Max", ["a", "b", "c"], ["y"])],
        {"a": (I8, (2, 3)), "b": (I8, (3,)), "c": (I8, (1, 1))},
        ["y"],
    ),
    "min_uint8": binary("Min", U8),
    "clip_int32": (
        [node("Clip", ["x", "lo", "hi"], ["y"])],
        {"x": (I32, (4, 5))},
        ["y"],
        {"lo": np.array(-1000, np.int32), "hi": np.array(77777, np.int32)},
    ),
    "clip_min_only_max_only": (
        [node("Clip", ["x", "lo"], ["min_only"]), node("Clip", ["x", "", "hi"], ["max_only"])],
        {"x": (I8, (4, 5))},
        ["min_only", "max_only"],
        {"lo": np.array(-3, np.int8), "hi": np.array(9, np.int8)},
    ),
    "compare_logic_where": compare_and_logic(),
    "casts_wrap": casts(),
    "conv_u8_3x3": conv(U8, (1, 3, 8, 8), (4, 3, 3, 3)),
    "conv_i8_stride2_dilation2": conv(I8, (1, 2, 9, 9), (3, 2, 3, 3), strides=[2, 2], dilations=[2, 2]),
    "conv_depthwise_stride2": conv(U8, (1, 4, 7, 7), (4, 1, 3, 3), group=4, strides=[2, 2]),
    "conv_grouped_pads": conv(I8, (2, 4, 5, 5), (6, 2, 3, 3), group=2, pads=[1, 0, 1, 2]),
    "conv_1d": conv(U8, (2, 3, 10), (4, 3, 3), strides=[2]),
    "matmul_u8_i8": (
        [node("MatMulInteger", ["a", "w"], ["y"])],
        {"a": (U8, (5, 16))},
        ["y"],
        {"w": weights((16, 7))},
    ),
    "matmul_batched_i8": (
        [node("MatMulInteger", ["a", "w"], ["y"])],
        {"a": (I8, (2, 3, 5, 16))},
        ["y"],
        {"w": weights((16, 4))},
    ),
    "matmul_batched_both": (
        [node("MatMulInteger", ["a", "b"], ["y"])],
        {"a": (I8, (2, 5, 8)), "b": (I8, (2, 8, 3))},
        ["y"],
    ),
    "maxpool_uint8_pads_stride2": max_pool(
        U8, (1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    ),
    "maxpool_int8_pads_ceil": max_pool(
        I8, (1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1
    ),
    "maxpool_int8_asymmetric_pads_dilation": max_pool(
        I8, (1, 1, 9, 9), kernel_shape=[2, 3], dilations=[2, 1], pads=[0, 2, 1, 0]
    ),
    "maxpool_1d": max_pool(I8, (1, 2, 9), kernel_shape=[3], strides=[2], pads=[1, 1]),
    "reduce_sum_max_min": reduces(),
    "pads": pads(),
    "shapes": shapes(),
    "concat_int8": concat_int8(),
    "slices_negative_and_clamped": slices(),
    "resize_nearest_x2_asymmetric_floor": resize(
        (1, 2, 6, 8), coordinate_transformation_mode="asymmetric", nearest_mode="floor"
    ),
    "resize_nearest_defaults": resize((1, 2, 5, 7)),
    "resize_nearest_axes": (
        [node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", axes=[-1, 2])],
        {"x": (U8, (1, 2, 3, 4))},
        ["y"],
        {"sizes": i64(8, 6)},
    ),
    "resize_nearest_all_modes": resize_matrix(),
    "gathers": gathers(),
    "splits": splits(),
    "lookup_tables": lookup_tables(),
    "shifts": shifts(),
    "proven_positive_divisors": proven_positive_divisors(),
    "requantize_per_channel_edges": requantize_edges(),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_converter_bit_exact(case, tmp_path):
    nodes, inputs, outputs, *rest = CASES[case]
    model = region(nodes, inputs, outputs, rest[0] if rest else None)
    module = compile_region(model, tmp_path)
    for seed in range(3):
        assert_bit_exact(model, module, random_feeds(model, seed))


def test_pow_by_constant_exponents(tmp_path):
    """Integer Pow (onnxruntime computes it in double) on values whose powers fit int32."""
    exponents = {f"e{k}": np.array(k, np.int64) for k in (0, 1, 2, 3, 5)}
    nodes = [node("Pow", ["x", name], [f"x_pow_{name}"]) for name in exponents]
    model = region(nodes, {"x": (I32, (4, 6))}, [n.output[0] for n in nodes], exponents)
    module = compile_region(model, tmp_path)
    rng = np.random.default_rng(0)
    for low, high in ((-70, 70), (-2, 2)):
        assert_bit_exact(
            model, module, {"x": rng.integers(low, high, size=(4, 6), endpoint=True, dtype=np.int32)}
        )


def test_divisors_proven_positive_need_no_zero_guard():
    """The guard (``equal`` / ``where`` around the divisor) is emitted only where a zero could reach it."""
    from qcompiler.targets.relax_lowering import lower

    nodes, inputs, outputs, inits = proven_positive_divisors()
    guarded = [node("Div", ["x", "d"], ["q_raw"])]
    proven = str(lower(region(nodes, inputs, outputs, inits)))
    raw = str(lower(region(guarded, {"x": (I32, (4, 6)), "d": (I32, (4, 6))}, ["q_raw"])))
    assert "R.equal" not in proven and "R.equal" in raw
