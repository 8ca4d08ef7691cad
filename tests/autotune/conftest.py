"""Data shared by the search tests: Fashion-MNIST test images for the bundled CNN."""

from __future__ import annotations

import numpy as np
import pytest

from examples.fashion_mnist.data import load_split


@pytest.fixture(scope="session")
def data():
    """``(calibration, evaluation)``: 64 test images to calibrate on, the next 336 with labels to score on."""
    images, labels = load_split("test")
    x = ((images[:400] / 255.0 - 0.5) / 0.5).astype(np.float32)[:, None]
    return {"input": x[:64]}, {"input": x[64:], "labels": labels[64:400]}
