"""Recipe searches of ``qcompiler.search`` (xgboost, grid, genetic) on the bundled Fashion-MNIST CNN: real
calibration and onnxruntime scoring, budgets respected, transfer from an earlier search, resume, and the
chosen recipe compiled bit-exact."""

from __future__ import annotations

import json

import pytest

import qcompiler
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError
from tests.e2e.test_bit_exact import assert_bit_exact

CNN = "examples/fashion_mnist/cnn.onnx"
BUDGET = 0.6
OPTIONS = {"budget": BUDGET, "samples": 100, "sensitivity": "proxy"}


@pytest.fixture(scope="module")
def genetic(data, tmp_path_factory):
    output = tmp_path_factory.mktemp("recipes") / "genetic"
    return output, qcompiler.search(CNN, *data, method="genetic", trials=5, output=output, **OPTIONS)


def test_recipes_fit_the_budget_and_the_best_is_chosen(genetic):
    _, result = genetic
    recipes = [t for t in result.trials if t["kind"] == "recipe"]
    assert len(recipes) == 5 == len({json.dumps(t["recipe"], sort_keys=True) for t in recipes})
    assert all(t["cost"] <= BUDGET + 1e-9 for t in recipes)
    # at 0.6 of the INT8 bytes only uniform W4A8 and the ILP point fit
    assert {t["recipe"]["bits"] for t in recipes} <= {"w4a8", "ilp"}
    assert all(t["recipe"]["calibration_set"] == "large" and t["model"]["has_attention"] == 0.0 for t in recipes)
    assert result.chosen["score"]["metric"] == max(t["score"]["metric"] for t in recipes)
    assert not result.failed


def test_the_chosen_recipe_compiles_bit_exact(genetic, data):
    output, result = genetic
    config = CompileConfig.load(output / "chosen.json")
    assert config == result.config
    assert config.calibration_method == result.chosen["recipe"]["calibration"]
    artifact = qcompiler.compile(CNN, calibration=data[0], config=config)
    assert_bit_exact(artifact, [{"input": data[1]["input"][i:i + 1]} for i in range(3)])


def test_rerun_resumes_without_measuring(genetic, data):
    output, result = genetic
    before = (output / "trials.jsonl").read_text()
    again = qcompiler.search(CNN, *data, method="genetic", trials=5, output=output, **OPTIONS)
    assert (output / "trials.jsonl").read_text() == before
    assert again.chosen["key"] == result.chosen["key"]


def test_xgboost_learns_from_a_prior_search(genetic, data, tmp_path):
    prior, _ = genetic
    result = qcompiler.search(CNN, *data, method="xgboost", trials=3, prior=(prior,), output=tmp_path / "x",
                              **OPTIONS)
    assert len([t for t in result.trials if t["kind"] == "recipe"]) == 3
    assert json.loads((tmp_path / "x" / "search.json").read_text())["settings"]["prior"] == [str(prior)]


def test_a_full_budget_offers_every_uniform_width_and_no_ilp_point(data):
    result = qcompiler.search(CNN, *data, method="grid", trials=3, budget=1.0, samples=100)
    assert [t["recipe"]["bits"] for t in result.trials] == ["w8a8", "w8a6", "w6a8"]
    assert result.trials[0]["cost"] == 1.0


@pytest.mark.parametrize(("options", "message"), [
    ({"method": "xgboost", "prior": ("nowhere",)}, "prior nowhere holds no recipe trials"),
    ({"method": "ilp", "prior": ("nowhere",)}, "prior trials serve the recipe searches"),
])
def test_bad_priors_are_refused(data, options, message, tmp_path):
    with pytest.raises(QcError, match=message):
        qcompiler.search(CNN, *data, output=tmp_path / "run", **options)
    assert not (tmp_path / "run").exists()
