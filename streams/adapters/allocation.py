"""The real allocator (:mod:`allocator`) behind the pipeline's :class:`streams.pipeline.Allocate` port.

Examples
--------
>>> import datetime as dt
>>> from allocator import ChurnCurves
>>> from streams.events import EnterpriseScore
>>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
>>> s = EnterpriseScore(enterprise_id="E1", as_of=dt.date(2020, 1, 1), rating="A", rating_known=True,
...     rating_probabilities={"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0}, default_probability=0.01,
...     segment="high-end", industry="manufacturing", legal_form="limited_company", n_invoices=10,
...     bundle_version="b", scored_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
>>> d = make_allocate(curves)([s], budget_yuan=2_000_000, solver="exact", seed=0)
>>> d.total_amount_yuan, d.lines["E1"].amount_yuan, d.solver
(1000000.0, 1000000.0, 'exact')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from allocator import Applicant, ChurnCurves, allocate, make_problem
from streams.events import EnterpriseScore
from streams.pipeline import Allocate, AllocationDecision, LineDecision


def make_allocate(churn: ChurnCurves, *, lgd: float = 1.0, policy: str = "enterprise", **constraints: Any) -> Allocate:
    """An :class:`~streams.pipeline.Allocate` over these churn curves and extra constraints.

    ``strength``/``stability`` are left to the rule solver's documented defaults
    (``1 - default_probability`` and 0.5): scores do not carry them.
    """

    def allocate_scores(scores: Sequence[EnterpriseScore], *, budget_yuan: float, solver: str,
                        seed: int) -> AllocationDecision:
        if not scores:
            return AllocationDecision({}, 0.0, 0.0, solver, 0.0, optimum_yuan=0.0, gap=0.0)
        applicants = [Applicant(s.enterprise_id, s.rating, s.default_probability, s.segment, s.industry) for s in scores]
        problem = make_problem(applicants, budget_yuan, churn, policy=policy, lgd=lgd, **constraints)  # type: ignore[arg-type]
        result = allocate(problem, solver=solver, seed=seed)  # type: ignore[arg-type]
        lines = {
            line.enterprise_id: LineDecision(line.enterprise_id, float(line.amount_yuan), float(line.rate),
                                             float(line.expected_profit_yuan), tuple(line.reasons))
            for line in result.lines
        }
        return AllocationDecision(lines, float(result.total_amount_yuan), float(result.expected_profit_yuan),
                                  result.solver, float(result.runtime_s), optimum_yuan=result.optimum_yuan, gap=result.gap)

    return allocate_scores
