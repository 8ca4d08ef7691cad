"""What qc did to each float node, as JSON data for ``report.json`` and ``qc inspect``."""

from __future__ import annotations

import collections
import re

import onnx

from qcompiler.model_io import boundary
from qcompiler.nonlinear import recorded

__all__ = ["build_report", "op_count_rows", "block_of"]

#: a path component naming a repeated transformer block: ``blocks.3``, ``layer.0``, ``layers_11``, ...
_BLOCK = re.compile(r"(?:^|/)((?:blocks?|layers?|h)[._]\d+)(?:/|$)")


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _qdq_params(qdq: onnx.ModelProto) -> dict[str, dict]:
    """Scale, zero point and dtype of every activation quantized in the QDQ model, keyed by float value name."""
    inits = _initializers(qdq)
    params = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear":
            zero = onnx.numpy_helper.to_array(inits[node.input[2]])
            params[node.input[0]] = {"scale": float(onnx.numpy_helper.to_array(inits[node.input[1]])),
                                     "zero_point": int(zero), "dtype": str(zero.dtype)}
    return params


def build_report(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, int_model: onnx.ModelProto,
                 ranges: dict[str, tuple[float, float]], layer_bits: dict[str, tuple[int, int]] | None = None) -> dict:
    """Per float node: the integer ops it became (or the node it was fused into), its output's qparams and,
    for a linear layer, its ``bits`` (weight and input widths from ``layer_bits``).

    Integer nodes are attributed to the float node whose name prefixes theirs (``<float name>/<op>_<i>``).
    """
    params = _qdq_params(qdq_model)
    methods = recorded(int_model)
    integer_ops: dict[str, list[str]] = collections.defaultdict(list)
    for node in int_model.graph.node:
        owner = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
        integer_ops[owner].append(f"{node.domain + '.' if node.domain else ''}{node.op_type}")
    float_nodes = list(float_model.graph.node)
    producer = {out: i for i, n in enumerate(float_nodes) for out in n.output}
    nodes = []
    for node in float_nodes:
        output = node.output[0]
        entry = {"name": node.name, "op_type": node.op_type, "integer_ops": integer_ops.get(node.name, [])}
        if output in params:
            entry["output"] = {"name": output, **params[output]}
            if output in ranges:
                entry["output"]["range"] = [float(ranges[output][0]), float(ranges[output][1])]
        if not entry["integer_ops"]:
            entry["fused_into"] = _fused_owner(float_nodes, producer, node, integer_ops)
        if node.name in methods:
            entry["integer_method"] = methods[node.name]
        if layer_bits and node.name in layer_bits:
            entry["bits"] = dict(zip(("weight", "activation"), layer_bits[node.name], strict=True))
        nodes.append(entry)
    inputs, outputs = boundary(int_model)
    return {"nodes": nodes, "inputs": inputs, "outputs": outputs, "blocks": _blocks(nodes)}


def block_of(node_name: str) -> str:
    """The transformer block a node belongs to, from its exporter name (``blocks.3``), else ``""``."""
    found = _BLOCK.search(node_name)
    return found.group(1) if found else ""


def _blocks(nodes: list[dict]) -> list[dict]:
    """Per block (in model order), the integer method and constants of each nonlinearity in it."""
    blocks: dict[str, list[dict]] = {}
    for node in nodes:
        if "integer_method" in node:
            blocks.setdefault(block_of(node["name"]), []).append({"node": node["name"], **node["integer_method"]})
    return [{"block": name or "(outside blocks)", "nonlinear": entries} for name, entries in blocks.items()]


def _fused_owner(nodes: list[onnx.NodeProto], producer: dict[str, int], node: onnx.NodeProto,
                 integer_ops: dict) -> str:
    """The nearest producer of ``node`` that owns integer ops (a Relu fused into its Conv, a bias Add into its
    MatMul, the Mul of ``x * Sigmoid(x)`` into the Sigmoid's table, ...), following, from each node, the input
    computed last in graph order (the graph is topologically sorted, so that input's producer is the one
    closest to the node: for ``x * Sigmoid(x)`` the Sigmoid, not the producer of ``x``). ``nodes``: the float
    graph's nodes in order; ``producer``: output name -> index in ``nodes``."""
    current = node
    while sources := [producer[name] for name in current.input if name in producer]:
        current = nodes[max(sources)]
        if current.name in integer_ops:
            return current.name
    return ""


def op_count_rows(report: dict) -> list[tuple[str, int, int]]:
    """``(op_type, nodes, nodes made integer or fused)`` per float op type."""
    total: collections.Counter = collections.Counter()
    done: collections.Counter = collections.Counter()
    for node in report["nodes"]:
        total[node["op_type"]] += 1
        if node["integer_ops"] or node.get("fused_into"):
            done[node["op_type"]] += 1
    return [(op, total[op], done[op]) for op in sorted(total)]
