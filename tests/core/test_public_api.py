"""The public API is pinned: adding, removing or renaming a public name must change this test too."""

from __future__ import annotations

import importlib.metadata

import pytest

import qcompiler
import qcompiler.targets

QCOMPILER_API = [
    "Artifact",
    "ArtifactError",
    "CalibrationError",
    "CompileConfig",
    "ModelError",
    "Module",
    "OverflowRiskError",
    "QcError",
    "TargetError",
    "UnsupportedOpsError",
    "compile",
    "load",
    "search",
    "tune",
]
TARGETS_API = [
    "CompiledModule",
    "InputMismatchError",
    "Progress",
    "Target",
    "TensorSpec",
    "available_targets",
    "check_target_name",
    "get_target",
    "set_num_threads",
]


@pytest.mark.parametrize(("module", "expected"), [(qcompiler, QCOMPILER_API), (qcompiler.targets, TARGETS_API)])
def test_all_is_pinned_and_sorted(module, expected):
    assert sorted(module.__all__) == expected
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize(("module", "name"), [(qcompiler, n) for n in QCOMPILER_API] + [(qcompiler.targets, n) for n in TARGETS_API])
def test_every_public_name_resolves(module, name):
    assert getattr(module, name) is not None


def test_star_import_gives_exactly_the_public_names():
    namespace: dict = {}
    exec("from qcompiler import *", namespace)
    assert sorted(k for k in namespace if not k.startswith("__")) == QCOMPILER_API


def test_errors_share_the_qc_base_class():
    for name in QCOMPILER_API:
        value = getattr(qcompiler, name)
        if name.endswith("Error"):
            assert issubclass(value, qcompiler.QcError) and value.exit_code == 2


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'compile_model'"):
        qcompiler.compile_model  # noqa: B018


def test_version_matches_the_installed_distribution():
    assert qcompiler.__version__ == importlib.metadata.version("qcompiler")


def test_x86_is_a_registered_target():
    assert "x86" in qcompiler.targets.available_targets()
