"""Exact optimum of the linear allocation problem.

Once every unit has its best rate (see :mod:`allocator.units`), unit ``u`` lent ``k_u`` steps
earns ``v_u * k_u`` with ``v_u > 0``, and the problem is the integer programme

    maximise  sum v_u k_u
    s.t.      k_u = 0  or  lo_u <= k_u <= hi_u   (integer steps)
              sum w_u k_u <= B                    (budget steps)
              sum_{u in g} c_{u,g} k_u <= cap_g   (concentration groups, optional)

**Closed form** (single-member units with equal bounds ``lo``, ``hi`` and no groups, i.e. the
per-enterprise policy without extras). Sort units by ``v`` descending.

1. *An optimal set of lent units is a prefix of that order.* If ``i`` is lent and ``j`` is not,
   with ``v_j >= v_i``, give ``j`` exactly ``i``'s amount and close ``i``: still feasible (same
   bounds, same budget) and not worse. Repeating the swap turns any optimum into a prefix.
2. *For a fixed prefix of size k the best amounts are greedy.* Every unit first needs ``lo``
   steps; the remaining ``E = min(B - k lo, k (hi - lo))`` steps each cost one budget step, so
   they go to the highest values first: ``f = E // (hi - lo)`` units at ``hi``, one unit with the
   remainder, the rest at ``lo``. Its value is ``lo P(k) + (hi - lo) P(f) + rem v_(f+1)`` with
   ``P`` the prefix sums of the sorted values.
3. So the optimum is the best of these ``min(n, B // lo) + 1`` candidates, evaluated at once
   with numpy: ``O(n log n)`` for the sort and ``O(n)`` after. No search, no tolerance: exact up
   to floating-point summation.

**General case** (segment policy, concentration caps, move caps): the same integer programme
with one binary ``y_u`` per unit (``lo_u y_u <= k_u <= hi_u y_u``), solved by HiGHS through
:func:`scipy.optimize.milp`, which proves optimality (its MIP gap is reported).
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from allocator.errors import SolverError
from allocator.problem import Problem
from allocator.result import Allocation, assemble
from allocator.units import Units, build_units

IntArray = npt.NDArray[np.int64]


def solve_closed_form(value: npt.ArrayLike, lo: int, hi: int, budget_steps: int) -> tuple[IntArray, float]:
    """Optimal steps for single-member units with equal bounds and no groups.

    Parameters
    ----------
    value
        Value per step of each unit (positive).
    lo, hi
        Bounds in steps of a non-zero loan.
    budget_steps
        Budget in steps.

    Returns
    -------
    steps, objective

    Examples
    --------
    >>> steps, best = solve_closed_form([3.0, 2.0, 1.5], lo=10, hi=100, budget_steps=105)
    >>> steps.tolist(), best  # 95 x 3 + 10 x 2 beats 100 x 3
    ([95, 10, 0], 305.0)
    """
    v = np.asarray(value, dtype=float)
    n = v.size
    steps = np.zeros(n, dtype=np.int64)
    kmax = min(n, budget_steps // lo) if lo > 0 else n
    if n == 0 or kmax == 0:
        return steps, 0.0
    order = np.argsort(-v, kind="stable")
    vs = v[order]
    prefix = np.concatenate([[0.0], np.cumsum(vs)])
    k = np.arange(kmax + 1, dtype=np.int64)
    span = hi - lo
    extra = np.minimum(budget_steps - k * lo, k * span)
    if span > 0:
        full = extra // span
        rem = extra - full * span
    else:
        full = np.zeros_like(k)
        rem = np.zeros_like(k)
    nxt = vs[np.minimum(full, n - 1)]
    objective = lo * prefix[k] + span * prefix[full] + np.where(rem > 0, rem * nxt, 0.0)
    # Among candidates equal up to rounding (ties in value), take the fewest lines.
    top = float(objective.max())
    best_k = int(np.argmax(objective >= top - 1e-12 * max(abs(top), 1.0)))
    f, r = int(full[best_k]), int(rem[best_k])
    chosen = np.full(best_k, lo, dtype=np.int64)
    chosen[:f] = hi
    if r:
        chosen[f] += r
    steps[order[:best_k]] = chosen
    return steps, float(np.dot(v, steps))


def solve_milp(units: Units, *, time_limit_s: float | None = None) -> tuple[IntArray, float, float]:
    """Optimal steps for the general case by HiGHS; returns ``(steps, objective, mip_gap)``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, vstack

    n = units.n
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0.0, 0.0
    v = units.best_value
    lo = units.lo_steps.astype(float)
    hi = units.hi_steps.astype(float)
    openable = lo <= hi
    hi_eff = np.where(openable, hi, 0.0)
    # variables: k_0..k_{n-1}, y_0..y_{n-1}
    c = np.concatenate([-v, np.zeros(n)])
    idx = np.arange(n)
    rows = [
        coo_matrix((np.concatenate([np.ones(n), -lo]), (np.concatenate([idx, idx]), np.concatenate([idx, idx + n]))),
                   shape=(n, 2 * n)),  # k - lo y >= 0
        coo_matrix((np.concatenate([np.ones(n), -hi_eff]), (np.concatenate([idx, idx]), np.concatenate([idx, idx + n]))),
                   shape=(n, 2 * n)),  # k - hi y <= 0
        coo_matrix((units.weight.astype(float), (np.zeros(n, dtype=int), idx)), shape=(1, 2 * n)),
    ]
    lower: list[npt.NDArray[np.float64]] = [np.zeros(n), np.full(n, -np.inf), np.array([-np.inf])]
    upper: list[npt.NDArray[np.float64]] = [np.full(n, np.inf), np.zeros(n), np.array([float(units.budget_steps)])]
    if units.group_names:
        g_rows, g_cols, g_vals = [], [], []
        for u, groups in enumerate(units.unit_groups):
            for g, count in groups:
                g_rows.append(g)
                g_cols.append(u)
                g_vals.append(float(count))
        rows.append(coo_matrix((g_vals, (g_rows, g_cols)), shape=(len(units.group_names), 2 * n)))
        lower.append(np.full(len(units.group_names), -np.inf))
        upper.append(units.group_cap_steps.astype(float))
    matrix = vstack(rows).tocsr()
    constraint = LinearConstraint(matrix, np.concatenate(lower), np.concatenate(upper))
    bounds = Bounds(np.zeros(2 * n), np.concatenate([hi_eff, openable.astype(float)]))
    options: dict[str, float | bool] = {"disp": False, "mip_rel_gap": 0.0}
    if time_limit_s is not None:
        options["time_limit"] = time_limit_s
    res = milp(c, constraints=constraint, integrality=np.ones(2 * n), bounds=bounds, options=options)
    if res.x is None:
        raise SolverError(f"MILP found no solution: {res.message}")
    steps = np.rint(res.x[:n]).astype(np.int64)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    if res.status != 0:
        raise SolverError(f"MILP did not prove optimality ({res.message}); remaining gap {gap:.2e}")
    return steps, float(np.dot(v, steps)), gap


def solve_units(units: Units, *, time_limit_s: float | None = None) -> tuple[IntArray, float, str]:
    """Optimal steps for any units: closed form when it applies, else MILP. Returns ``(steps, objective, method)``."""
    if units.simple:
        lo = int(units.lo_steps[0]) if units.n else 0
        hi = int(units.hi_steps[0]) if units.n else 0
        if units.n == 0 or lo > hi:
            return np.zeros(units.n, dtype=np.int64), 0.0, "closed_form"
        steps, objective = solve_closed_form(units.best_value, lo, hi, units.budget_steps)
        return steps, objective, "closed_form"
    steps, objective, _ = solve_milp(units, time_limit_s=time_limit_s)
    return steps, objective, "milp"


def solve_exact(problem: Problem, *, time_limit_s: float | None = None) -> Allocation:
    """Certified optimum of ``problem`` (every unit at its best rate).

    Examples
    --------
    >>> from allocator.churn import ChurnCurves
    >>> from allocator.problem import Applicant, make_problem
    >>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
    >>> apps = [Applicant("E1", "A", 0.01), Applicant("E2", "B", 0.02), Applicant("E3", "D", 0.9)]
    >>> result = solve_exact(make_problem(apps, 1_500_000, curves))
    >>> [(ln.enterprise_id, ln.amount_yuan, ln.reasons) for ln in result.lines]
    [('E1', 1000000, ('lent', 'at_max_amount', 'rate_capped_by_churn')), ('E2', 500000, ('lent', 'rate_capped_by_churn', 'budget_exhausted')), ('E3', 0, ('rating_D',))]
    >>> result.gap
    0.0
    """
    start = time.perf_counter()
    units = build_units(problem)
    steps, _, method = solve_units(units, time_limit_s=time_limit_s)
    runtime = time.perf_counter() - start
    return assemble(problem, units, steps, units.best, solver="exact", optimum_yuan="self", runtime_s=runtime,
                    notes=(f"method={method}",))
