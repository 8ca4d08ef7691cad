"""Helpers shared by the tests in ``tests/core``: tiny ONNX models from text, onnxruntime sessions, settings.

Named ``core_testkit`` (not ``helpers``) because test folders are not packages: pytest puts each folder on
``sys.path``, so helper modules need names that are unique across ``tests/``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
from hypothesis import HealthCheck, settings
from onnx import numpy_helper

from qcompiler.intops import DOMAIN, VERSION, function_protos
from qcompiler.reference import integer_session

#: Hypothesis settings of every property test here: derandomized (same examples every run), no database.
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)

_HEADER = f'<ir_version: 10, opset_import: ["" : 21, "{DOMAIN}" : {VERSION}]>\n'


def onnx_model(graph_text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A checked opset-21 model (with the qc functions attached) from ONNX text, shapes and types inferred."""
    proto = onnx.parser.parse_model(_HEADER + graph_text)
    proto.graph.initializer.extend(numpy_helper.from_array(np.asarray(a), name) for name, a in initializers.items())
    proto.functions.extend(function_protos())
    onnx.checker.check_model(proto)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def ir_model(graph_text: str, **initializers: np.ndarray) -> ir.Model:
    """:func:`onnx_model` as an onnx-ir model (what the verifier and the passes read)."""
    return ir.serde.deserialize_model(onnx_model(graph_text, **initializers))


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``proto`` (integer ops exact on every CPU: qcompiler.reference)."""
    return integer_session(proto)
