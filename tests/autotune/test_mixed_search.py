"""Mixed-precision search on the bundled Fashion-MNIST CNN: real calibration, real onnxruntime scoring, the
chosen config compiled for x86 and checked bit-exact against its integer model."""

from __future__ import annotations

import json
import warnings

import pytest

import qcompiler
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.sensitivity import measure_sensitivity, proxy_sensitivity
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError, QcWarning
from tests.e2e.test_bit_exact import assert_bit_exact

CNN = "examples/fashion_mnist/cnn.onnx"
BUDGET = 0.6


@pytest.fixture(scope="module")
def searched(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("search") / "run"
    calibration, evaluation = data
    return output, qcompiler.search(CNN, calibration, evaluation, budget=BUDGET, samples=200, output=output)


def test_writes_every_result_file(searched):
    output, result = searched
    for name in ("search.json", "sensitivity.json", "trials.jsonl", "pareto.json", "pareto.png", "chosen.json"):
        assert (output / name).stat().st_size > 0, name
    assert json.loads((output / "sensitivity.json").read_text())["kind"] == "measured"
    lines = (output / "trials.jsonl").read_text().splitlines()
    assert len(lines) == len(result.trials) >= 3
    assert (output / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chosen_config_is_mixed_within_budget_and_beats_uniform_4_bit_on_error(searched):
    _, result = searched
    widths = {entry["weight_bits"] for entry in result.config.layers.values()}
    assert widths == {4, 8}
    assert result.chosen["cost"] <= BUDGET
    uniform4 = next(t for t in result.trials if t["kind"] == "uniform" and t["config"]["weight_bits"] == 4)
    assert result.chosen["score"]["rel_l2"] < uniform4["score"]["rel_l2"]


def test_pareto_front_is_not_dominated(searched):
    _, result = searched
    for front in result.pareto:
        assert not any(t["cost"] <= front["cost"] and t["score"]["metric"] > front["score"]["metric"]
                       for t in result.trials)


def test_resumes_without_measuring_again(searched, data):
    output, result = searched
    with (output / "trials.jsonl").open("a") as stream:
        stream.write('{"key": "cut off by an interrup')  # a line an interrupted search left half-written
    before = (output / "trials.jsonl").read_text().count("\n")
    again = qcompiler.search(CNN, *data, budget=BUDGET, samples=200, output=output)
    assert again.chosen["key"] == result.chosen["key"]
    assert (output / "trials.jsonl").read_text().count("\n") == before


def test_a_directory_of_another_search_is_refused(searched, data):
    output, _ = searched
    with pytest.raises(QcError, match="holds a search with other settings"):
        qcompiler.search(CNN, *data, budget=0.7, samples=200, output=output)


def test_chosen_json_compiles_bit_exact_with_the_widths_in_the_report(searched, data):
    output, result = searched
    calibration, evaluation = data
    artifact = qcompiler.compile(CNN, calibration=calibration, config=CompileConfig.load(output / "chosen.json"))
    bits = {n["name"]: n["bits"]["weight"] for n in artifact.report["nodes"] if "bits" in n}
    assert bits == {name: entry["weight_bits"] for name, entry in result.config.layers.items()}
    sizes = artifact.report["weight_bytes"]
    assert sizes["packed"] == result.chosen["score"]["weight_bytes"] < sizes["integer"]
    assert_bit_exact(artifact, [{"input": evaluation["input"][i:i + 1]} for i in range(4)])


def test_random_method_stays_within_budget_and_picks_its_best(data):
    result = qcompiler.search(CNN, *data, method="random", trials=3, samples=100, budget=BUDGET)
    randoms = [t for t in result.trials if t["kind"] == "random"]
    assert len(randoms) == 3 and all(t["cost"] <= BUDGET for t in randoms)
    assert result.chosen["score"]["metric"] == max(t["score"]["metric"] for t in randoms)


def test_sensitivities_are_non_negative_and_grow_as_widths_shrink(data):
    evaluator = CandidateEvaluator(CNN, *data, samples=100)
    measured = measure_sensitivity(evaluator, CompileConfig(), (2, 4, 8))
    proxy = proxy_sensitivity(evaluator, CompileConfig(), (2, 4, 8))
    for found in (measured, proxy):
        assert all(v >= 0 for row in found.values.values() for v in row.values())
        assert sum(r[2] for r in found.values.values()) > sum(r[4] for r in found.values.values()) > 0
    assert all(proxy.values[name][2] > proxy.values[name][4] for name in proxy.values)


def test_an_input_width_that_cannot_apply_is_warned_about(data):
    evaluator = CandidateEvaluator(CNN, *data, samples=20)
    first = evaluator.layers[0]  # reads the graph input, which stays 8-bit
    assert first.input_group == -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluator.score(CompileConfig(layers={first.name: {"activation_bits": 4}}))
    assert any(issubclass(w.category, QcWarning) and first.name in str(w.message) for w in caught)


@pytest.mark.parametrize(("options", "message"), [
    ({"method": "annealing"}, "method 'annealing' is not one of ilp, random"),
    ({"budget": 0.0}, r"budget 0.0 must be a fraction in \(0, 1\]"),
    ({"objective": "speed"}, "objective 'speed' is not one of size, bops, latency"),
    ({"rpc_tracker": "127.0.0.1:9190", "rpc_key": "board"}, "serve --objective latency only"),
    ({"objective": "latency", "target": "cortex-m4"}, "kernels are timed for --target x86 and aarch64"),
    ({"widths": (4, 9)}, r"widths \[4, 9\] must be between 2 and 8"),
])
def test_bad_arguments_are_refused_before_any_work(data, options, message):
    with pytest.raises(QcError, match=message):
        qcompiler.search(CNN, *data, **options)
