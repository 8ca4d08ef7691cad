"""Per-layer latency tables measured on this host (real lowering, real MetaSchedule runner) and the latency
objective of ``qc search``, on the bundled Fashion-MNIST CNN. Timings are checked for sense (positive,
finite, consistent with the costs the search reports), never for speed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qcompiler
from qcompiler.autotune import latency
from qcompiler.autotune.candidates import CandidateEvaluator
from qcompiler.autotune.ilp import solve_widths
from qcompiler.autotune.latency import LatencyTable, layer_region, measure_latency
from qcompiler.autotune.mixed_precision import base_cost, config_cost, width_problem, widths_config
from qcompiler.autotune.sensitivity import proxy_sensitivity
from qcompiler.config import CompileConfig
from qcompiler.driver import integerize_model
from qcompiler.reference import integer_session
from qcompiler.targets import get_target

CNN = "examples/fashion_mnist/cnn.onnx"


@pytest.fixture(scope="module")
def evaluator(data):
    return CandidateEvaluator(CNN, *data, samples=50)


@pytest.fixture(scope="module")
def table(evaluator):
    return measure_latency(evaluator, CompileConfig(), (4, 8))


def test_every_layer_is_timed_at_every_width(evaluator, table):
    assert set(table.seconds) == {layer.name for layer in evaluator.layers}
    for row in table.seconds.values():
        assert set(row) == {4, 8} and all(0 < s < 1 for s in row.values()), row
    assert table.measured_on == "this host" and '"kind":"llvm"' in table.target
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table


def test_a_layer_region_is_the_layer_alone_and_compiles_bit_exact(evaluator, tmp_path):
    config = CompileConfig(weight_bits=4)
    region = integerize_model(evaluator.calibrated(config), config).region()
    name = "/model/residual/residual.0/Conv"
    sub = layer_region(region, name)
    assert [n.op_type for n in sub.graph.node] == ["Pad", "ConvInteger", "Add", "Requantize"]
    assert all(n.name.startswith(name + "/") for n in sub.graph.node)
    target = get_target("x86")
    module = target.load(tmp_path, target.compile(sub, tmp_path))
    rng = np.random.default_rng(0)
    (x,) = sub.graph.input
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    for values in (rng.integers(0, 256, size=shape), np.full(shape, 255), np.zeros(shape)):
        feed = {x.name: values.astype(np.uint8)}
        assert np.array_equal(module.run(feed)[0], integer_session(sub).run(None, feed)[0])


def test_a_layer_without_integer_nodes_is_named(evaluator):
    region = integerize_model(evaluator.calibrated(CompileConfig()), CompileConfig()).region()
    with pytest.raises(qcompiler.QcError, match="layer '/no/such/Conv' has no integer nodes"):
        layer_region(region, "/no/such/Conv")


def test_the_ilp_meets_a_latency_budget_between_the_extremes(evaluator, table):
    base = CompileConfig()
    problem = width_problem(evaluator, proxy_sensitivity(evaluator, base, (4, 8)), table, base)
    total = base_cost(table, evaluator, base)
    cheapest = problem.extreme_cost(min)
    assert total == pytest.approx(sum(row[8] for row in table.seconds.values()))
    limit = (cheapest + total) / 2
    chosen, facts = solve_widths(problem, limit)
    config = widths_config(base, {name: (o.weight_bits, o.activation_bits) for name, o in chosen.items()})
    cost = config_cost(table, evaluator, config)
    assert cost == pytest.approx(facts["cost"]) and cost <= limit * (1 + 1e-9)
    if cheapest < total:  # narrower weights are faster here (AVX2 without VNNI): the budget forces some
        assert any(o.weight_bits == 4 for o in chosen.values())


def test_search_with_the_latency_objective_keeps_its_table_and_reuses_it(data, tmp_path, monkeypatch):
    output = tmp_path / "search"
    result = qcompiler.search(CNN, *data, objective="latency", budget=1.0, samples=50, sensitivity="proxy",
                              output=output)
    saved = LatencyTable.from_json(json.loads((output / "latency.json").read_text()))
    evaluator = CandidateEvaluator(CNN, *data, samples=50)
    total = base_cost(saved, evaluator, CompileConfig())
    for trial in result.trials:
        cost = config_cost(saved, evaluator, CompileConfig.from_json(trial["config"]))
        assert trial["cost"] == pytest.approx(cost / total)
    assert result.chosen["cost"] <= 1.0 + 1e-9

    def measured_again(*args, **kwargs):
        raise AssertionError("the search measured its latency table again instead of reading latency.json")

    monkeypatch.setattr(latency, "measure_latency", measured_again)
    monkeypatch.setattr("qcompiler.autotune.search.measure_latency", measured_again)
    again = qcompiler.search(CNN, *data, objective="latency", budget=1.0, samples=50, sensitivity="proxy",
                             output=output)
    assert again.chosen["key"] == result.chosen["key"]


def test_a_budget_below_the_narrowest_widths_is_refused_with_the_reachable_fraction(data, tmp_path):
    with pytest.raises(qcompiler.QcError, match=r"no per-layer widths meet the budget 0.01: .* costs 0\.\d+ of the "
                                                r"base config's size"):
        qcompiler.search(CNN, *data, budget=0.01, samples=50, sensitivity="proxy")
