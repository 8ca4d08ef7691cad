"""FuseGeluPass: the erf and tanh GELU forms that exporters write become one opset-20 Gelu node."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from passes_testkit import (
    assert_no_match,
    assert_pass_preserves_function,
    model,
    only,
    op_types,
    output_names,
)

from qcompiler.ir import attr
from qcompiler.passes.fuse_gelu import FuseGeluPass
from qcompiler.pipelines import normalize_pipeline

POOL = {
    "sqrt2": np.array(1.4142135, np.float32),
    "rsqrt2": np.array(0.70710677, np.float32),
    "one": np.array(1.0, np.float32),
    "half": np.array(0.5, np.float32),
    "two": np.array(2.0, np.float32),
    "three": np.array(3.0, np.float32),
    "k": np.array(0.7978846, np.float32),
    "c": np.array(0.044715, np.float32),
}

HEADER = "g (float[2,16] x) => (float[2,16] y) {{\n{body}\n}}"
ERF_FORMS = {
    # torch.onnx.export (opset 17) of nn.GELU(): Div, Erf, Add, Mul x, Mul 0.5
    "torch": "d = Div (x, sqrt2)\n e = Erf (d)\n a = Add (e, one)\n m = Mul (x, a)\n y = Mul (m, half)",
    "rsqrt2-half-first": "d = Mul (rsqrt2, x)\n e = Erf (d)\n a = Add (one, e)\n h = Mul (x, half)\n y = Mul (h, a)",
    "half-times-sum": "d = Div (x, sqrt2)\n e = Erf (d)\n a = Add (e, one)\n h = Mul (half, a)\n y = Mul (x, h)",
    "x-last": "d = Div (x, sqrt2)\n e = Erf (d)\n a = Add (e, one)\n h = Mul (a, half)\n y = Mul (h, x)",
}
TANH_FORMS = {
    # torch.onnx.export (opset 17) of nn.GELU(approximate="tanh")
    "torch": "s = Mul (x, x)\n t = Mul (x, s)\n u = Mul (c, t)\n v = Add (x, u)\n w = Mul (k, v)\n"
    " h = Tanh (w)\n a = Add (one, h)\n m = Mul (x, a)\n y = Mul (half, m)",
    "pow": "t = Pow (x, three)\n u = Mul (t, c)\n v = Add (u, x)\n w = Mul (v, k)\n"
    " h = Tanh (w)\n a = Add (h, one)\n m = Mul (half, x)\n y = Mul (m, a)",
}


@pytest.mark.parametrize("form", ERF_FORMS.values(), ids=ERF_FORMS.keys())
def test_golden_erf_forms_become_one_gelu(form):
    m = model(HEADER.format(body=form), **POOL)
    assert assert_pass_preserves_function(FuseGeluPass(), m).modified is True
    assert op_types(m) == ["Gelu"] and output_names(m) == ["y"]
    assert attr(only(m, "Gelu"), "approximate", "none") == "none"
    assert only(m, "Gelu").inputs[0] is m.graph.inputs[0]


@pytest.mark.parametrize("form", TANH_FORMS.values(), ids=TANH_FORMS.keys())
def test_golden_tanh_forms_become_one_tanh_gelu(form):
    m = model(HEADER.format(body=form), **POOL)
    assert assert_pass_preserves_function(FuseGeluPass(), m).modified is True
    assert op_types(m) == ["Gelu"] and output_names(m) == ["y"]
    assert attr(only(m, "Gelu"), "approximate") == "tanh"


def test_two_gelus_in_a_row_both_fuse():
    body = ERF_FORMS["torch"].replace("y = Mul", "y1 = Mul") + "\n" + (
        ERF_FORMS["torch"].replace("(x,", "(y1,").replace("(x ", "(y1 ").replace("d =", "d2 =").replace("(d)", "(d2)")
        .replace("e =", "e2 =").replace("(e,", "(e2,").replace("a =", "a2 =").replace("a)", "a2)")
        .replace("m =", "m2 =").replace("(m,", "(m2,")
    )
    m = model(HEADER.format(body=body), **POOL)
    assert_pass_preserves_function(FuseGeluPass(), m)
    assert op_types(m) == ["Gelu", "Gelu"]


NO_MATCH = {
    "sum-used-twice": HEADER.format(body=ERF_FORMS["torch"].replace("y = Mul (m, half)", "p = Mul (m, half)\n y = Add (p, a)")),
    "wrong-divisor": HEADER.format(body=ERF_FORMS["torch"].replace("Div (x, sqrt2)", "Div (x, two)")),
    "wrong-half": HEADER.format(body=ERF_FORMS["torch"].replace("Mul (m, half)", "Mul (m, two)")),
    "other-x": "g (float[2,16] x, float[2,16] z) => (float[2,16] y) {\n"
    + ERF_FORMS["torch"].replace("Mul (x, a)", "Mul (z, a)") + "\n}",
    "erf-output-exported": "g (float[2,16] x) => (float[2,16] y, float[2,16] e) {\n" + ERF_FORMS["torch"] + "\n}",
    "wrong-cubic-coefficient": HEADER.format(body=TANH_FORMS["torch"].replace("Mul (c, t)", "Mul (half, t)")),
    "square-not-cube": HEADER.format(body=TANH_FORMS["torch"].replace("u = Mul (c, t)", "u = Mul (c, s)")),
    "plain-tanh": HEADER.format(body="y = Tanh (x)"),
}


@pytest.mark.parametrize("graph", NO_MATCH.values(), ids=NO_MATCH.keys())
def test_no_match(graph):
    assert_no_match(FuseGeluPass(), model(graph, **POOL))


def test_no_match_below_opset_20():
    m = model(HEADER.format(body=ERF_FORMS["torch"]), **POOL)
    m.opset_imports[""] = 18
    assert_no_match(FuseGeluPass(), m)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_real_torch_export_fuses_in_the_normalize_pipeline(approximate):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(approximate=approximate))
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 8),), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    proto = onnx.version_converter.convert_version(onnx.load_from_string(buffer.getvalue()), 21)
    m = ir.serde.deserialize_model(proto)
    assert assert_pass_preserves_function(normalize_pipeline({}), m).modified is True  # FuseGeluPass is in it
    assert op_types(m) == ["MatMul", "Add", "Gelu"]
    assert attr(only(m, "Gelu"), "approximate", "none") == approximate


VIT = pathlib.Path(__file__).parents[2] / "examples" / "fashion_mnist" / "vit.onnx"


@pytest.mark.skipif(not VIT.exists(), reason="examples/fashion_mnist/vit.onnx not built")
def test_vit_example_erf_gelus_all_fuse():
    m = ir.serde.deserialize_model(onnx.version_converter.convert_version(onnx.load(VIT), 21))
    shapes = {v.name: (1, *[int(d) for d in v.shape.dims[1:]]) for v in m.graph.inputs}
    erfs = len([n for n in m.graph if n.op_type == "Erf"])
    assert erfs > 0
    normalize_pipeline(shapes)(m)  # FuseGeluPass is in it
    assert "Erf" not in op_types(m) and op_types(m).count("Gelu") == erfs
