"""Tiny integer-region models built in code, and the bit-exactness check against onnxruntime."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnx import helper

from qcompiler import intops
from qcompiler.reference import integer_session
from qcompiler.targets import CompiledModule, get_target

ONNX_DTYPES = {
    np.dtype(t).name: helper.np_dtype_to_tensor_dtype(np.dtype(t))
    for t in ("int8", "uint8", "int16", "int32", "int64", "bool")
}


def node(
    op_type: str, inputs: Sequence[str], outputs: Sequence[str], domain: str = "", **attrs
) -> onnx.NodeProto:
    """A node named after its first output."""
    return helper.make_node(op_type, list(inputs), list(outputs), name=outputs[0], domain=domain, **attrs)


def requantize(x: str, y: str, prefix: str, to: str = "int8") -> onnx.NodeProto:
    """A ``qc.Requantize`` node whose parameters are the initializers ``{prefix}_multiplier`` etc."""
    params = [f"{prefix}_{p}" for p in ("multiplier", "shift", "zero_point", "qmin", "qmax")]
    return node("Requantize", [x, *params], [y], domain=intops.DOMAIN, to=ONNX_DTYPES[to])


def requantize_params(prefix: str, multiplier, shift, zero_point: int, qmin: int, qmax: int) -> dict:
    """Initializers for :func:`requantize` (all int64, as ``qc.Requantize`` requires)."""
    values = {"multiplier": multiplier, "shift": shift, "zero_point": zero_point, "qmin": qmin, "qmax": qmax}
    return {f"{prefix}_{k}": np.asarray(v, dtype=np.int64) for k, v in values.items()}


def region(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, tuple[str, Sequence[int]]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """An integer region: opset 21 + ``qc`` with the qc functions attached; output types are inferred."""
    graph = helper.make_graph(
        list(nodes),
        "region",
        [
            helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], shape)
            for name, (dtype, shape) in inputs.items()
        ],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), name) for name, v in (initializers or {}).items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", intops.ONNX_OPSET), helper.make_opsetid(intops.DOMAIN, 1)],
        functions=intops.function_protos(),
    )
    inferred = {
        v.name: v for v in onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info
    }
    for output in model.graph.output:
        output.type.CopyFrom(inferred[output.name].type)
    onnx.checker.check_model(model, full_check=True)
    return model


def random_int(rng: np.random.Generator, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Uniform integers over the dtype's full range; booleans are fair coin flips."""
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-range random values for every graph input; the dtype's extremes come first."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        values = random_int(rng, dtype, [d.dim_value for d in tensor_type.shape.dim])
        if dtype != "bool":
            flat = values.reshape(-1)
            flat[:2] = [np.iinfo(dtype).min, np.iinfo(dtype).max][: flat.size]
        feeds[value.name] = values
    return feeds


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The reference: onnxruntime's CPU provider on the integer region (it inlines the qc functions; integer
    ops exact on every CPU, see qcompiler.reference)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return integer_session(model, options)


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for ``feeds``."""
    return ort_session(model).run(None, dict(feeds))


def compile_region(model: onnx.ModelProto, out_dir: pathlib.Path) -> CompiledModule:
    """lower + build + export on the x86 target, then load the exported library."""
    target = get_target("x86")
    return target.load(out_dir, target.compile(model, out_dir))


def assert_bit_exact(
    model: onnx.ModelProto | ort.InferenceSession, module: CompiledModule, feeds: Mapping[str, np.ndarray]
) -> None:
    """Every output of ``module`` equals onnxruntime's (given a model or a session), dtype and shape too."""
    session = model if isinstance(model, ort.InferenceSession) else ort_session(model)
    expected = session.run(None, dict(feeds))
    actual = module.run(feeds)
    assert len(actual) == len(expected)
    for name, want, got in zip(module.output_names, expected, actual, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, (
            name,
            got.dtype,
            got.shape,
            want.dtype,
            want.shape,
        )
        mismatch = np.argwhere(got != want)
        assert mismatch.size == 0, (
            f"{name}: {len(mismatch)} mismatches, first at {mismatch[:3].tolist()}: "
            f"got {got[tuple(mismatch[0])]} want {want[tuple(mismatch[0])]}"
        )
