"""CompileConfig: frozen, validated on construction (one error listing every problem), versioned, JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from qcompiler.config import CALIBRATION_METHODS, CONFIG_VERSION, CompileConfig
from qcompiler.errors import QcError

FIELDS = sorted(f.name for f in dataclasses.fields(CompileConfig))


def problems_of(**fields) -> list[str]:
    """The problem lines of the one QcError that ``CompileConfig(**fields)`` raises."""
    with pytest.raises(QcError) as error:
        CompileConfig(**fields)
    head, *lines = str(error.value).splitlines()
    assert head == "invalid configuration:"
    return [line.strip() for line in lines]


def test_defaults_are_valid():
    config = CompileConfig()
    assert (config.target, config.calibration_method, config.activation_dtype) == ("x86", "minmax", "uint8")
    assert config.version == CONFIG_VERSION


def test_is_frozen():
    config = CompileConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.target = "arm"  # type: ignore[misc]


@pytest.mark.parametrize("spelling", ["MinMax", "MINMAX", "minmax"])
def test_method_names_are_case_insensitive(spelling):
    assert CompileConfig(calibration_method=spelling).calibration_method == "minmax"


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_documented_method_is_accepted(method):
    assert CompileConfig(calibration_method=method.upper()).calibration_method == method


def test_one_error_lists_every_problem():
    problems = problems_of(
        calibration_method="kl",
        activation_dtype="int4",
        weight_bits=1,
        attention_bits=9,
        softmax="exact",
        gelu="erf",
        percentile=10.0,
        input_shapes={"input": (0, 3), "other": (1, -2)},
        version=CONFIG_VERSION + 1,
    )
    expected = ["calibration_method 'kl'", "activation_dtype 'int4'", "weight_bits=1", "attention_bits=9",
                "softmax 'exact'", "gelu 'erf'", "percentile=10.0",
                "input_shapes['input']", "input_shapes['other']", f"config version {CONFIG_VERSION + 1}"]
    assert len(problems) == len(expected)
    for fragment in expected:
        assert sum(fragment in line for line in problems) == 1, (fragment, problems)
    assert any("minmax, percentile, entropy, mse" in line for line in problems)  # says what would be valid
    assert any("table, shift, poly" in line for line in problems)


def test_reparam_must_be_a_bool():
    (problem,) = problems_of(reparam=1)
    assert problem.startswith("reparam must be bool")


@pytest.mark.parametrize("percentile", [50.0, 100.5, float("nan")])
def test_percentile_range(percentile):
    assert problems_of(percentile=percentile)[0].startswith(f"percentile={percentile}")


def test_version_mismatch_is_refused():
    (problem,) = problems_of(version=CONFIG_VERSION + 1)
    assert f"this qc reads version {CONFIG_VERSION}" in problem


def test_input_shapes_become_tuples():
    assert CompileConfig(input_shapes={"input": [1, 3, 8, 8]}).input_shapes == {"input": (1, 3, 8, 8)}


def test_replace_validates_again():
    config = CompileConfig(calibration_method="percentile", percentile=99.9)
    assert config.replace(target_options={"mcpu": "znver4"}).percentile == 99.9
    with pytest.raises(QcError, match="activation_dtype 'fp8'"):
        config.replace(activation_dtype="fp8")


def test_json_round_trip():
    config = CompileConfig(
        target_options={"mcpu": "znver4"},
        calibration_method="Percentile",
        percentile=99.9,
        activation_dtype="int8",
        input_shapes={"input": (1, 3, 224, 224)},
    )
    data = json.loads(json.dumps(config.to_json()))
    assert sorted(data) == FIELDS
    assert data["input_shapes"] == {"input": [1, 3, 224, 224]}
    assert CompileConfig.from_json(data) == config


def test_unknown_keys_are_listed_with_the_valid_ones():
    with pytest.raises(QcError) as error:
        CompileConfig.from_json({"targt": "x86", "calibration": "minmax", "percentile": 99.0})
    message = str(error.value)
    assert "['calibration', 'targt']" in message
    for name in FIELDS:
        assert repr(name) in message.split("valid keys:")[1]


def test_load_from_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"calibration_method": "entropy", "input_shapes": {"input": [1, 1, 16, 16]}}))
    assert CompileConfig.load(path) == CompileConfig(calibration_method="entropy", input_shapes={"input": (1, 1, 16, 16)})


@pytest.mark.parametrize(("content", "fragment"), [(None, "No such file"), ("{not json", "Expecting property name")])
def test_load_errors_name_the_file(tmp_path, content, fragment):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(QcError, match="cannot read config") as error:
        CompileConfig.load(path)
    assert str(path) in str(error.value) and fragment in str(error.value)


def test_load_reports_a_version_mismatch(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CompileConfig().to_json(), "version": 99}))
    with pytest.raises(QcError, match="config version 99 is not supported"):
        CompileConfig.load(path)


def test_wrongly_typed_fields_are_problems_too():
    problems = problems_of(calibration_method=3, percentile="high", input_shapes={"input": 5})
    assert len(problems) == 3
