"""The width ILP: optimal against brute force, ties honoured, budget respected, infeasibility named."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from qcompiler.autotune.ilp import Option, WidthProblem, solve_widths
from qcompiler.errors import QcError


def random_problem(layers: int, seed: int, activation_widths=(8,), ties=()) -> WidthProblem:
    rng = np.random.default_rng(seed)
    options = {}
    for i in range(layers):
        weights, gain = int(rng.integers(100, 5000)), float(rng.random())
        options[f"l{i}"] = [Option(w, a, gain * (4.0 ** (8 - w) - 1) + (8 - a) * float(rng.random()), weights * w / 8 * a / 8)
                            for w in (2, 4, 8) for a in activation_widths]
    return WidthProblem(options, [list(t) for t in ties])


def brute_force(problem: WidthProblem, budget: float) -> float:
    """The least total sensitivity over every assignment meeting the budget and the ties."""
    names = list(problem.options)
    best = np.inf
    for choice in itertools.product(*(problem.options[n] for n in names)):
        picked = dict(zip(names, choice, strict=True))
        if sum(o.cost for o in choice) > budget:
            continue
        if any(len({picked[n].activation_bits for n in group}) > 1 for group in problem.ties):
            continue
        best = min(best, sum(o.sensitivity for o in choice))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_optimal_against_brute_force(seed):
    problem = random_problem(5, seed, activation_widths=(4, 8), ties=[("l0", "l1", "l2")])
    budget = 0.55 * problem.extreme_cost(max)
    chosen, facts = solve_widths(problem, budget)
    assert facts["cost"] <= budget + 1e-6
    assert facts["objective"] == pytest.approx(brute_force(problem, budget), rel=1e-9, abs=1e-12)
    assert len({chosen[n].activation_bits for n in ("l0", "l1", "l2")}) == 1


def test_a_generous_budget_keeps_every_layer_at_its_least_sensitive_option():
    problem = random_problem(10, 1)
    chosen, _ = solve_widths(problem, problem.extreme_cost(max))
    assert {o.weight_bits for o in chosen.values()} == {8}


def test_an_impossible_budget_names_the_cheapest_cost():
    problem = random_problem(4, 2)
    with pytest.raises(QcError, match=r"no width assignment meets the budget 1: the cheapest costs [\d,]+.*--budget"):
        solve_widths(problem, 1.0)


def test_two_hundred_layers_solve_quickly():
    """Correctness at the benchmark's size (benchmarks/mixed_precision.py times it); a loose bound only."""
    problem = random_problem(200, 3, activation_widths=(4, 8), ties=[(f"l{i}", f"l{i + 1}") for i in range(0, 200, 4)])
    start = time.perf_counter()
    chosen, facts = solve_widths(problem, 0.5 * problem.extreme_cost(max))
    assert time.perf_counter() - start < 10
    assert len(chosen) == 200 and facts["cost"] <= 0.5 * problem.extreme_cost(max) + 1e-6
