"""Recipe space, features and searchers (autotune/recipes.py): synthetic measurements for the searchers, one
small real evaluation on the Fashion-MNIST CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcompiler.autotune.recipes import (
    DIMENSIONS,
    MODEL_FEATURES,
    recipe_config,
    recipe_features,
    recipe_space,
    score_recipe,
    search,
)
from qcompiler.config import CompileConfig
from qcompiler.errors import QcError

CNN = {"layers": 8.0, "log10_weights": 4.8, "log10_macs": 7.2, "has_attention": 0.0, "has_layernorm": 0.0,
       "has_gelu": 0.0, "metric_is_accuracy": 1.0, "float_metric": 0.9}
VIT = {**CNN, "has_attention": 1.0, "has_layernorm": 1.0, "has_gelu": 1.0}
EFFECTS = {"calibration": {"minmax": 0.0, "percentile": 0.004, "entropy": -0.03, "mse": 0.006},
           "calibration_set": {"small": -0.002, "large": 0.0},
           "weights": {"per_channel": 0.0, "per_tensor": -0.02},
           "bits": {"w8a8": 0.0, "w8a6": -0.004, "w6a8": -0.003, "w6a6": -0.01, "w4a8": -0.08, "w8a4": -0.1}}


def synthetic(recipe: dict, shift: float = 0.0) -> float:
    """An additive metric with one interaction (per-tensor hurts 4-bit weights more); best: mse, large,
    per-channel, w8a8 at 0.906 + shift."""
    value = 0.9 + shift + sum(EFFECTS[name][recipe[name]] for name in EFFECTS)
    return value - (0.05 if recipe["weights"] == "per_tensor" and recipe["bits"] == "w4a8" else 0.0)


def test_space_drops_dimensions_that_do_not_apply():
    cnn, vit = recipe_space(CNN), recipe_space(VIT)
    assert [d.name for d in cnn.dimensions] == ["calibration", "calibration_set", "weights", "bits"]
    assert cnn.size == 96 and len({cnn.key(r) for r in cnn.recipes()}) == 96
    assert vit.size == 96 * 2 * 2 * 3
    pinned = vit.fix(nonlinear="table", weights="per_channel")
    assert pinned.size == 192 and all(r["nonlinear"] == "table" for r in pinned.recipes())
    with pytest.raises(QcError, match="cannot fix"):
        cnn.fix(nonlinear="table")


def test_recipe_config_is_valid_for_every_recipe_and_applies_each_choice():
    base = CompileConfig()
    configs = {json.dumps(r, sort_keys=True): recipe_config(base, r) for r in recipe_space(VIT).recipes()}
    assert len(configs) == 1152
    config = recipe_config(base, {"calibration": "entropy", "weights": "per_tensor", "bits": "w8a4", "reparam": "off",
                                  "attention_codes": "log2", "nonlinear": "shift"})
    assert (config.calibration_method, config.per_channel, config.weight_bits, config.activation_bits, config.reparam,
            config.softmax_quant, config.softmax, config.gelu) == ("entropy", False, 8, 4, False, "log2", "shift", "shift")
    with pytest.raises(QcError, match="invalid recipe entries bits='w3a3'"):
        recipe_config(base, {"bits": "w3a3"})


def test_features_share_one_layout_across_models():
    cnn_recipe, vit_recipe = next(recipe_space(CNN).recipes()), next(recipe_space(VIT).recipes())
    cnn_x, vit_x = recipe_features(cnn_recipe, CNN), recipe_features(vit_recipe, VIT)
    assert cnn_x.shape == vit_x.shape == (sum(len(d.choices) for d in DIMENSIONS) + len(MODEL_FEATURES),)
    assert cnn_x[:-len(MODEL_FEATURES)].sum() == 4 and vit_x[:-len(MODEL_FEATURES)].sum() == 7


def trials_to_best(trials: list[dict], best: float) -> int:
    return next(i + 1 for i, t in enumerate(trials) if t["metric"] is not None and t["metric"] >= best - 1e-9)


@pytest.mark.parametrize("method", ["xgboost", "random", "grid", "genetic"])
def test_searchers_never_repeat_and_are_deterministic_per_seed(method):
    space = recipe_space(CNN)
    runs = [search(space, synthetic, method, trials=40, seed=seed) for seed in (1, 1, 2)]
    keys = [[space.key(t["recipe"]) for t in run] for run in runs]
    assert all(len(k) == len(set(k)) == 40 for k in keys)
    assert keys[0] == keys[1]
    assert (keys[0] != keys[2]) == (method != "grid")


def test_whole_space_is_covered_without_repeats():
    space = recipe_space(CNN)
    trials = search(space, synthetic, "genetic", trials=1000, seed=0)
    assert len(trials) == 96 and len({space.key(t["recipe"]) for t in trials}) == 96


def test_xgboost_finds_the_best_in_a_fraction_of_the_space():
    space = recipe_space(CNN)
    best = max(synthetic(r) for r in space.recipes())
    found = [trials_to_best(search(space, synthetic, "xgboost", trials=96, seed=s, target=best - 1e-9), best)
             for s in range(3)]
    random = [trials_to_best(search(space, synthetic, "random", trials=96, seed=s), best) for s in range(3)]
    assert np.median(found) <= 30 < 96 and np.median(found) < np.median(random)


@pytest.mark.parametrize("objective", ["regression", "rank"])
def test_transfer_from_another_model_speeds_up_xgboost(objective):
    """Prior trials of a model with the same effects (another offset) point straight at the best recipe."""
    space = recipe_space(CNN)
    other = {**CNN, "layers": 30.0, "float_metric": 0.8}
    prior = [{"recipe": r, "metric": synthetic(r, shift=-0.1), "error": None, "model": other} for r in space.recipes()]
    best = max(synthetic(r) for r in space.recipes())
    trials = search(space, synthetic, "xgboost", trials=96, seed=0, prior=prior, target=best - 1e-9,
                    objective=objective)
    assert len(trials) <= 3


def test_failed_measurement_is_recorded_and_the_search_goes_on():
    def measure(recipe):
        if recipe["bits"] == "w4a8":
            raise QcError("4-bit weights refused")
        return synthetic(recipe)

    seen = []
    trials = search(recipe_space(CNN), measure, "xgboost", trials=30, seed=0, on_trial=seen.append)
    failed = [t for t in trials if t["metric"] is None]
    assert len(trials) == 30 and seen == trials
    assert failed and all(t["error"] == "4-bit weights refused" for t in failed)
    json.dumps(trials)


def test_target_stops_the_search():
    trials = search(recipe_space(CNN), synthetic, "random", trials=96, seed=0, target=0.0)
    assert len(trials) == 1


def test_real_recipes_on_the_fashion_cnn():
    """Three recipes through CandidateEvaluator: per-channel W8A8 keeps accuracy near float, and per-tensor
    4-bit weights (calibrated on the small subset) are worse."""
    data = pytest.importorskip("examples.fashion_mnist.data")
    if not (data.DATA_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {data.DATA_DIR}: apt-get install dataset-fashion-mnist")
    from qcompiler.autotune.candidates import CandidateEvaluator
    from qcompiler.autotune.recipes import model_features

    images, labels = data.load_split("test")
    inputs = data.preprocess(images[:300])
    base = CompileConfig(input_shapes={"input": (50, 1, 28, 28)})
    model = Path(data.__file__).parent / "cnn.onnx"
    evaluation = {"input": inputs[100:], "labels": labels[100:300]}
    evaluators = {size: CandidateEvaluator(model, {"input": inputs[:count]}, evaluation, base=base, samples=200)
                  for size, count in (("small", 50), ("large", 100))}
    features = model_features(evaluators["large"])
    assert features["has_attention"] == 0.0 and features["layers"] == len(evaluators["large"].layers)
    assert [d.name for d in recipe_space(features).dimensions][-1] == "bits"
    recipe = {"calibration": "minmax", "calibration_set": "large", "weights": "per_channel", "bits": "w8a8"}
    good = score_recipe(evaluators, recipe).metric
    worse = score_recipe(evaluators, {**recipe, "calibration_set": "small", "weights": "per_tensor", "bits": "w4a8"})
    percentile = score_recipe(evaluators, {**recipe, "calibration": "percentile", "bits": "w8a6"})
    assert abs(good - evaluators["large"].float_metric) <= 0.02
    assert worse.metric < good and 0.0 < percentile.metric <= 1.0
