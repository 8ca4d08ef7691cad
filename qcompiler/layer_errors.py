"""Per-layer error of the integer model against the float model (``qc compile --eval``, ``qc inspect --errors``).

How a float tensor finds its integer counterpart (the invariants this relies on):

* ``InsertQDQPass`` quantizes each activation point ``v`` of the normalized float model as
  ``QuantizeLinear(v)`` in ``model.qdq.onnx``; a graph output keeps its float name on the DequantizeLinear
  output instead. The integerize passes keep the Q output's name on the integer tensor that replaces it, so
  each Q node names a float tensor, its integer tensor in ``model.int.onnx`` and the scale and zero point
  that dequantize it.
* A row's **owner** is the float node whose integer ops write that integer tensor (integer nodes are named
  ``<float node>/<op>_<i>``). A node fused into its owner (a Relu into its Conv, ``x * Sigmoid(x)`` into the
  Sigmoid's table, a bias Add into its MatMul) is measured at its own output and reported under its owner:
  the row of a Conv+Relu is the Relu's output. Float values without an integer tensor (a Conv output that
  its Relu absorbs, log-coded attention probabilities) and graph inputs get no row.

Both models run in onnxruntime on one thread (deterministic) with the measured tensors added as outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from qcompiler.errors import ArtifactError, CalibrationError
from qcompiler.evaluate import batches, evaluation_arrays
from qcompiler.passes._qdq import BITS_KEY
from qcompiler.qmath import code_range, dequantize
from qcompiler.reference import integer_session

__all__ = ["COLUMNS", "artifact_layer_errors", "layer_errors", "sqnr_db", "sqnr_text", "table_rows"]

#: ops whose second input, when constant, is reported as the layer's weight.
_WEIGHTED_OPS = ("Conv", "MatMul")


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(signal / noise)`` of summed squares, in dB.

    ``inf`` when ``noise == 0`` (exact), ``-inf`` when only the signal is 0.

    >>> sqnr_db(100.0, 1.0), sqnr_db(1.0, 0.0)
    (20.0, inf)
    """
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass(frozen=True)
class _Point:
    """A float tensor with an integer counterpart: ``float ~ scale * (integer - zero_point)``."""

    tensor: str
    int_tensor: str
    scale: float
    zero_point: int
    dtype: str
    bits: int
    node: onnx.NodeProto
    owner: onnx.NodeProto
    order: int


def _points(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, int_model: onnx.ModelProto) -> list[_Point]:
    """Every float node output that has an integer tensor, in graph order (see the module docstring)."""
    producers = {out: (i, n) for i, n in enumerate(float_model.graph.node) for out in n.output}
    by_name = {n.name: n for n in float_model.graph.node}
    int_producers = {out: n.name for n in int_model.graph.node for out in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq_model.graph.initializer}
    # a graph output's float name is on its DequantizeLinear output: integer tensor -> float name
    renamed = {n.input[0]: n.output[0] for n in qdq_model.graph.node if n.op_type == "DequantizeLinear"
               and n.output[0] in {o.name for o in qdq_model.graph.output}}
    points = []
    for q in (n for n in qdq_model.graph.node if n.op_type == "QuantizeLinear"):
        tensor = q.input[0] if q.input[0] in producers else renamed.get(q.output[0])
        if tensor not in producers or q.output[0] not in int_producers:
            continue
        order, node = producers[tensor]
        owner = by_name.get(int_producers[q.output[0]].rsplit("/", 1)[0], node)
        zero = inits[q.input[2]]
        bits = int(next((p.value for p in q.metadata_props if p.key == BITS_KEY), 8))
        points.append(_Point(tensor, q.output[0], float(inits[q.input[1]]), int(zero), str(zero.dtype), bits,
                             node, owner, order))
    return sorted(points, key=lambda p: p.order)


def _session(model: onnx.ModelProto, names: list[str]) -> onnxruntime.InferenceSession:
    """onnxruntime on one thread running a copy of ``model`` that also outputs the tensors ``names``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in present)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return integer_session(copy, options)


def _feeds(float_model: onnx.ModelProto, data: str | Path | dict, samples: int) -> list[dict[str, np.ndarray]]:
    """Batches of the first ``samples`` samples (whole batches of the model's static batch size)."""
    inputs = {i.name: i.type.tensor_type for i in float_model.graph.input}
    arrays = evaluation_arrays(data, list(inputs))
    batch = next(iter(inputs.values())).shape.dim[0].dim_value
    typed = {name: np.asarray(arrays[name], onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
             if t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) else arrays[name]
             for name, t in inputs.items()}
    chunks = batches(typed, batch)[:max(1, math.ceil(samples / batch))]
    if not chunks:
        raise CalibrationError(f"evaluation data holds fewer samples than one batch ({batch})")
    return chunks


def _weight_range(initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> list[float] | None:
    """``[min, max]`` of the constant second input of a Conv/MatMul ``node``, else None."""
    weight = initializers.get(node.input[1]) if node.op_type in _WEIGHTED_OPS else None
    if weight is None:
        return None
    array = onnx.numpy_helper.to_array(weight)
    return [float(array.min()), float(array.max())]


def _finite(value: float) -> float | None:
    """JSON holds no infinities: None stands for them."""
    return value if math.isfinite(value) else None


def _row(point: _Point, signal: float, noise: float, low: float, high: float, weight: list[float] | None) -> dict:
    qmin, qmax = code_range(point.dtype, point.bits)
    return {
        "node": point.node.name, "op_type": point.node.op_type, "owner": point.owner.name,
        "owner_op_type": point.owner.op_type, "order": point.order, "tensor": point.tensor,
        "int_tensor": point.int_tensor, "sqnr_db": _finite(sqnr_db(signal, noise)),
        "rel_l2": math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else None),
        "float_range": [low, high],
        "int_range": [point.scale * (qmin - point.zero_point), point.scale * (qmax - point.zero_point)],
        "weight_range": weight,
    }


def _badness(row: dict) -> float:
    """Noise over signal energy, for sorting (an exact tensor is 0, a zero signal with noise is inf)."""
    if row["sqnr_db"] is not None:
        return 10 ** (-row["sqnr_db"] / 10)
    return 0.0 if row["rel_l2"] == 0 else math.inf


def layer_errors(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, int_model: onnx.ModelProto,
                 data: str | Path | dict, samples: int = 8) -> dict:
    """Error of each integer tensor against its float tensor on the first ``samples`` samples of ``data``.

    ``float_model`` is the normalized float model (``QuantizedModel.float_model``), ``int_model`` the full
    integer reference (boundary Q/DQ included). ``data``: inputs keyed by name, axis 0 = samples (other keys,
    such as ``labels``, are ignored). Returns ``{"samples": n, "layers": rows}``, rows worst first (ties in
    graph order), each with ``sqnr_db`` = 10 log10(sum x^2 / sum (x - x_hat)^2) and ``rel_l2`` =
    ||x - x_hat|| / ||x|| over all samples (x_hat: the dequantized integer tensor; None where not finite:
    ``sqnr_db`` of an exact tensor, whose ``rel_l2`` is 0, and both for an all-zero float tensor), the
    observed ``float_range``, the ``int_range`` the integer grid can represent and the owner's
    ``weight_range`` (None without a weight); ``order`` is the node's index in the float graph.
    """
    points = _points(float_model, qdq_model, int_model)
    feeds = _feeds(float_model, data, samples)
    float_run = _session(float_model, [p.tensor for p in points])
    int_run = _session(int_model, [p.int_tensor for p in points])
    sums = np.zeros((len(points), 2))
    lows, highs = np.full(len(points), np.inf), np.full(len(points), -np.inf)
    for feed in feeds:
        floats = dict(zip([o.name for o in float_run.get_outputs()], float_run.run(None, feed), strict=True))
        ints = dict(zip([o.name for o in int_run.get_outputs()], int_run.run(None, feed), strict=True))
        for i, p in enumerate(points):
            x = floats[p.tensor].astype(np.float64)
            error = x - dequantize(ints[p.int_tensor], p.scale, p.zero_point).astype(np.float64)
            sums[i] += (np.sum(x * x), np.sum(error * error))
            lows[i], highs[i] = min(lows[i], x.min()), max(highs[i], x.max())
    initializers = {t.name: t for t in float_model.graph.initializer}
    rows = [_row(p, *sums[i], float(lows[i]), float(highs[i]), _weight_range(initializers, p.owner))
            for i, p in enumerate(points)]
    rows.sort(key=lambda r: (-_badness(r), r["order"]))
    return {"samples": sum(len(next(iter(f.values()))) for f in feeds), "layers": rows}


#: the columns of :func:`table_rows`.
COLUMNS = ("#", "layer", "ops", "SQNR dB", "rel. L2", "float range", "integer range", "weight range")


def _span(pair: list[float] | None) -> str:
    return "-" if pair is None else f"[{pair[0]:.3g}, {pair[1]:.3g}]"


def sqnr_text(row: dict) -> str:
    """A row's SQNR as shown: dB with one decimal, ``exact`` (no error) or ``-inf`` (all-zero float tensor)."""
    if row["sqnr_db"] is not None:
        return f"{row['sqnr_db']:.1f}"
    return "exact" if row["rel_l2"] == 0 else "-inf"


def table_rows(layers: list[dict]) -> list[tuple[str, ...]]:
    """The rows of ``layers`` (as :func:`layer_errors` returns them) as text, in :data:`COLUMNS` order."""
    def ops(row: dict) -> str:
        return row["op_type"] if row["node"] == row["owner"] else f"{row['owner_op_type']}+{row['op_type']}"

    return [(str(rank), row["owner"], ops(row),
             sqnr_text(row),
             "-" if row["rel_l2"] is None else f"{row['rel_l2']:.2e}",
             _span(row["float_range"]), _span(row["int_range"]), _span(row["weight_range"]))
            for rank, row in enumerate(layers, 1)]


def artifact_layer_errors(directory: str | Path, manifest: dict, model: str | Path, calibration,
                          data: str | Path | dict, samples: int = 8) -> dict:
    """:func:`layer_errors` of the artifact in ``directory`` (``manifest`` read from it), recomputed from the
    float ``model`` and the ``calibration`` data it was compiled from, since an artifact keeps its QDQ and
    integer models but not the normalized float model.

    Invariant: quantizing ``model`` again under the manifest's config reproduces the artifact's
    ``model.int.onnx`` byte for byte (the pipeline is deterministic); when it does not, the model or the
    calibration data are not those of the artifact and the errors would be meaningless: ArtifactError.
    """
    from qcompiler.config import CompileConfig
    from qcompiler.driver import quantize_model
    from qcompiler.targets import get_target

    directory = Path(directory)
    config = CompileConfig.from_json(manifest["config"])
    target = get_target(config.target, **config.target_options)
    quantized = quantize_model(model, calibration, config, target.requant_mantissa_bits)
    if quantized.int_model.SerializeToString() != (directory / "model.int.onnx").read_bytes():
        raise ArtifactError(f"{model} with this calibration data does not reproduce {directory}/model.int.onnx: "
                            "pass the float model and the --calib file the artifact was compiled from")
    return layer_errors(quantized.float_model, quantized.qdq_model, quantized.int_model, data, samples)
