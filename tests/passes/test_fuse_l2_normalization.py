"""FuseL2NormalizationPass: torch's ``F.normalize(x, dim=-1)`` export becomes ``LpNormalization(p=2, axis=-1)``."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from passes_testkit import assert_no_match, assert_pass_preserves_function, model, op_types, output_names, run

from qcompiler.model_io import load_float_model
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.fold_constants import FoldConstantsPass
from qcompiler.passes.fuse_l2_normalization import FuseL2NormalizationPass
from qcompiler.passes.name_nodes import NameNodesPass
from qcompiler.passes.set_static_shapes import SetStaticShapesPass

HEAD = "g (float[2,3,16] x) => (float[2,3,16] y) {{\n  n = ReduceL2 <keepdims = 1> (x, {axes})\n  {body}\n}}"
POOL = {
    "last": np.array([-1], np.int64), "two": np.array([2], np.int64), "first": np.array([0], np.int64),
    "eps": np.array(1e-12, np.float32), "big_eps": np.array(1e-3, np.float32), "one": np.array(1.0, np.float32),
    "shape": np.array([2, 3, 16], np.int64), "wide": np.array([4, 2, 3, 16], np.int64),
}  # fmt: skip


def graph(body: str, axes: str = "last") -> str:
    return HEAD.format(axes=axes, body=body)


VARIANTS = {
    "clip-expand": graph("c = Clip (n, eps, )\n  e = Expand (c, shape)\n  y = Div (x, e)"),
    "clip": graph("c = Clip (n, eps)\n  y = Div (x, c)"),
    "max": graph("c = Max (eps, n)\n  y = Div (x, c)"),
    "no-eps": graph("y = Div (x, n)"),
    "positive-axis": graph("c = Clip (n, eps)\n  y = Div (x, c)", axes="two"),
}


@pytest.mark.parametrize("text", VARIANTS.values(), ids=VARIANTS.keys())
def test_fuses_and_preserves_function(text):
    m = model(text, **POOL)
    assert assert_pass_preserves_function(FuseL2NormalizationPass(), m).modified is True
    assert op_types(m) == ["LpNormalization"] and output_names(m) == ["y"]
    (node,) = list(m.graph)
    assert node.attributes["axis"].value == -1 and node.attributes["p"].value == 2


def test_zero_rows_stay_zero():
    """eps semantics: torch gives 0 / eps = 0 on a zero row and so does onnxruntime's LpNormalization."""
    m = model(VARIANTS["clip-expand"], **POOL)
    feeds = {"x": np.zeros((2, 3, 16), np.float32)}
    FuseL2NormalizationPass()(m)
    np.testing.assert_array_equal(run(m, feeds)["y"], 0.0)


@pytest.mark.parametrize(
    "text",
    [
        graph("c = Clip (n, big_eps)\n  y = Div (x, c)"),  # eps > 1e-6 changes small rows: refused
        graph("c = Clip (n, eps, one)\n  y = Div (x, c)"),  # a max bound is not a norm
        graph("c = Clip (n, eps)\n  y = Div (x, c)", axes="first"),
        graph("c = Clip (n, eps)\n  e = Expand (c, wide)\n  y = Div (x, e)"),  # Expand adds an axis
        graph("c = Clip (n, eps)\n  y = Div (c, x)"),
    ],
    ids=["large-eps", "clip-max", "other-axis", "expand-changes-shape", "inverted"],
)
def test_no_match(text):
    m = model(text, infer_shapes="wide" not in text, **POOL)
    assert_no_match(FuseL2NormalizationPass(), m)


def test_no_match_on_non_constant_eps():
    text = graph("c = Max (n, e)\n  y = Div (x, c)").replace("(float[2,3,16] x)", "(float[2,3,16] x, float[1] e)")
    assert_no_match(FuseL2NormalizationPass(), model(text, **POOL))


def test_torch_normalize_export_fuses():
    torch = pytest.importorskip("torch")

    class Head(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.normalize(x, dim=-1)

    buffer = io.BytesIO()
    torch.onnx.export(Head(), torch.randn(2, 5, 16), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    m = load_float_model(onnx.load_from_string(buffer.getvalue()))
    Pipeline([NameNodesPass(), SetStaticShapesPass(), FoldConstantsPass()])(m)
    assert "ReduceL2" in op_types(m)
    assert assert_pass_preserves_function(FuseL2NormalizationPass(), m).modified is True
    assert op_types(m) == ["LpNormalization"]
