"""Test-wide fixtures: the integer-region verifier runs after every pass of every pipeline, by default."""

from __future__ import annotations

import shutil

import pytest

from qcompiler.pass_infra import instrumented
from qcompiler.verify import verify_integer_region


def pytest_configure(config):
    config.addinivalue_line("markers", "no_verify: do not run the staged integer-region verifier after each pass")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests, saying why, when no NVIDIA GPU is visible."""
    if shutil.which("nvidia-smi") is not None:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (nvidia-smi not found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _verify_every_pass(request):
    """Install the staged verifier as a pipeline instrument; opt out with ``@pytest.mark.no_verify``."""
    if request.node.get_closest_marker("no_verify"):
        yield
        return
    with instrumented(lambda name, model: verify_integer_region(model, staged=True)):
        yield
