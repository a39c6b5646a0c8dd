"""riskmon's credit allocator: expected-profit maximisation under a lending budget.

Pure Python/numpy/scipy; no Kafka, Redis or torch. The live allocator task and the backtest
both call :func:`allocate`.

Examples
--------
>>> from allocator import Applicant, ChurnCurves, allocate, make_problem
>>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
>>> problem = make_problem([Applicant("E1", "A", 0.01), Applicant("E2", "D", 0.9)], 2_000_000, curves)
>>> result = allocate(problem, solver="exact")
>>> result.total_amount_yuan, [ln.reasons for ln in result.lines]
(1000000, [('lent', 'at_max_amount', 'rate_capped_by_churn'), ('rating_D',)])
"""

from __future__ import annotations

from typing import Literal

from allocator.anneal import solve_anneal
from allocator.churn import LENDABLE_RATINGS, RATINGS, ChurnCurves
from allocator.errors import AllocationInputError, AllocatorError, SolverError
from allocator.exact import solve_exact
from allocator.problem import Applicant, Constraints, Policy, Problem, RateGrid, make_problem
from allocator.profit import (expected_interest_yuan, expected_loss_yuan, expected_profit_yuan, profit_per_yuan,
                              return_per_yuan)
from allocator.reasons import diff
from allocator.result import Allocation, AllocationLine, TracePoint
from allocator.rules import solve_rules

Solver = Literal["exact", "anneal", "rules"]
SOLVERS: tuple[str, ...] = ("exact", "anneal", "rules")

__all__ = [
    "Allocation", "AllocationInputError", "AllocationLine", "AllocatorError", "Applicant", "ChurnCurves",
    "Constraints", "LENDABLE_RATINGS", "Policy", "Problem", "RATINGS", "RateGrid", "SOLVERS", "Solver",
    "SolverError", "TracePoint", "allocate", "diff", "expected_interest_yuan", "expected_loss_yuan",
    "expected_profit_yuan", "make_problem", "profit_per_yuan", "return_per_yuan", "solve_anneal", "solve_exact",
    "solve_rules",
]


def allocate(problem: Problem, solver: Solver = "exact", seed: int = 0, **options: object) -> Allocation:
    """Solve ``problem`` with one of :data:`SOLVERS`; ``options`` go to the solver function.

    ``seed`` is used by ``anneal`` only (the other solvers are deterministic).
    """
    if solver == "exact":
        return solve_exact(problem, **options)  # type: ignore[arg-type]
    if solver == "anneal":
        return solve_anneal(problem, seed=seed, **options)  # type: ignore[arg-type]
    if solver == "rules":
        return solve_rules(problem, **options)  # type: ignore[arg-type]
    raise AllocationInputError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
