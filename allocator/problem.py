"""The allocation problem as values: applicants, constraints and the policy.

Everything is validated here, once; the solvers trust a :class:`Problem`.
Loans are 0 or a multiple of ``step_yuan`` in ``[min_loan_yuan, max_loan_yuan]`` (10..100
ten-thousand yuan as in the papers), rates lie in ``[rate_min, rate_max]``, and the sum of
loans stays within ``budget_yuan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from allocator.churn import RATINGS, ChurnCurves
from allocator.errors import AllocationInputError

Policy = Literal["enterprise", "segment"]
RateGrid = Literal["observed", "continuous"]


@dataclass(frozen=True, slots=True)
class Applicant:
    """One enterprise to decide on.

    ``strength`` and ``stability`` (in [0, 1]) are used only by the rule strategy of paper 000.

    Examples
    --------
    >>> Applicant("E1", "A", 0.02).default_probability
    0.02
    """

    enterprise_id: str
    rating: str
    default_probability: float
    segment: str = ""
    industry: str = ""
    strength: float | None = None
    stability: float | None = None

    def __post_init__(self) -> None:
        if not self.enterprise_id:
            raise AllocationInputError("an applicant has an empty enterprise_id")
        if self.rating not in RATINGS:
            raise AllocationInputError(
                f"{self.enterprise_id}: unknown rating {self.rating!r}; expected one of A, B, C, D")
        p = self.default_probability
        if not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise AllocationInputError(f"{self.enterprise_id}: default_probability {p!r} is outside [0, 1]")
        for name in ("strength", "stability"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or not 0.0 <= v <= 1.0):
                raise AllocationInputError(f"{self.enterprise_id}: {name} {v!r} is outside [0, 1]")


@dataclass(frozen=True, slots=True)
class Constraints:
    """Budget, loan and rate bounds, and the optional extras.

    Parameters
    ----------
    budget_yuan
        Upper bound on the sum of all loans.
    min_loan_yuan, max_loan_yuan, step_yuan
        A loan is 0 or a multiple of ``step_yuan`` within these bounds.
    rate_min, rate_max
        Rate bounds; with ``rate_grid="observed"`` only the churn table's rates inside them are used.
    lgd
        Loss given default (share of the loan lost on default).
    segment_cap_share, industry_cap_share
        If set, the loans to one segment (resp. industry) may not exceed this share of the budget.
    max_move_yuan
        If set, a line that exists in the previous allocation may move by at most this much,
        unless it is closed (closing a line is always allowed: risk overrides smoothing).

    Examples
    --------
    >>> Constraints(budget_yuan=70_000_000).budget_steps
    7000
    """

    budget_yuan: float
    min_loan_yuan: int = 100_000
    max_loan_yuan: int = 1_000_000
    step_yuan: int = 10_000
    rate_min: float = 0.04
    rate_max: float = 0.15
    rate_grid: RateGrid = "observed"
    lgd: float = 1.0
    segment_cap_share: float | None = None
    industry_cap_share: float | None = None
    max_move_yuan: float | None = None

    def __post_init__(self) -> None:
        b = self.budget_yuan
        if not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise AllocationInputError(f"budget {b!r} must be a finite, non-negative number of yuan")
        if self.step_yuan <= 0:
            raise AllocationInputError("step_yuan must be positive")
        if not 0 < self.min_loan_yuan <= self.max_loan_yuan:
            raise AllocationInputError("loan bounds must satisfy 0 < min_loan_yuan <= max_loan_yuan")
        if self.min_loan_yuan % self.step_yuan or self.max_loan_yuan % self.step_yuan:
            raise AllocationInputError("min_loan_yuan and max_loan_yuan must be multiples of step_yuan")
        if not (math.isfinite(self.rate_min) and math.isfinite(self.rate_max) and 0 <= self.rate_min <= self.rate_max):
            raise AllocationInputError("rate bounds must satisfy 0 <= rate_min <= rate_max")
        if self.rate_grid not in ("observed", "continuous"):
            raise AllocationInputError(f"rate_grid {self.rate_grid!r} must be 'observed' or 'continuous'")
        if not math.isfinite(self.lgd) or not 0 <= self.lgd <= 1:
            raise AllocationInputError(f"lgd {self.lgd!r} must be in [0, 1]")
        for name in ("segment_cap_share", "industry_cap_share"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or not 0 < v <= 1):
                raise AllocationInputError(f"{name} {v!r} must be in (0, 1]")
        if self.max_move_yuan is not None and (not math.isfinite(self.max_move_yuan) or self.max_move_yuan < 0):
            raise AllocationInputError("max_move_yuan must be a non-negative number of yuan")

    @property
    def budget_steps(self) -> int:
        """Whole loan steps that fit in the budget."""
        return int(math.floor(self.budget_yuan / self.step_yuan + 1e-9))

    @property
    def min_steps(self) -> int:
        return self.min_loan_yuan // self.step_yuan

    @property
    def max_steps(self) -> int:
        return self.max_loan_yuan // self.step_yuan

    @property
    def has_extras(self) -> bool:
        """Whether a constraint beyond budget and bounds is set."""
        return self.segment_cap_share is not None or self.industry_cap_share is not None or self.max_move_yuan is not None


@dataclass(frozen=True, slots=True)
class Problem:
    """Applicants, constraints, churn curves and the policy.

    ``policy="enterprise"`` gives each enterprise its own (amount, rate); ``policy="segment"``
    gives every lendable (non-D) member of a segment the same (amount, rate), as in paper 004.
    ``previous_amount_yuan`` holds the previous run's lines (for ``max_move_yuan``).
    """

    applicants: tuple[Applicant, ...]
    constraints: Constraints
    churn: ChurnCurves
    policy: Policy = "enterprise"
    previous_amount_yuan: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.applicants, tuple):
            object.__setattr__(self, "applicants", tuple(self.applicants))
        if not self.applicants:
            raise AllocationInputError("no applicants: nothing to allocate")
        seen: set[str] = set()
        for a in self.applicants:
            if a.enterprise_id in seen:
                raise AllocationInputError(f"enterprise {a.enterprise_id} appears twice")
            seen.add(a.enterprise_id)
        if self.policy not in ("enterprise", "segment"):
            raise AllocationInputError(f"policy {self.policy!r} must be 'enterprise' or 'segment'")
        c = self.constraints
        lo, hi = self.churn.rates[0], self.churn.rates[-1]
        if c.rate_min < lo - 1e-12 or c.rate_max > hi + 1e-12:
            raise AllocationInputError(f"rate bounds [{c.rate_min}, {c.rate_max}] exceed the churn table's [{lo}, {hi}]")
        if c.rate_grid == "observed" and not any(c.rate_min - 1e-12 <= r <= c.rate_max + 1e-12 for r in self.churn.rates):
            raise AllocationInputError("no observed rate lies within the rate bounds")


def make_problem(applicants: Sequence[Applicant], budget_yuan: float, churn: ChurnCurves, *,
                 policy: Policy = "enterprise", previous_amount_yuan: Mapping[str, float] | None = None,
                 **constraints: object) -> Problem:
    """Shorthand: ``Problem(tuple(applicants), Constraints(budget_yuan, **constraints), churn, policy)``.

    Examples
    --------
    >>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
    >>> make_problem([Applicant("E1", "A", 0.01)], 1e6, curves).constraints.budget_yuan
    1000000.0
    >>> make_problem([Applicant("E1", "A", 0.01)], -1, curves)
    Traceback (most recent call last):
    ...
    allocator.errors.AllocationInputError: budget -1.0 must be a finite, non-negative number of yuan
    """
    return Problem(tuple(applicants), Constraints(float(budget_yuan), **constraints),  # type: ignore[arg-type]
                   churn, policy, dict(previous_amount_yuan or {}))
