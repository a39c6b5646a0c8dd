"""Paper 000's rule strategy, a baseline policy that ignores expected profit.

1. D gets nothing.
2. A, B, C get fixed rates 5.45 %, 5.85 %, 6.25 % (``RULE_RATES``).
3. Initial limits from a softmax over a score ``s = (strength + stability) / 2`` inside each
   rating class (the paper's formula is lost in the source; this is our reading of it):
   ``limit = min + (max - min) * softmax(s / tau)_i / max_j softmax(s / tau)_j``
   ``      = min + (max - min) * exp((s_i - max_j s_j) / tau)``,
   rounded down to the loan step, with ``tau = 0.25``. The strongest, most stable enterprise
   of a class gets ``max_loan``; one a full score point below it gets ``min + (max - min) e^-4``.
   Missing scores: ``strength = 1 - default_probability`` (repayment capacity stands in for
   strength) and ``stability = 0.5`` (neutral).
4. If the initial limits exceed the budget, enterprises are lent their limit in order of
   decreasing score (A before B before C) while it fits (the first that no longer fits gets
   what is left if that is at least ``min_loan``). Otherwise limits are raised per class,
   A by 200 000, B by 100 000, C by 50 000 yuan (capped at ``max_loan``), class after class,
   round after round, in order of decreasing score, until no raise fits in the budget.

Concentration caps, move caps and the segment policy do not apply to this strategy.
"""

from __future__ import annotations

import time

import numpy as np

from allocator.errors import AllocationInputError
from allocator.problem import Applicant, Problem
from allocator.result import Allocation, assemble_lines

RULE_RATES: dict[str, float] = {"A": 0.0545, "B": 0.0585, "C": 0.0625}
TOP_UP_YUAN: dict[str, int] = {"A": 200_000, "B": 100_000, "C": 50_000}
SOFTMAX_TAU = 0.25
DEFAULT_STABILITY = 0.5


def rule_score(applicant: Applicant) -> float:
    """``(strength + stability) / 2`` with the documented defaults.

    Examples
    --------
    >>> rule_score(Applicant("E1", "A", 0.2))  # (0.8 + 0.5) / 2
    0.65
    """
    strength = applicant.strength if applicant.strength is not None else 1.0 - applicant.default_probability
    stability = applicant.stability if applicant.stability is not None else DEFAULT_STABILITY
    return (strength + stability) / 2.0


def solve_rules(problem: Problem, *, tau: float = SOFTMAX_TAU) -> Allocation:
    """Paper 000's strategy (see module docstring).

    Examples
    --------
    >>> from allocator.churn import ChurnCurves
    >>> from allocator.problem import make_problem
    >>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
    >>> apps = [Applicant("E1", "A", 0.0, strength=1.0, stability=1.0), Applicant("E2", "A", 0.0, strength=0.0, stability=0.0),
    ...         Applicant("E3", "C", 0.1), Applicant("E4", "D", 0.9)]
    >>> result = solve_rules(make_problem(apps, 1_500_000, curves))
    >>> [(ln.amount_yuan, ln.rate) for ln in result.lines]
    [(1000000, 0.0545), (110000, 0.0545), (390000, 0.0625), (0, 0.0)]
    """
    c = problem.constraints
    if problem.policy != "enterprise":
        raise AllocationInputError("the rule strategy gives per-enterprise lines; use policy 'enterprise'")
    if c.has_extras:
        raise AllocationInputError("the rule strategy does not support concentration or move caps; use exact or anneal")
    for rating, rule_rate in RULE_RATES.items():
        if not c.rate_min - 1e-12 <= rule_rate <= c.rate_max + 1e-12:
            raise AllocationInputError(f"rule rate {rule_rate} for {rating} lies outside the rate bounds")
    start = time.perf_counter()
    apps = problem.applicants
    n = len(apps)
    step, lo, hi = c.step_yuan, c.min_loan_yuan, c.max_loan_yuan
    budget = c.budget_steps * step
    scores = np.asarray([rule_score(a) for a in apps])
    limit = np.zeros(n, dtype=np.int64)
    rate = np.zeros(n)
    for rating in ("A", "B", "C"):
        idx = np.flatnonzero([a.rating == rating for a in apps])
        if idx.size == 0:
            continue
        raw = lo + (hi - lo) * np.exp((scores[idx] - scores[idx].max()) / tau)
        limit[idx] = np.clip((raw // step).astype(np.int64) * step, lo, hi)
        rate[idx] = RULE_RATES[rating]
    class_rank = {"A": 0, "B": 1, "C": 2}
    order = sorted((i for i in range(n) if apps[i].rating in class_rank),
                   key=lambda i: (class_rank[apps[i].rating], -scores[i], i))
    amount = np.zeros(n, dtype=np.int64)
    short: set[int] = set()
    if int(limit.sum()) > budget:
        used = 0
        for i in order:
            give = min(int(limit[i]), budget - used)
            if give >= lo:
                amount[i] = give
                used += give
            if give < limit[i]:
                short.add(i)
    else:
        amount[:] = limit
        used = int(amount.sum())
        progress = True
        while progress:
            progress = False
            for rating in ("A", "B", "C"):
                for i in (j for j in order if apps[j].rating == rating):
                    if amount[i] >= hi:
                        continue
                    raise_by = min(TOP_UP_YUAN[rating], hi - int(amount[i]))
                    if used + raise_by <= budget:
                        amount[i] += raise_by
                        used += raise_by
                        progress = True
                    else:
                        short.add(i)
        short = {i for i in short if amount[i] < hi}
    rate = np.where(amount > 0, rate, 0.0)
    extra = {i: ("rule_limit",) + (("budget_exhausted",) if i in short else ()) for i in range(n) if apps[i].rating != "D"}
    return assemble_lines(problem, amount, rate, solver="rules", runtime_s=time.perf_counter() - start,
                          extra_reasons=extra)
