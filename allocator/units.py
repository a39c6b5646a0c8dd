"""Decision units: what the solvers choose an (amount, rate) for.

Under ``policy="enterprise"`` a unit is one enterprise; under ``policy="segment"`` it is the
set of lendable (non-D) members of one segment, all given the same amount and rate. A unit
with ``w`` members lent ``k`` steps at rate ``r`` uses ``w * k`` budget steps and earns
``k * value(r)`` where ``value(r) = step * sum over members of retention(r) * (r (1 - p) - lgd p)``.

Because every constraint here acts on amounts only, a unit's best rate does not depend on
its amount: it is the argmax of ``value`` over the candidate rates. With a continuous rate
grid the retention is piecewise linear in ``r``, so ``value`` is a quadratic on each interval
between observed rates and its maximum is at an interval end or at the vertex of a concave
piece; these are the candidates, so the argmax over them is the exact continuous optimum.

Units whose best value is not positive never get a line (and D never gets one: its retention
is 0), so they are left out of the optimisation altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from allocator.churn import RATINGS
from allocator.problem import Problem

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Units:
    """The lendable units of a problem (see module docstring).

    Attributes
    ----------
    unit_of
        For each applicant, the index of its unit, or -1 when it can never be lent.
    members
        ``members[u]``: applicant indices of unit ``u``.
    weight
        Budget steps used per amount step (number of members), shape ``(U,)``.
    lo_steps, hi_steps
        Per-unit amount bounds in steps; a unit may also get 0. ``lo > hi`` means only 0.
    rates, value
        Candidate rates and the value (yuan per amount step) at each, shape ``(U, C)``.
    best
        Index of the best candidate rate per unit.
    group_names, group_cap_steps
        Concentration groups (``"segment:X"``, ``"industry:Y"``) and their caps in budget steps.
    unit_groups
        ``unit_groups[u]``: tuple of ``(group index, members of u in that group)``.
    """

    unit_of: IntArray
    members: tuple[IntArray, ...]
    weight: IntArray
    lo_steps: IntArray
    hi_steps: IntArray
    rates: FloatArray
    value: FloatArray
    best: IntArray
    group_names: tuple[str, ...]
    group_cap_steps: IntArray
    unit_groups: tuple[tuple[tuple[int, int], ...], ...]
    budget_steps: int
    step_yuan: int

    @property
    def n(self) -> int:
        return int(self.weight.size)

    @property
    def best_value(self) -> FloatArray:
        return np.asarray(self.value[np.arange(self.n), self.best], dtype=float)

    @property
    def best_rate(self) -> FloatArray:
        return np.asarray(self.rates[np.arange(self.n), self.best], dtype=float)

    @property
    def simple(self) -> bool:
        """Single-member units, equal bounds and no concentration caps: the closed-form case."""
        return (self.n == 0 or (bool(np.all(self.weight == 1)) and bool(np.all(self.lo_steps == self.lo_steps[0]))
                and bool(np.all(self.hi_steps == self.hi_steps[0])))) and not self.group_names


def _rating_index(problem: Problem) -> IntArray:
    lookup = {r: i for i, r in enumerate(RATINGS)}
    return np.fromiter((lookup[a.rating] for a in problem.applicants), dtype=np.int64, count=len(problem.applicants))


def _sum_by_unit(rows: FloatArray, unit_of_member: IntArray, n_units: int) -> FloatArray:
    """Sum member rows per unit, shape ``(n_units, rows.shape[1])``."""
    if rows.shape[0] == n_units and np.array_equal(unit_of_member, np.arange(n_units)):
        return np.array(rows, dtype=float)
    out = np.zeros((n_units, rows.shape[1]))
    np.add.at(out, unit_of_member, rows)
    return out


def candidate_rates(problem: Problem, rating_idx: IntArray, p: FloatArray, unit_of_member: IntArray,
                    n_units: int) -> FloatArray:
    """Candidate rates per unit, shape ``(U, C)`` (see module docstring)."""
    c = problem.constraints
    knots = problem.churn.observed_rates
    inside = knots[(knots >= c.rate_min - 1e-12) & (knots <= c.rate_max + 1e-12)]
    if c.rate_grid == "observed":
        return np.broadcast_to(inside, (n_units, inside.size)).copy()
    grid = np.unique(np.concatenate([inside, [c.rate_min, c.rate_max]]))
    a, b = problem.churn.knot_lines()  # (4, K)
    lgd = c.lgd
    am, bm = a[rating_idx], b[rating_idx]  # (m, K)
    q = (1.0 - p)[:, None]
    c2 = _sum_by_unit(bm * q, unit_of_member, n_units)
    c1 = _sum_by_unit(am * q - bm * lgd * p[:, None], unit_of_member, n_units)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(c2 < 0, -c1 / (2.0 * c2), knots[None, :-1])
    left = np.maximum(knots[:-1], c.rate_min)[None, :]
    right = np.minimum(knots[1:], c.rate_max)[None, :]
    vertex = np.clip(vertex, np.minimum(left, right), right)
    vertex = np.clip(vertex, c.rate_min, c.rate_max)
    return np.concatenate([np.broadcast_to(grid, (n_units, grid.size)), vertex], axis=1)


def _values(problem: Problem, rates: FloatArray, rating_idx: IntArray, p: FloatArray,
            unit_of_member: IntArray, n_units: int) -> FloatArray:
    """Value per amount step of each unit at each candidate rate, shape ``(U, C)``."""
    c = problem.constraints
    churn = problem.churn
    x = churn.observed_rates
    table = churn.retention_table(x)  # (4, K+1)
    member_rates = rates[unit_of_member]  # (m, C)
    if c.rate_grid == "observed":  # every candidate is an observed rate: read the table, no interpolation
        inside = (x >= c.rate_min - 1e-12) & (x <= c.rate_max + 1e-12)
        ret = table[:, inside][rating_idx]
    else:
        ret = np.empty_like(member_rates)
        for r_idx in range(len(RATINGS)):
            mask = rating_idx == r_idx
            if np.any(mask):
                ret[mask] = np.interp(member_rates[mask], x, table[r_idx])
    per_yuan = ret * (member_rates * (1.0 - p)[:, None] - c.lgd * p[:, None])
    return _sum_by_unit(per_yuan, unit_of_member, n_units) * c.step_yuan


def build_units(problem: Problem) -> Units:
    """Group a problem's applicants into lendable units with their best rates and bounds.

    Examples
    --------
    >>> from allocator.churn import ChurnCurves
    >>> from allocator.problem import Applicant, make_problem
    >>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.5), "B": (0.0, 0.5), "C": (0.0, 0.5)})
    >>> units = build_units(make_problem([Applicant("E1", "A", 0.0), Applicant("E2", "D", 0.5)], 1e6, curves))
    >>> units.unit_of.tolist(), units.best_rate.tolist()
    ([0, -1], [0.15])
    """
    c = problem.constraints
    apps = problem.applicants
    rating_idx_all = _rating_index(problem)
    p_all = np.fromiter((a.default_probability for a in apps), dtype=float, count=len(apps))
    d_idx = RATINGS.index("D")
    lendable_member = rating_idx_all != d_idx
    member_ids = np.flatnonzero(lendable_member)

    if problem.policy == "enterprise":
        unit_of_member = np.arange(member_ids.size)
        n_cand = int(member_ids.size)
    else:
        segments = [apps[i].segment for i in member_ids.tolist()]
        names = sorted(set(segments))
        position = {name: j for j, name in enumerate(names)}
        unit_of_member = np.asarray([position[s] for s in segments], dtype=np.int64)
        n_cand = len(names)
    rating_idx = rating_idx_all[member_ids]
    p = p_all[member_ids]
    rates = candidate_rates(problem, rating_idx, p, unit_of_member, n_cand)
    values = _values(problem, rates, rating_idx, p, unit_of_member, n_cand)
    best = np.argmax(values, axis=1) if n_cand else np.zeros(0, dtype=np.int64)
    best_value = values[np.arange(n_cand), best] if n_cand else np.zeros(0)

    keep = best_value > 0
    new_index = np.full(n_cand, -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    unit_of = np.full(len(apps), -1, dtype=np.int64)
    unit_of[member_ids] = new_index[unit_of_member]

    n_units = int(keep.sum())
    order = np.argsort(unit_of, kind="stable")
    sorted_units = unit_of[order]
    start = np.searchsorted(sorted_units, np.arange(n_units))
    stop = np.searchsorted(sorted_units, np.arange(n_units), side="right")
    members = tuple(order[s:e] for s, e in zip(start.tolist(), stop.tolist()))
    weight = (stop - start).astype(np.int64)

    lo = np.full(n_units, c.min_steps, dtype=np.int64)
    hi = np.full(n_units, c.max_steps, dtype=np.int64)
    if c.max_move_yuan is not None and problem.previous_amount_yuan:
        prev = problem.previous_amount_yuan
        for u, mem in enumerate(members):
            for i in mem.tolist():
                eid = apps[i].enterprise_id
                if eid in prev:
                    before = float(prev[eid])
                    lo[u] = max(lo[u], math.ceil((before - c.max_move_yuan) / c.step_yuan - 1e-9))
                    hi[u] = min(hi[u], math.floor((before + c.max_move_yuan) / c.step_yuan + 1e-9))

    group_names: list[str] = []
    caps: list[int] = []
    unit_groups: list[list[tuple[int, int]]] = [[] for _ in range(n_units)]
    for attr, share in (("segment", c.segment_cap_share), ("industry", c.industry_cap_share)):
        if share is None:
            continue
        cap = int(math.floor(share * c.budget_yuan / c.step_yuan + 1e-9))
        index: dict[str, int] = {}
        for u, mem in enumerate(members):
            counts: dict[int, int] = {}
            for i in mem.tolist():
                name = f"{attr}:{getattr(apps[i], attr)}"
                if name not in index:
                    index[name] = len(group_names)
                    group_names.append(name)
                    caps.append(cap)
                g = index[name]
                counts[g] = counts.get(g, 0) + 1
            unit_groups[u].extend(sorted(counts.items()))

    return Units(
        unit_of=unit_of, members=members, weight=weight, lo_steps=lo, hi_steps=hi,
        rates=np.ascontiguousarray(rates[keep]), value=np.ascontiguousarray(values[keep]), best=best[keep],
        group_names=tuple(group_names), group_cap_steps=np.asarray(caps, dtype=np.int64),
        unit_groups=tuple(tuple(g) for g in unit_groups), budget_steps=c.budget_steps, step_yuan=c.step_yuan,
    )
