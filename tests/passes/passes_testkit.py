"""Helpers shared by the pass tests: tiny models from ONNX text, onnxruntime runs, QDQ models, code comparisons.

Named ``passes_testkit`` (not ``helpers``) because test folders are not packages: pytest puts each folder on
``sys.path``, so helper modules need names that are unique across ``tests/`` (compare ``targets_testkit``).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from qcompiler.calibration import collect_ranges
from qcompiler.intops import DOMAIN, VERSION, function_protos
from qcompiler.pass_infra import QcPass
from qcompiler.pipelines import normalize_pipeline, quantize_pipeline
from qcompiler.quant_plan import QParams, assign_qparams, calibration_points
from qcompiler.reference import integer_session

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'
_NP_DTYPES = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.INT32: np.int32,
    ir.DataType.INT64: np.int64,
    ir.DataType.UINT8: np.uint8,
    ir.DataType.INT8: np.int8,
}


# -- building models -------------------------------------------------------------------------------------


def model(graph_text: str, infer_shapes: bool = True, **initializers: np.ndarray) -> ir.Model:
    """An opset-21 model from the ONNX text of one graph plus initializers, with shapes inferred.

    ``initializers`` is a pool: only the arrays that some node reads, and that are not graph inputs, are
    added (so parametrized graphs can share one pool). Shapes are inferred as :class:`SetStaticShapesPass`
    leaves them, since most passes match on shapes; ``infer_shapes=False`` keeps only the declared ones.
    """
    proto = onnx.parser.parse_model(_HEADER + graph_text)
    read = {name for node in proto.graph.node for name in node.input} - {v.name for v in proto.graph.input}
    proto.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(array), name)
        for name, array in initializers.items()
        if name in read
    )
    onnx.checker.check_model(proto)
    if infer_shapes:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return ir.serde.deserialize_model(proto)


def copy(m: ir.Model) -> ir.Model:
    """An independent copy of ``m`` (through its proto)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(m))


def weights(*shape: int, seed: int = 0, scale: float = 0.5) -> np.ndarray:
    """Seeded float32 normal weights."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def positive(*shape: int, seed: int = 0) -> np.ndarray:
    """Seeded float32 values in [0.5, 1.5) (variances, scales)."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


# -- looking at models -----------------------------------------------------------------------------------


def op_types(m: ir.Model) -> list[str]:
    """Op types of the graph's nodes, in order (``domain.Op`` outside the default domain)."""
    return [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in m.graph]


def nodes_of(m: ir.Model, op_type: str) -> list[ir.Node]:
    """The nodes of ``m`` with ``op_type`` (default or qc domain)."""
    return [n for n in m.graph if n.op_type == op_type]


def only(m: ir.Model, op_type: str) -> ir.Node:
    """The single node of ``m`` with ``op_type``."""
    found = nodes_of(m, op_type)
    assert len(found) == 1, f"expected one {op_type}, found {len(found)} in {op_types(m)}"
    return found[0]


def output_names(m: ir.Model) -> list[str]:
    """Names of the graph outputs."""
    return [v.name for v in m.graph.outputs]


def dequantize(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(codes - zero_point) * scale`` in float32, as DequantizeLinear computes it."""
    centered = codes.astype(np.int32) - zero_point.astype(np.int32)
    return centered.astype(np.float32) * scale.astype(np.float32)


def const(value: ir.Value) -> np.ndarray:
    """The numpy content of an initializer value."""
    assert value.const_value is not None, f"{value.name} is not a constant"
    return value.const_value.numpy()


# -- running models --------------------------------------------------------------------------------------


def to_proto(m: ir.Model) -> onnx.ModelProto:
    """``m`` as a proto that onnxruntime can run: qc functions attached when it uses them."""
    proto = ir.serde.serialize_model(m)
    uses_qc = any(node.domain == DOMAIN for node in proto.graph.node)
    if uses_qc and not any(op.domain == DOMAIN for op in proto.opset_import):
        proto.opset_import.add(domain=DOMAIN, version=VERSION)
    if uses_qc and not any(f.domain == DOMAIN for f in proto.functions):
        proto.functions.extend(function_protos())
    return proto


def run(m: ir.Model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs of ``m`` on ``feeds`` in onnxruntime (CPU, no graph optimizations), keyed by name.

    ``outputs`` selects values by name (intermediate values too); by default the graph outputs.
    """
    proto = to_proto(m)
    if outputs is not None:
        del proto.graph.output[:]
        for name in outputs:
            proto.graph.output.add().name = name
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # integerized models keep dead weights until FinalizeIntegerModelPass
    session = integer_session(proto, options)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def random_feeds(m: ir.Model, seed: int = 0, batches: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input that is not an initializer: standard normal floats, integers.

    ``batches > 1`` stacks that many model batches along axis 0 (sample-major calibration data).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in m.graph.inputs:
        if value.name in m.graph.initializers:
            continue
        shape = [int(d) for d in value.shape]
        shape[0] *= batches
        dtype = _NP_DTYPES[value.dtype]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            feeds[value.name] = rng.integers(
                max(info.min, -1000), min(info.max, 1000), shape, endpoint=True
            ).astype(dtype)
    return feeds


def assert_pass_preserves_function(pass_: QcPass, m: ir.Model, seed: int = 0, atol: float = 1e-5):
    """Run ``pass_`` on ``m`` in place; its outputs on random inputs must match the model's before (float).

    Outputs are paired by position: whether a pass keeps the output names is for the golden tests to check.
    """
    feeds = random_feeds(m, seed)
    expected = run(m, feeds)
    result = pass_(m)
    actual = run(m, feeds)
    assert len(actual) == len(expected)
    for (name, want), got in zip(expected.items(), actual.values(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=f"output {name}")
    return result


def assert_no_match(pass_: QcPass, m: ir.Model) -> None:
    """``pass_`` must report ``modified is False`` and leave ``m`` exactly as it was (same serialized proto)."""
    before = ir.serde.serialize_model(m)
    assert pass_(m).modified is False
    after = ir.serde.serialize_model(m)
    assert op_types(ir.serde.deserialize_model(after)) == op_types(ir.serde.deserialize_model(before))
    assert after == before, "the pass reported no change but changed the model"


# -- QDQ models ------------------------------------------------------------------------------------------


def qdq(
    graph_text: str,
    dtype: str = "uint8",
    overrides: dict[str, QParams] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    **initializers: np.ndarray,
) -> ir.Model:
    """The QDQ form of a float model: normalized, calibrated (min/max over 16 random batches), quantized.

    ``overrides`` replaces the planned parameters of some activation points (to build no-match cases).
    """
    m = model(graph_text, **initializers)
    with deadline(30):  # a pass that never stops fails the test instead of hanging the suite
        normalize_pipeline(shapes or {})(m)
    names = [v.name for v in calibration_points(m.graph)]
    ranges = collect_ranges(ir.serde.serialize_model(m), names, random_feeds(m, seed + 1000, batches=16))
    params = assign_qparams(m.graph, ranges, dtype)
    params.update(overrides or {})
    quantize_pipeline(params)(m)
    return m


def output_codes(m: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The integer tensors behind the graph outputs (the inputs of their boundary DequantizeLinear)."""
    names = []
    for out in m.graph.outputs:
        producer = out.producer()
        assert producer is not None and producer.op_type == "DequantizeLinear", (
            f"{out.name} is not dequantized"
        )
        names.append(producer.inputs[0].name)
    return run(m, feeds, names)


def every_code(qdq_model: ir.Model) -> dict[str, np.ndarray]:
    """Feeds whose boundary QuantizeLinear yields every code of its dtype, in order, repeated to fill the input.

    An input of ``C * 256`` elements per sample thus gives each channel (of an NCHW input) every code once.
    """
    feeds = {}
    for value in qdq_model.graph.inputs:
        (quant,) = value.consumers()
        scale, zero_point = const(quant.inputs[1]), const(quant.inputs[2])
        info = np.iinfo(zero_point.dtype)
        size = int(np.prod([int(d) for d in value.shape]))
        assert size % (info.max - info.min + 1) == 0, f"{value.name}: {size} elements do not hold every code"
        codes = np.resize(np.arange(info.min, info.max + 1), size)
        feeds[value.name] = dequantize(codes, scale, zero_point).reshape([int(d) for d in value.shape])
    return feeds


def integerize(
    pass_: QcPass,
    qdq_model: ir.Model,
    seed: int = 0,
    steps: int = 0,
    equal_fraction: float = 1.0,
    feeds: dict[str, np.ndarray] | None = None,
):
    """Run ``pass_`` on a copy of ``qdq_model``; compare the integer output tensors of both on ``feeds``.

    ``feeds`` defaults to seeded random inputs. ``steps == 0`` requires bit equality (ops whose integer form
    is the fake-quant semantics exactly); else every element may differ by at most ``steps`` and at least
    ``equal_fraction`` of them must be equal. Returns the pass result and the integerized model.
    """
    feeds = random_feeds(qdq_model, seed) if feeds is None else feeds
    expected = output_codes(qdq_model, feeds)
    m = copy(qdq_model)
    result = pass_(m)
    actual = output_codes(m, feeds)
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        assert diff.max(initial=0) <= steps, f"{name}: codes differ by up to {diff.max()} (allowed {steps})"
        assert np.mean(diff == 0) >= equal_fraction, f"{name}: only {np.mean(diff == 0):.1%} of codes equal"
    return result, m


# -- guards ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the block after ``seconds`` (guards tests of passes that may not stop)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
