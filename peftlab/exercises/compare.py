"""Checker for notebook 06: the Pareto front of a comparison (accuracy against a cost)."""

from __future__ import annotations

from typing import Callable

from peftlab.compare.report import pareto_front
from peftlab.exercises._common import CheckResult, call, verdict

# (method, cost, accuracy): ties in cost and in accuracy, a dominated point, unsorted input
CASES = [
    [("full", 350.0, 0.95), ("head", 90.0, 0.62), ("lora", 120.0, 0.94), ("prompt", 110.0, 0.60)],
    [("a", 1.0, 0.5), ("b", 1.0, 0.7), ("c", 2.0, 0.7), ("d", 3.0, 0.9), ("e", 0.5, 0.1)],
    [("x", 5.0, 0.8), ("y", 4.0, 0.8), ("z", 6.0, 0.79)],
]


def check_pareto_front(fn: Callable, quiet: bool = False) -> CheckResult:
    """fn(points) -> names on the Pareto front, cheapest first; points: [(name, cost, acc)]."""
    for points in CASES:
        want = pareto_front(points)
        got, err = call(fn, list(points))
        if err:
            return verdict(False, err, quiet)
        if not isinstance(got, (list, tuple)):
            return verdict(False, f"expected a list of names, got {type(got).__name__}.", quiet)
        got = list(got)
        if got == want:
            continue
        if sorted(got) == sorted(want):
            return verdict(False, f"the right methods {want} but in another order: list them "
                                  f"cheapest first.", quiet)
        extra = [m for m in got if m not in want]
        missing = [m for m in want if m not in got]
        costs = {m: c for m, c, _ in points}
        acc = {m: a for m, _, a in points}
        if extra:
            m = extra[0]
            by = next((o for o in want if costs[o] <= costs[m] and acc[o] >= acc[m]), None)
            return verdict(False, f"{m!r} is dominated (by {by!r}: as accurate or better for no "
                                  f"more cost) and must not be on the front.", quiet)
        return verdict(False, f"{missing[0]!r} is missing: no other method is at least as "
                              f"accurate for less cost.", quiet)
    return verdict(True, "your Pareto front matches peftlab.compare.report.pareto_front.", quiet)
