"""Reason codes on allocation lines, and what changed between two allocations.

Line codes (an open set; these are the ones the solvers emit):

``rating_D``
    rated D: the bank does not lend to D.
``negative_expected_profit``
    the best expected profit at any allowed rate is not positive (or, for the rule strategy,
    the line it gives has a negative expected profit).
``lent``
    the enterprise has a line.
``at_max_amount``
    the line is at ``max_loan_yuan``.
``rate_capped_by_churn``
    the rate is below ``rate_max`` because a higher rate loses more clients than it earns.
``budget_exhausted``
    the line would be larger (or would exist) but no budget step is left.
``concentration_cap``
    the line would be larger but its segment or industry is at its cap.
``move_capped``
    the line is held within ``max_move_yuan`` of the previous allocation.
``rule_limit``
    (rule strategy) the line is the limit the rules give this enterprise.

Change codes from :func:`diff`: ``new_line``, ``line_closed``, ``amount_up``, ``amount_down``,
``rate_up``, ``rate_down``, ``default_probability_up``, ``default_probability_down``,
``rating_changed``, ``segment_changed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from allocator.problem import Problem
    from allocator.result import Allocation
    from allocator.units import Units

PROBABILITY_TOLERANCE = 1e-9
RATE_TOLERANCE = 1e-12


def line_reasons(problem: Problem, units: Units | None, steps: npt.NDArray[np.int64] | None,
                 amount: npt.NDArray[np.int64], rate: npt.NDArray[np.float64],
                 profit: npt.NDArray[np.float64]) -> list[tuple[str, ...]]:
    """Reason codes for each applicant of a solved problem (see module docstring)."""
    c = problem.constraints
    out: list[tuple[str, ...]] = []
    used = 0
    group_use = np.zeros(0, dtype=np.int64)
    if units is not None and steps is not None:
        used = int(np.dot(units.weight, steps))
        group_use = np.zeros(len(units.group_names), dtype=np.int64)
        for u in np.flatnonzero(steps).tolist():
            for g, count in units.unit_groups[u]:
                group_use[g] += count * int(steps[u])
    slack = units.budget_steps - used if units is not None else 0
    amount_l = amount.tolist()
    rate_l = rate.tolist()
    profit_l = profit.tolist()
    unit_of = units.unit_of.tolist() if units is not None else []
    steps_l = steps.tolist() if steps is not None else []
    weight = units.weight.tolist() if units is not None else []
    lo_l = units.lo_steps.tolist() if units is not None else []
    hi_l = units.hi_steps.tolist() if units is not None else []
    caps = units.group_cap_steps.tolist() if units is not None else []
    use = group_use.tolist()
    max_loan, max_steps, rate_cap = c.max_loan_yuan, c.max_steps, c.rate_max - RATE_TOLERANCE
    for i, a in enumerate(problem.applicants):
        if a.rating == "D":
            out.append(("rating_D",))
            continue
        if units is not None and unit_of[i] < 0:
            out.append(("negative_expected_profit",))
            continue
        codes: list[str] = []
        z = amount_l[i]
        if z > 0:
            codes.append("lent")
            if z >= max_loan:
                codes.append("at_max_amount")
            if units is not None and rate_l[i] < rate_cap:
                codes.append("rate_capped_by_churn")
            if units is None and profit_l[i] < 0:
                codes.append("negative_expected_profit")
        if units is not None and z < max_loan:
            u = unit_of[i]
            k = steps_l[u]
            lo, hi = lo_l[u], hi_l[u]
            need = lo if k == 0 else 1
            if (hi < max_steps and k == hi) or (k == 0 and lo > hi):
                codes.append("move_capped")
            elif any(use[g] + count * need > caps[g] for g, count in units.unit_groups[u]):
                codes.append("concentration_cap")
            elif slack < weight[u] * need:
                codes.append("budget_exhausted")
        out.append(tuple(codes))
    return out


def diff(previous: Allocation | None, current: Allocation) -> dict[str, tuple[str, ...]]:
    """What changed per enterprise between two allocations (only enterprises with a change).

    An enterprise lent in ``previous`` but absent from ``current`` gets ``line_closed``.

    Examples
    --------
    >>> from allocator.result import Allocation, AllocationLine
    >>> def one(amount, rate, p):
    ...     line = AllocationLine("E1", "A", p, "", "", amount, rate, 0.0, 0.0, 0.0, ())
    ...     return Allocation((line,), 1e6, amount, 0.0, 0.0, 0.0, "exact", "enterprise")
    >>> diff(None, one(500_000, 0.05, 0.01))
    {'E1': ('new_line',)}
    >>> diff(one(500_000, 0.05, 0.01), one(300_000, 0.06, 0.03))
    {'E1': ('amount_down', 'rate_up', 'default_probability_up')}
    >>> diff(one(500_000, 0.05, 0.01), one(0, 0.0, 0.01))
    {'E1': ('line_closed',)}
    """
    before = {ln.enterprise_id: ln for ln in previous.lines} if previous is not None else {}
    out: dict[str, tuple[str, ...]] = {}
    for ln in current.lines:
        old = before.pop(ln.enterprise_id, None)
        codes: list[str] = []
        old_amount = old.amount_yuan if old is not None else 0
        if ln.amount_yuan > 0 and old_amount == 0:
            codes.append("new_line")
        elif ln.amount_yuan == 0 and old_amount > 0:
            codes.append("line_closed")
        elif ln.amount_yuan > 0 and old is not None:
            if ln.amount_yuan > old_amount:
                codes.append("amount_up")
            elif ln.amount_yuan < old_amount:
                codes.append("amount_down")
            if ln.rate > old.rate + RATE_TOLERANCE:
                codes.append("rate_up")
            elif ln.rate < old.rate - RATE_TOLERANCE:
                codes.append("rate_down")
        if old is not None:
            if ln.default_probability > old.default_probability + PROBABILITY_TOLERANCE:
                codes.append("default_probability_up")
            elif ln.default_probability < old.default_probability - PROBABILITY_TOLERANCE:
                codes.append("default_probability_down")
            if ln.rating != old.rating:
                codes.append("rating_changed")
            if ln.segment != old.segment:
                codes.append("segment_changed")
        if codes:
            out[ln.enterprise_id] = tuple(codes)
    for eid, old in before.items():
        if old.amount_yuan > 0:
            out[eid] = ("line_closed",)
    return out
