"""Loading user models with clear errors, and cutting the integer region out of an integer model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir

from qcompiler.errors import ModelError

__all__ = ["load_float_model", "refuse_empty_values", "integer_region", "boundary", "is_integer_entry"]


def require_model_file(source: str | Path | onnx.ModelProto) -> None:
    """Refuse a model path that is not a file (cheap: callers check before loading TVM or calibrating)."""
    if not isinstance(source, onnx.ModelProto) and not Path(source).is_file():
        raise ModelError(f"model file not found: {source}")


def load_float_model(source: str | Path | onnx.ModelProto) -> ir.Model:
    """Load and check an ONNX model; malformed, truncated or non-finite models raise :class:`ModelError`."""
    if isinstance(source, onnx.ModelProto):
        proto = source
    else:
        require_model_file(source)
        path = Path(source)
        if path.stat().st_size == 0:
            raise ModelError(f"{path} is empty (0 bytes), not an ONNX model")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf raises DecodeError, but truncated files raise others too
            raise ModelError(f"{path} is not a readable ONNX model (truncated or corrupt?): {error}") from error
        _load_external_data(proto, path)
    where = "the model" if isinstance(source, onnx.ModelProto) else f"{source}"
    _check_structure(proto, where)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelError(f"{where} fails the ONNX checker: {first}") from error
    proto = _upgrade_opset(proto, where)
    model = ir.serde.deserialize_model(proto)
    _check_finite(model)
    return model


#: graph input and output element types qc takes: float32 tensors (quantized at the boundary) and integers.
_ACCEPTED_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
                   onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
                   onnx.TensorProto.BOOL}


def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    """Refuse, naming the node or tensor, what the ONNX checker reports without a name (or not at all)."""
    if not proto.graph.node:
        raise ModelError(f"{where}: the graph has no nodes")
    for index, node in enumerate(proto.graph.node):
        if not node.op_type:
            raise ModelError(f"{where}: node {index} ('{node.name or '<unnamed>'}', outputs {list(node.output)}) "
                             "has an empty op_type; the file is corrupt or was written by a broken exporter")
    initializers = {t.name for t in proto.graph.initializer}
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            if not value.type.HasField("tensor_type"):
                raise ModelError(f"{where}: graph {kind} '{value.name}' is not a tensor; qc takes tensor inputs")
            if tensor.elem_type not in _ACCEPTED_TYPES:
                name = _type_name(tensor.elem_type)
                raise ModelError(f"{where}: graph {kind} '{value.name}' is {name}; qc quantizes float32 models "
                                 "(integer inputs such as token ids pass through): export the model in float32")
            if not tensor.HasField("shape"):
                raise ModelError(f"{where}: graph {kind} '{value.name}' has unknown rank (no shape in the model); "
                                 f"re-export it with its shape (dynamic dims are fine, qc fixes them with "
                                 f"--input-shape)")


def _type_name(elem_type: int) -> str:
    """An ONNX element type as users know it: ``float64``, ``bfloat16``, ``float16``, ``string``, ..."""
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def refuse_empty_values(graph: ir.Graph) -> None:
    """Refuse a node whose output has no elements (a zero-size weight, a zero dim), naming it and the cause."""
    for node in graph:
        for out in node.outputs:
            dims = list(out.shape.dims) if out.shape is not None else []
            if dims and all(isinstance(d, int) for d in dims) and 0 in dims:
                empty = [f"'{v.name}' {list(v.shape.dims)}" for v in node.inputs
                         if v is not None and v.shape is not None and 0 in list(v.shape.dims)]
                cause = f"; its input(s) {', '.join(empty)} are empty" if empty else ""
                raise ModelError(f"node '{node.name}' ({node.op_type}) computes the empty tensor '{out.name}' "
                                 f"of shape {dims}{cause}: fix the exported model (a zero-size weight?)")


#: the default-domain opset qc's passes emit and the integer model uses.
OPSET = 21


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read the tensors ``proto`` keeps in files beside ``path``; refuse, naming them, any it cannot read
    (a missing file, or a location outside the model's directory)."""
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as error:  # onnx raises ValidationError, OSError or others for bad locations
        external = [t.name for t in proto.graph.initializer if onnx.external_data_helper.uses_external_data(t)]
        raise ModelError(f"{path}: cannot read the external data of tensor(s) {external}: {error}") from error


def _upgrade_opset(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Convert the model to opset :data:`OPSET`, the one qc's passes and integer ops are written for."""
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version == OPSET:
        return proto
    if version > OPSET:
        raise ModelError(f"{where} uses opset {version}; qc supports opsets up to {OPSET}: re-export with opset {OPSET}")
    try:
        return onnx.version_converter.convert_version(proto, OPSET)
    except Exception as error:
        raise ModelError(f"cannot convert {where} from opset {version} to {OPSET}: {error}; "
                         f"re-export it with opset_version={OPSET}") from error


def _check_finite(model: ir.Model) -> None:
    """Refuse float initializers holding NaN or Inf, naming each."""
    bad = []
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or not tensor.dtype.is_floating_point():
            continue
        array = tensor.numpy()
        if not np.all(np.isfinite(array)):
            bad.append(f"{name} ({int(np.sum(~np.isfinite(array)))} non-finite of {array.size})")
    for node in model.graph:
        tensor = node.attributes["value"].value if node.op_type == "Constant" and "value" in node.attributes else None
        if tensor is not None and tensor.dtype.is_floating_point() and not np.all(np.isfinite(tensor.numpy())):
            bad.append(f"Constant node {node.name or node.outputs[0].name}")
    if bad:
        raise ModelError("weights hold NaN or Inf: " + ", ".join(bad) + "; fix the exported model")


def boundary(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Describe the float/integer boundary of an integer model: one entry per graph input and output.

    Each entry: ``name`` (float graph value), ``int_name`` (integer tensor inside), ``shape``, ``int_dtype``,
    ``scale`` and ``zero_point`` read from the boundary QuantizeLinear / DequantizeLinear.

    An **integer graph input** (token ids, an attention mask: any non-float input) has no boundary node: it
    enters the integer region as it is. Its entry has ``int_name == name``, ``int_dtype`` its own dtype and
    ``scale = zero_point = None`` (feeds pass through unchanged, see :func:`is_integer_entry`).
    """
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}

    def entry(float_name: str, node: onnx.NodeProto, int_name: str) -> dict:
        zero = inits[node.input[2]]
        return {"name": float_name, "int_name": int_name, "shape": shapes[float_name], "int_dtype": str(zero.dtype),
                "scale": float(inits[node.input[1]]), "zero_point": int(zero)}

    inputs = []
    initializer_names = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        elem_type = value.type.tensor_type.elem_type
        if value.name in initializer_names:
            continue
        if elem_type in _INTEGER_INPUT_TYPES:
            inputs.append({"name": value.name, "int_name": value.name, "shape": shapes[value.name],
                           "int_dtype": onnx.helper.tensor_dtype_to_np_dtype(elem_type).name,
                           "scale": None, "zero_point": None})
            continue
        quant = [n for n in consumers.get(value.name, []) if n.op_type == "QuantizeLinear"]
        if len(quant) != 1 or len(consumers[value.name]) != 1:
            raise ModelError(f"input '{value.name}' is not consumed by exactly one boundary QuantizeLinear")
        inputs.append(entry(value.name, quant[0], quant[0].output[0]))
    outputs = []
    for value in model.graph.output:
        node = producers.get(value.name)
        if node is None or node.op_type != "DequantizeLinear":
            raise ModelError(f"output '{value.name}' is not produced by a boundary DequantizeLinear")
        outputs.append(entry(value.name, node, node.input[0]))
    return inputs, outputs


#: graph input types that enter the integer region directly (no boundary QuantizeLinear).
_INTEGER_INPUT_TYPES = frozenset({
    onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.BOOL,
})  # fmt: skip


def is_integer_entry(entry: dict) -> bool:
    """Whether a :func:`boundary` entry is an integer graph input (passed through, not quantized)."""
    return entry.get("scale") is None


def integer_region(model: onnx.ModelProto) -> onnx.ModelProto:
    """The integer model without its boundary Q/DQ: integer graph inputs and outputs.

    The result is what targets compile and what the bit-exactness tests run in onnxruntime.
    """
    inputs, outputs = boundary(model)
    region = onnx.ModelProto()
    region.CopyFrom(model)
    graph = region.graph
    boundary_nodes = {e["int_name"] for e in inputs} | {e["name"] for e in outputs}
    kept = [n for n in graph.node if not any(o in boundary_nodes for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    type_of = {name: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))
               for name in ("uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "bool")}
    del graph.input[:]
    graph.input.extend(onnx.helper.make_tensor_value_info(e["int_name"], type_of[e["int_dtype"]], e["shape"]) for e in inputs)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(e["int_name"], type_of[e["int_dtype"]], e["shape"]) for e in outputs)
    used = {name for node in graph.node for name in node.input}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return region
