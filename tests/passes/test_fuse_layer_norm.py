"""FuseLayerNormPass: the decomposed LayerNorm of opset < 17 exporters becomes one LayerNormalization."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    const,
    model,
    op_types,
    output_names,
    weights,
)

from qcompiler.model_io import load_float_model
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.fold_constants import FoldConstantsPass
from qcompiler.passes.fuse_layer_norm import FuseLayerNormPass
from qcompiler.passes.name_nodes import NameNodesPass
from qcompiler.passes.set_static_shapes import SetStaticShapesPass

DECOMPOSED = """g (float[2,3,16] x) => (float[2,3,16] y) {{
  mean = ReduceMean <keepdims = 1> (x, axes)
  d = Sub (x, mean)
  sq = {square}
  var = ReduceMean <keepdims = 1> (sq, {axes2})
  ve = Add ({eps_order})
  std = Sqrt (ve)
  {divide}
  {affine}
}}"""
POOL = {
    "axes": np.array([-1], np.int64), "last": np.array([2], np.int64), "first": np.array([0], np.int64),
    "two": np.array(2.0, np.float32), "three": np.array(3.0, np.float32), "eps": np.array(1e-5, np.float32),
    "gamma": weights(16) + 1.0, "beta": weights(16, seed=1), "gamma_rows": weights(3, 1, seed=2),
}  # fmt: skip


def graph(square="Pow (d, two)", axes2="axes", eps_order="var, eps", divide="nrm = Div (d, std)",
          affine="sc = Mul (nrm, gamma)\n  y = Add (sc, beta)") -> str:
    return DECOMPOSED.format(square=square, axes2=axes2, eps_order=eps_order, divide=divide, affine=affine)


VARIANTS = {
    "pow-div": graph(),
    "mul-square": graph(square="Mul (d, d)"),
    "reciprocal-mul": graph(divide="r = Reciprocal (std)\n  nrm = Mul (r, d)"),
    "eps-first-axis-2": graph(eps_order="eps, var", axes2="last"),
    "gamma-first": graph(affine="sc = Mul (gamma, nrm)\n  y = Add (beta, sc)"),
    "no-affine": graph(affine="y = Identity (nrm)"),
}


@pytest.mark.parametrize("text", VARIANTS.values(), ids=VARIANTS.keys())
def test_fuses_and_preserves_function(text):
    m = model(text, **POOL)
    result = assert_pass_preserves_function(FuseLayerNormPass(), m, atol=1e-4)
    assert result.modified is True
    assert op_types(m) in (["LayerNormalization"], ["LayerNormalization", "Identity"])
    assert output_names(m) == ["y"]


def test_golden_fused_node():
    m = model(graph(), **POOL)
    FuseLayerNormPass()(m)
    (node,) = list(m.graph)
    assert node.op_type == "LayerNormalization" and node.attributes["axis"].value == -1
    assert np.isclose(node.attributes["epsilon"].value, 1e-5)
    assert node.inputs[0].name == "x"
    np.testing.assert_array_equal(const(node.inputs[1]), POOL["gamma"])
    np.testing.assert_array_equal(const(node.inputs[2]), POOL["beta"])


def test_gamma_varying_along_another_axis_is_left_as_a_mul():
    """The normalization still fuses (gamma = 1); a Mul by a per-row constant is not a LayerNorm scale."""
    m = model(graph(affine="y = Mul (nrm, gamma_rows)"), **POOL)
    assert assert_pass_preserves_function(FuseLayerNormPass(), m, atol=1e-4).modified is True
    assert op_types(m) == ["LayerNormalization", "Mul"]
    np.testing.assert_array_equal(const(m.graph.node(0).inputs[1]), np.ones(16, np.float32))


@pytest.mark.parametrize(
    "text",
    [
        DECOMPOSED.replace("(x, axes)", "(x, first)").format(
            square="Pow (d, two)", axes2="first", eps_order="var, eps", divide="y = Div (d, std)", affine=""),
        graph(axes2="first"),  # the variance over another axis
        graph(square="Pow (d, three)"),
        graph(divide="nrm = Div (std, d)"),
    ],
    ids=["other-axis", "variance-other-axis", "cube", "inverted-div"],
)
def test_no_match(text):
    assert_no_match(FuseLayerNormPass(), model(text, **POOL))


def test_no_match_on_non_constant_eps():
    text = graph(eps_order="var, e").replace("(float[2,3,16] x)", "(float[2,3,16] x, float[2,3,1] e)")
    assert_no_match(FuseLayerNormPass(), model(text, **POOL))


def test_no_match_when_the_centered_value_is_used_elsewhere():
    text = graph(affine="sc = Mul (nrm, gamma)\n  y0 = Add (sc, beta)\n  y = Add (y0, d)")
    assert_no_match(FuseLayerNormPass(), model(text, **POOL))


def test_torch_opset14_layer_norm_export_fuses(tmp_path):
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln = torch.nn.Linear(16, 16), torch.nn.LayerNorm(16, eps=1e-6)

        def forward(self, x):
            return self.ln(self.fc(x))

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(Block().eval(), torch.randn(2, 5, 16), buffer, opset_version=14, dynamo=False,
                      input_names=["x"], output_names=["y"])
    m = load_float_model(onnx.load_from_string(buffer.getvalue()))
    Pipeline([NameNodesPass(), SetStaticShapesPass(), FoldConstantsPass()])(m)
    assert op_types(m).count("ReduceMean") == 2
    assert assert_pass_preserves_function(FuseLayerNormPass(), m, atol=1e-4).modified is True
    assert op_types(m).count("LayerNormalization") == 1
    assert not {"ReduceMean", "Sub", "Pow", "Sqrt", "Div"} & set(op_types(m))
    ln = next(n for n in m.graph if n.op_type == "LayerNormalization")
    assert np.isclose(ln.attributes["epsilon"].value, 1e-6)
