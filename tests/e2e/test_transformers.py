"""BERT sentence encoder and DeiT-tiny-size ViT from ``transformers`` configs: integer-only, bit-exact.

Acceptance (issue): BERT (6 layers, hidden 384, 12 heads, attention mask, mean pooling, L2 normalization),
static shapes [1, 128], compiled for x86 bit-exact with onnxruntime on the integer model, mean cosine
similarity between the integer and float embeddings >= 0.99 on 64 mixed-padding inputs; the ViT compiles in
under 60 s and is bit-exact; the integer region of both is float-free (``qcompiler.verify``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import qcompiler
from qcompiler.reference import integer_session
from qcompiler.verify import integer_region_problems
from tests.e2e.test_bit_exact import assert_bit_exact

pytest.importorskip("transformers", reason="pip install transformers==5.23.0")
export = pytest.importorskip("examples.transformers.export")

SEQ = export.SEQ_LEN


@pytest.fixture(scope="module")
def bert_data():
    return export.bert_inputs(64, seed=0)


@pytest.fixture(scope="module")
def bert_artifact(bert_data):
    return qcompiler.compile(export.ensure_model("bert"), target="x86", calibration=bert_data,
                             input_shapes={"input_ids": (1, SEQ), "attention_mask": (1, SEQ)})


@pytest.fixture(scope="module")
def vit_compiled():
    calibration = {"pixel_values": export.vit_images(8, seed=0)}
    return qcompiler.compile(export.ensure_model("vit"), target="x86", calibration=calibration)


def _feeds(data: dict, indices) -> list[dict]:
    return [{k: v[i:i + 1] for k, v in data.items()} for i in indices]


@pytest.mark.slow
def test_bert_integer_region_is_float_free(bert_artifact):
    assert integer_region_problems(ir.serde.deserialize_model(bert_artifact.quantized.int_model)) == []


@pytest.mark.slow
def test_bert_bit_exact(bert_artifact):
    data = export.bert_inputs(8, seed=1)  # held out from calibration
    assert_bit_exact(bert_artifact, _feeds(data, range(8)))


@pytest.mark.slow
def test_bert_cosine_to_float(bert_artifact, bert_data):
    """Mean cosine similarity between integer and float embeddings >= 0.99 on 64 mixed-padding inputs.

    The integer embeddings come from ``model.int.onnx`` in onnxruntime (faster than the untuned module here),
    which the compiled module matches bit for bit (``test_bert_bit_exact``)."""
    data = export.bert_inputs(64, seed=2)
    float_session, int_session = (
        integer_session(model)
        for model in (onnx.load(export.ensure_model("bert")), bert_artifact.quantized.int_model)
    )
    cosines = []
    for feed in _feeds(data, range(64)):
        want = float_session.run(None, feed)[0].reshape(-1)
        got = int_session.run(None, feed)[0].reshape(-1)
        cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-12)))
    assert np.mean(cosines) >= 0.99, (np.mean(cosines), np.min(cosines))


@pytest.mark.slow
def test_vit_integer_region_is_float_free(vit_compiled):
    """(Its compile time is measured by benchmarks/speed.py, not asserted here: CI machines are noisy.)"""
    assert integer_region_problems(ir.serde.deserialize_model(vit_compiled.quantized.int_model)) == []


@pytest.mark.slow
def test_vit_bit_exact(vit_compiled):
    images = export.vit_images(3, seed=1)
    assert_bit_exact(vit_compiled, [{"pixel_values": images[i:i + 1]} for i in range(3)])
