"""Per-layer widths by integer linear programming (HAWQ-V3 §3.4), solved by HiGHS through ``scipy.optimize.milp``.

One binary ``x[i, o]`` per layer ``i`` and option ``o`` (a ``(weight_bits, activation_bits)`` pair)::

    minimize    Σ sensitivity[i, o] x[i, o]
    subject to  Σ_o x[i, o] = 1                                   (one option per layer)
                Σ cost[i, o] x[i, o] <= budget                    (weight bytes, BOPs or latency)
                Σ_{o: a(o) = a} x[i, o] = Σ_{o: a(o) = a} x[j, o]  (tied layers i, j share each input width a)

Ties come from :func:`qcompiler.quant_plan.input_groups`: layers reading one activation read it at one width.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from qcompiler.errors import QcError

__all__ = ["Option", "WidthProblem", "solve_widths"]


@dataclass(frozen=True)
class Option:
    """One choice for one layer: its widths, sensitivity and cost."""

    weight_bits: int
    activation_bits: int
    sensitivity: float
    cost: float


@dataclass(frozen=True)
class WidthProblem:
    """The options of every layer (keyed by layer name) and the groups of layers whose input width is tied."""

    options: dict[str, list[Option]]
    ties: list[list[str]]

    def extreme_cost(self, pick) -> float:
        """Total cost when every layer takes ``pick`` (min or max) of its option costs."""
        return float(sum(pick(o.cost for o in options) for options in self.options.values()))


def solve_widths(problem: WidthProblem, budget: float, time_limit: float = 30.0) -> tuple[dict[str, Option], dict]:
    """The least-sensitive choice of one option per layer with total cost <= ``budget``.

    Returns the choice per layer and solver facts (``objective``, ``cost``, ``seconds``, ``variables``).
    Raises :class:`QcError` when no choice meets the budget.
    """
    names = list(problem.options)
    index, offset = {}, 0
    for name in names:
        index[name] = offset
        offset += len(problem.options[name])
    sensitivity = np.array([o.sensitivity for name in names for o in problem.options[name]])
    cost = np.array([o.cost for name in names for o in problem.options[name]])
    rows, cols, vals, low, high = [], [], [], [], []

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        row = len(low)
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        low.append(lo)
        high.append(hi)

    for name in names:
        add_row([(index[name] + k, 1.0) for k in range(len(problem.options[name]))], 1.0, 1.0)
    for group in problem.ties:
        first = group[0]
        widths = sorted({o.activation_bits for o in problem.options[first]})
        for other in group[1:]:
            for width in widths:
                add_row([(index[first] + k, 1.0) for k, o in enumerate(problem.options[first]) if o.activation_bits == width]
                        + [(index[other] + k, -1.0) for k, o in enumerate(problem.options[other])
                           if o.activation_bits == width], 0.0, 0.0)
    add_row([(k, c) for k, c in enumerate(cost)], -np.inf, budget)
    matrix = coo_array((vals, (rows, cols)), shape=(len(low), offset)).tocsr()
    start = time.perf_counter()
    result = milp(sensitivity, constraints=LinearConstraint(matrix, low, high), integrality=np.ones(offset),
                  bounds=Bounds(0, 1), options={"time_limit": time_limit})
    seconds = time.perf_counter() - start
    if result.x is None:
        cheapest = problem.extreme_cost(min)
        raise QcError(f"no width assignment meets the budget {budget:,.0f}: the cheapest costs {cheapest:,.0f} "
                      f"(every layer at its narrowest option); raise --budget ({result.message})")
    chosen = {name: problem.options[name][int(np.argmax(result.x[index[name]:index[name] + len(problem.options[name])]))]
              for name in names}
    facts = {"objective": float(sum(o.sensitivity for o in chosen.values())),
             "cost": float(sum(o.cost for o in chosen.values())), "seconds": seconds, "variables": offset,
             "status": result.message}
    return chosen, facts
