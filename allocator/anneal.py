"""Simulated annealing over per-unit (amount, rate), paper 004 section 3.8.

Schedule (paper 004): start at ``t0 = 100``, multiply by ``alpha = 0.9`` after every
``moves_per_temperature = 100`` proposals, stop below ``t_end = 0.01`` (88 levels, 8 800
proposals). A proposal that breaks a constraint (budget, bounds, caps, move limits) is
rejected, as in the paper ("repeat step 2 if x1 does not satisfy the constraint").

Moves, on the units of :mod:`allocator.units` (enterprises, or segments under the segment policy):

* ``resize``: a new amount for one unit (a bound, open, close, jump within bounds, or a small
  step whose size is geometric with mean about 3 steps);
* ``rate``: the next or (half the time) a random candidate rate for one unit;
* ``transfer``: take steps from one lent unit (possibly closing it) and give the freed budget
  to another (possibly opening it), which is what moves the solution once the budget binds.
  The steps taken are, when the receiver is closed, half the time exactly what it needs to
  open at its lower bound; otherwise a small geometric number or a uniform one.

**Objective scaling.** Expected profit is in yuan, whose scale depends on the budget, so the
paper's temperatures would mean nothing on it directly. Before annealing, 200 proposals are
drawn from the initial state and the median profit loss ``d`` of the worsening ones is measured
(the median, not the mean: closing a large segment costs orders of magnitude more than a
typical move, and a mean would make the whole schedule a random walk);
the objective is then expressed in units of ``d / (t0 * ln(1 / acceptance_at_t0))`` yuan, so that
at ``t0`` a typical worsening move is accepted with probability ``acceptance_at_t0`` (0.8),
and at ``t_end = t0 / 10^4`` with probability ``0.8^(10^4)``, i.e. never: the schedule spans
from a near-random walk to a pure descent whatever the budget.

The start is the greedy solution by value per budget step (``init="greedy"``, default) or a
random feasible one (``init="random"``, as in the paper). The best state seen is returned, and
its gap to the exact optimum (:mod:`allocator.exact`) is reported when ``certify=True``.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import numpy.typing as npt

from allocator.exact import solve_units
from allocator.problem import Problem
from allocator.result import Allocation, TracePoint, assemble, total_profit_yuan
from allocator.units import Units, build_units

IntArray = npt.NDArray[np.int64]
Init = Literal["greedy", "random"]


class _State:
    """Mutable annealing state (kept private: the solver returns a frozen Allocation)."""

    def __init__(self, units: Units, steps: IntArray, rate_idx: IntArray) -> None:
        self.u = units
        self.k = [int(x) for x in steps]
        self.r = [int(x) for x in rate_idx]
        self.weight = [int(x) for x in units.weight]
        self.lo = [int(x) for x in units.lo_steps]
        self.hi = [int(x) for x in units.hi_steps]
        self.value = units.value
        self.n_rates = units.value.shape[1]
        self.groups = units.unit_groups
        self.cap = [int(x) for x in units.group_cap_steps]
        self.used = sum(w * k for w, k in zip(self.weight, self.k))
        self.group_use = [0] * len(self.cap)
        for u, k in enumerate(self.k):
            for g, count in self.groups[u]:
                self.group_use[g] += count * k
        self.objective = float(sum(k * float(self.value[u, r]) for u, (k, r) in enumerate(zip(self.k, self.r))))

    def val(self, u: int, k: int, r: int) -> float:
        return k * float(self.value[u, r]) if k else 0.0

    def allowed(self, u: int, k: int) -> bool:
        return k == 0 or self.lo[u] <= k <= self.hi[u]

    def fits(self, changes: list[tuple[int, int]]) -> bool:
        """Whether changing unit amounts as in ``changes`` [(unit, new k)] keeps budget and caps."""
        used = self.used
        for u, k in changes:
            used += self.weight[u] * (k - self.k[u])
        if used > self.u.budget_steps:
            return False
        if self.cap:
            delta: dict[int, int] = {}
            for u, k in changes:
                for g, count in self.groups[u]:
                    delta[g] = delta.get(g, 0) + count * (k - self.k[u])
            for g, d in delta.items():
                if d > 0 and self.group_use[g] + d > self.cap[g]:
                    return False
        return True

    def apply(self, u: int, k: int, r: int) -> None:
        old = self.k[u]
        self.objective += self.val(u, k, r) - self.val(u, old, self.r[u])
        self.used += self.weight[u] * (k - old)
        for g, count in self.groups[u]:
            self.group_use[g] += count * (k - old)
        self.k[u] = k
        self.r[u] = r


def greedy_steps(units: Units) -> IntArray:
    """Greedy start: units by value per budget step, each at its upper bound while the budget allows.

    Examples
    --------
    >>> from allocator.churn import ChurnCurves
    >>> from allocator.problem import Applicant, make_problem
    >>> curves = ChurnCurves(rates=(0.04, 0.15), churn_by_rating={"A": (0.0, 0.9), "B": (0.0, 0.9), "C": (0.0, 0.9)})
    >>> units = build_units(make_problem([Applicant("E1", "A", 0.01), Applicant("E2", "B", 0.02)], 1_500_000, curves))
    >>> greedy_steps(units).tolist()
    [100, 50]
    """
    state = _State(units, np.zeros(units.n, dtype=np.int64), units.best)
    order = np.argsort(-(units.best_value / np.maximum(units.weight, 1)), kind="stable")
    for u in order.tolist():
        lo, hi, w = state.lo[u], state.hi[u], state.weight[u]
        if lo > hi:
            continue
        room = (units.budget_steps - state.used) // w
        for g, count in state.groups[u]:
            room = min(room, (state.cap[g] - state.group_use[g]) // count)
        k = min(hi, room)
        if k >= lo:
            state.apply(u, k, state.r[u])
    return np.asarray(state.k, dtype=np.int64)


def random_steps(units: Units, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """A random feasible start (paper 004): units in random order, each opened with probability 1/2."""
    state = _State(units, np.zeros(units.n, dtype=np.int64), units.best)
    rate_idx = rng.integers(0, units.value.shape[1], size=units.n) if units.n else np.zeros(0, dtype=np.int64)
    for u in rng.permutation(units.n).tolist():
        lo, hi = state.lo[u], state.hi[u]
        if lo > hi or rng.random() < 0.5:
            continue
        k = int(rng.integers(lo, hi + 1))
        if state.fits([(u, k)]):
            state.apply(u, k, int(rate_idx[u]))
    return np.asarray(state.k, dtype=np.int64), np.asarray(rate_idx, dtype=np.int64)


def _small_step(rng: np.random.Generator, span: int) -> int:
    """A step count in [1, max(1, span)], geometric (mean about 3): small moves fine-tune near the optimum."""
    return int(min(max(1, span), rng.geometric(0.3)))


def _propose(state: _State, rng: np.random.Generator) -> list[tuple[int, int, int]] | None:
    """One proposal as [(unit, new k, new rate index)], or None when it breaks a constraint."""
    n = len(state.k)
    kind = rng.random()
    u = int(rng.integers(n))
    k, r, lo, hi = state.k[u], state.r[u], state.lo[u], state.hi[u]
    if kind < 0.4:  # resize
        if lo > hi:
            return None
        x = rng.random()
        if x < 0.2:  # a bound: with a linear objective the optimum has all but one unit at a bound
            new = hi if rng.random() < 0.75 else lo
        elif k == 0 or x < 0.4:
            new = int(rng.integers(lo, hi + 1))
        elif x < 0.5:
            new = 0
        else:
            d = _small_step(rng, hi - lo)
            new = k + d if rng.random() < 0.5 else k - d
            if new < lo:
                new = 0 if rng.random() < 0.5 else lo
            new = min(new, hi)
        if new == k or not state.allowed(u, new) or not state.fits([(u, new)]):
            return None
        return [(u, new, r)]
    if kind < 0.6:  # rate
        if state.n_rates < 2:
            return None
        if rng.random() < 0.5:  # a jump: the raw churn curve is not monotone, so profit in r has local maxima
            new_r = int(rng.integers(state.n_rates))
        else:
            new_r = r + (1 if rng.random() < 0.5 else -1)
        if new_r == r or not 0 <= new_r < state.n_rates:
            return None
        return [(u, k, new_r)]
    # transfer from u to v
    v = int(rng.integers(n))
    if v == u or k == 0:
        return None
    kv, lov, hiv = state.k[v], state.lo[v], state.hi[v]
    if lov > hiv or kv >= hiv:
        return None
    spare = state.u.budget_steps - state.used
    room_needed = lov * state.weight[v] - spare
    if kv == 0 and room_needed > 0 and rng.random() < 0.5:
        d = min(k, -(-room_needed // state.weight[u]))  # exactly what v needs to open at its lower bound
    elif rng.random() < 0.5:
        d = _small_step(rng, k)
    else:
        d = int(rng.integers(1, k + 1))
    new_u = k - d
    if 0 < new_u < lo:
        new_u = 0
    freed = k - new_u
    slack = state.u.budget_steps - state.used + state.weight[u] * freed
    give = min(hiv - kv, slack // state.weight[v])
    if state.cap:  # also the room left in v's concentration groups, counting what u frees there
        freed_in = dict(state.groups[u])
        for g, count in state.groups[v]:
            room = state.cap[g] - state.group_use[g] + freed_in.get(g, 0) * freed
            give = min(give, room // count)
    new_v = kv + give
    if give <= 0 or (kv == 0 and new_v < lov):
        return None
    if not state.allowed(u, new_u) or not state.fits([(u, new_u), (v, new_v)]):
        return None
    return [(u, new_u, r), (v, new_v, state.r[v])]


def _delta(state: _State, change: list[tuple[int, int, int]]) -> float:
    return sum(state.val(u, k, r) - state.val(u, state.k[u], state.r[u]) for u, k, r in change)


def anneal_units(units: Units, *, seed: int = 0, t0: float = 100.0, t_end: float = 0.01, alpha: float = 0.9,
                 moves_per_temperature: int = 100, init: Init = "greedy", acceptance_at_t0: float = 0.8,
                 ) -> tuple[IntArray, IntArray, float, tuple[TracePoint, ...]]:
    """Anneal the units; returns ``(steps, rate index, objective, trace)`` of the best state seen."""
    if not (t0 > t_end > 0 and 0 < alpha < 1 and moves_per_temperature > 0 and 0 < acceptance_at_t0 < 1):
        raise ValueError("need t0 > t_end > 0, 0 < alpha < 1, moves_per_temperature > 0, 0 < acceptance_at_t0 < 1")
    rng = np.random.default_rng(seed)
    if units.n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 0.0, ()
    if init == "greedy":
        steps0, rates0 = greedy_steps(units), units.best.copy()
    elif init == "random":
        steps0, rates0 = random_steps(units, rng)
    else:
        raise ValueError(f"init {init!r} must be 'greedy' or 'random'")
    state = _State(units, steps0, rates0)

    losses = []
    for _ in range(200):
        change = _propose(state, rng)
        if change is not None:
            d = _delta(state, change)
            if d < 0:
                losses.append(-d)
    typical = float(np.median(losses)) if losses else max(abs(state.objective), 1.0) * 1e-4
    unit_yuan = typical / (t0 * math.log(1.0 / acceptance_at_t0))

    best = state.objective
    undo: list[tuple[int, int, int]] = []  # (unit, old k, old r) since the best state
    trace: list[TracePoint] = []
    temperature = t0
    while temperature >= t_end:
        accepted = 0
        for _ in range(moves_per_temperature):
            change = _propose(state, rng)
            if change is None:
                continue
            d = _delta(state, change)
            if d >= 0 or rng.random() < math.exp(d / unit_yuan / temperature):
                for u, k, r in change:
                    undo.append((u, state.k[u], state.r[u]))
                    state.apply(u, k, r)
                accepted += 1
                if state.objective > best:
                    best = state.objective
                    undo.clear()
        trace.append(TracePoint(temperature, state.objective, best, accepted))
        temperature *= alpha
    for u, k, r in reversed(undo):
        state.apply(u, k, r)
    return np.asarray(state.k, dtype=np.int64), np.asarray(state.r, dtype=np.int64), state.objective, tuple(trace)


def solve_anneal(problem: Problem, *, seed: int = 0, t0: float = 100.0, t_end: float = 0.01, alpha: float = 0.9,
                 moves_per_temperature: int = 100, init: Init = "greedy", acceptance_at_t0: float = 0.8,
                 certify: bool = True) -> Allocation:
    """Simulated annealing (see module docstring); ``certify`` adds the exact optimum and the gap.

    Examples
    --------
    >>> from allocator.churn import ChurnCurves
    >>> from allocator.problem import Applicant, make_problem
    >>> curves = ChurnCurves(rates=(0.04, 0.1, 0.15), churn_by_rating={"A": (0.0, 0.5, 0.9), "B": (0.0, 0.5, 0.9), "C": (0.0, 0.5, 0.9)})
    >>> apps = [Applicant(f"E{i}", "ABC"[i % 3], 0.01 * (i % 4)) for i in range(12)]
    >>> a = solve_anneal(make_problem(apps, 5_000_000, curves), seed=1)
    >>> b = solve_anneal(make_problem(apps, 5_000_000, curves), seed=1)
    >>> a.lines == b.lines, a.total_amount_yuan <= 5_000_000, a.gap is not None and a.gap >= 0
    (True, True, True)
    """
    start = time.perf_counter()
    units = build_units(problem)
    steps, rate_idx, _, trace = anneal_units(units, seed=seed, t0=t0, t_end=t_end, alpha=alpha,
                                             moves_per_temperature=moves_per_temperature, init=init,
                                             acceptance_at_t0=acceptance_at_t0)
    runtime = time.perf_counter() - start
    optimum = None
    notes = [f"init={init}", f"moves_per_temperature={moves_per_temperature}"]
    if certify:
        exact_steps, _, method = solve_units(units)
        optimum = total_profit_yuan(problem, units, exact_steps, units.best)
        notes.append(f"optimum_method={method}")
    return assemble(problem, units, steps, rate_idx, solver="anneal", optimum_yuan=optimum, runtime_s=runtime,
                    trace=trace, seed=seed, notes=tuple(notes))
