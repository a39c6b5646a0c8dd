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

Change codes (:func:`line_changes`, the one rule; the stream publishes them as
``CreditLine.change_reasons``): ``new``, ``amount_increased``, ``amount_decreased``, ``rate_increased``,
``rate_decreased``, ``reasons_changed``, then the explanations ``rating_changed:X->Y``,
``segment_changed:X->Y``, ``default_probability_increased``, ``default_probability_decreased``;
:func:`diff` adds ``line_closed`` for an enterprise that is no longer scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from allocator.problem import Problem
    from allocator.result import Allocation
    from allocator.units import Units

AMOUNT_TOLERANCE_YUAN = 0.005  # half a fen: amounts are whole yuan, floats may carry noise
RATE_TOLERANCE = 1e-9
RATE_CAP_TOLERANCE = 1e-12  # a rate this close to rate_max is at the cap
PROBABILITY_CHANGE = 0.01  # a default probability move worth naming as a reason


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
    max_loan, max_steps, rate_cap = c.max_loan_yuan, c.max_steps, c.rate_max - RATE_CAP_TOLERANCE
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


class LineView(Protocol):
    """What :func:`line_changes` reads of a line (``AllocationLine``, the stream's ``CreditLine``, ...)."""

    @property
    def amount_yuan(self) -> float: ...
    @property
    def rate(self) -> float: ...
    @property
    def default_probability(self) -> float: ...
    @property
    def rating(self) -> str: ...
    @property
    def segment(self) -> str: ...
    @property
    def reasons(self) -> Sequence[str]: ...


def line_changes(previous: LineView | None, current: LineView) -> tuple[str, ...]:
    """Why ``current`` differs from ``previous``: the one rule for change reasons (the stream publishes these).

    ``("new",)`` without a previous line; empty when the amount, the rate and the line reasons are
    all the same (a line is republished only then). When one of those changed, the score changes
    that explain it follow: ``rating_changed:B->C``, ``segment_changed:x->y`` and
    ``default_probability_increased``/``_decreased`` (by at least ``PROBABILITY_CHANGE``).

    Examples
    --------
    >>> from allocator.result import AllocationLine
    >>> def one(amount, rate, p, rating="A"):
    ...     return AllocationLine("E1", rating, p, "s", "", amount, rate, 0.0, 0.0, 0.0, ("lent",) if amount else ())
    >>> line_changes(None, one(500_000, 0.05, 0.01))
    ('new',)
    >>> line_changes(one(500_000, 0.05, 0.01), one(300_000, 0.06, 0.03, "B"))
    ('amount_decreased', 'rate_increased', 'rating_changed:A->B', 'default_probability_increased')
    >>> line_changes(one(500_000, 0.05, 0.01), one(500_000, 0.05, 0.015))
    ()
    """
    if previous is None:
        return ("new",)
    codes: list[str] = []
    if abs(current.amount_yuan - previous.amount_yuan) > AMOUNT_TOLERANCE_YUAN:
        codes.append("amount_increased" if current.amount_yuan > previous.amount_yuan else "amount_decreased")
    if abs(current.rate - previous.rate) > RATE_TOLERANCE:
        codes.append("rate_increased" if current.rate > previous.rate else "rate_decreased")
    if tuple(current.reasons) != tuple(previous.reasons):
        codes.append("reasons_changed")
    if not codes:
        return ()
    if current.rating != previous.rating:
        codes.append(f"rating_changed:{previous.rating}->{current.rating}")
    if current.segment != previous.segment:
        codes.append(f"segment_changed:{previous.segment}->{current.segment}")
    delta = current.default_probability - previous.default_probability
    if abs(delta) >= PROBABILITY_CHANGE:
        codes.append("default_probability_increased" if delta > 0 else "default_probability_decreased")
    return tuple(codes)


def diff(previous: Allocation | None, current: Allocation) -> dict[str, tuple[str, ...]]:
    """What changed per enterprise between two allocations (only enterprises with a change): :func:`line_changes`.

    An enterprise lent in ``previous`` but absent from ``current`` (no longer scored) gets ``line_closed``.

    Examples
    --------
    >>> from allocator.result import Allocation, AllocationLine
    >>> def one(amount, rate, p):
    ...     line = AllocationLine("E1", "A", p, "", "", amount, rate, 0.0, 0.0, 0.0, ())
    ...     return Allocation((line,), 1e6, amount, 0.0, 0.0, 0.0, "exact", "enterprise")
    >>> diff(None, one(500_000, 0.05, 0.01))
    {'E1': ('new',)}
    >>> diff(one(500_000, 0.05, 0.01), one(300_000, 0.06, 0.03))
    {'E1': ('amount_decreased', 'rate_increased', 'default_probability_increased')}
    >>> diff(one(500_000, 0.05, 0.01), Allocation((), 1e6, 0, 0.0, 0.0, 0.0, "exact", "enterprise"))
    {'E1': ('line_closed',)}
    """
    before = {ln.enterprise_id: ln for ln in previous.lines} if previous is not None else {}
    out: dict[str, tuple[str, ...]] = {}
    for ln in current.lines:
        codes = line_changes(before.pop(ln.enterprise_id, None), ln)
        if codes:
            out[ln.enterprise_id] = codes
    for eid, old in before.items():
        if old.amount_yuan > 0:
            out[eid] = ("line_closed",)
    return out
