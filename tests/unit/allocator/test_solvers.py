"""Invariants of the three solvers, exact vs brute force, exact vs annealing (hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator import Allocation, Applicant, Problem, allocate, make_problem, solve_anneal, solve_exact
from allocator.exact import solve_closed_form, solve_milp
from allocator.units import build_units
from tests.unit.allocator.strategies import SMALL_CURVES, applicant_lists, real_curves

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CURVES = real_curves()
REL = 1e-9  # floating-point summation noise between two solutions of equal value


def check_invariants(problem: Problem, result: Allocation) -> None:
    c = problem.constraints
    amounts = np.array([ln.amount_yuan for ln in result.lines])
    assert len(result.lines) == len(problem.applicants)
    assert amounts.sum() <= c.budget_yuan + 1e-6
    assert result.total_amount_yuan == amounts.sum()
    lent = amounts > 0
    assert np.all((amounts[lent] >= c.min_loan_yuan) & (amounts[lent] <= c.max_loan_yuan))
    assert np.all(amounts % c.step_yuan == 0)
    for app, ln in zip(problem.applicants, result.lines):
        assert ln.enterprise_id == app.enterprise_id
        if app.rating == "D":
            assert ln.amount_yuan == 0 and ln.reasons == ("rating_D",)
        if ln.amount_yuan > 0:
            assert c.rate_min - 1e-12 <= ln.rate <= c.rate_max + 1e-12
            assert "lent" in ln.reasons
            if c.rate_grid == "observed":
                assert min(abs(ln.rate - r) for r in problem.churn.rates) < 1e-12
        else:
            assert ln.rate == 0.0 and ln.expected_profit_yuan == 0.0
    assert result.expected_profit_yuan == pytest.approx(sum(ln.expected_profit_yuan for ln in result.lines))


budgets = st.sampled_from([0, 50_000, 100_000, 130_000, 1_000_000, 2_350_000, 7_000_000, 30_000_000])


@FAST
@given(applicant_lists(), budgets, st.sampled_from(["observed", "continuous"]))
def test_exact_invariants_and_only_profitable_lines(apps: list[Applicant], budget: int, grid: str) -> None:
    problem = make_problem(apps, budget, CURVES, rate_grid=grid)
    result = solve_exact(problem)
    check_invariants(problem, result)
    assert result.gap == 0.0
    for ln in result.lines:
        if ln.amount_yuan > 0:
            assert ln.expected_profit_yuan > 0


@FAST
@given(applicant_lists(max_size=25), budgets, st.integers(0, 2**31 - 1), st.sampled_from(["enterprise", "segment"]),
       st.sampled_from(["observed", "continuous"]))
def test_anneal_invariants_never_beats_exact_and_is_seeded(apps: list[Applicant], budget: int, seed: int,
                                                           policy: str, grid: str) -> None:
    problem = make_problem(apps, budget, CURVES, policy=policy, rate_grid=grid)  # type: ignore[arg-type]
    a = solve_anneal(problem, seed=seed, moves_per_temperature=20)
    check_invariants(problem, a)
    exact = solve_exact(problem)
    assert a.optimum_yuan == pytest.approx(exact.expected_profit_yuan, rel=REL, abs=1e-6)
    assert a.expected_profit_yuan <= exact.expected_profit_yuan + REL * abs(exact.expected_profit_yuan) + 1e-6
    assert a.gap is not None and a.gap >= -REL
    b = solve_anneal(problem, seed=seed, moves_per_temperature=20)
    assert a.lines == b.lines and a.trace == b.trace


@FAST
@given(applicant_lists(max_size=25), budgets, st.integers(0, 1000),
       st.sampled_from([(0.3, None), (None, 0.4), (0.5, 0.5)]))
def test_caps_hold_and_exact_milp_dominates_anneal(apps: list[Applicant], budget: int, seed: int,
                                                    caps: tuple[float | None, float | None]) -> None:
    problem = make_problem(apps, budget, CURVES, segment_cap_share=caps[0], industry_cap_share=caps[1])
    exact = solve_exact(problem)
    anneal = solve_anneal(problem, seed=seed, moves_per_temperature=30)
    for result in (exact, anneal):
        check_invariants(problem, result)
        for attr, share in (("segment", caps[0]), ("industry", caps[1])):
            if share is None:
                continue
            totals: dict[str, int] = {}
            for app, ln in zip(apps, result.lines):
                totals[getattr(app, attr)] = totals.get(getattr(app, attr), 0) + ln.amount_yuan
            assert max(totals.values()) <= share * budget + 1e-6
    assert anneal.expected_profit_yuan <= exact.expected_profit_yuan + REL * abs(exact.expected_profit_yuan) + 1e-6


@FAST
@given(applicant_lists(max_size=20), st.integers(0, 100))
def test_rules_invariants(apps: list[Applicant], seed: int) -> None:
    budget = 1_000_000 * (seed % 7) + 130_000
    problem = make_problem(apps, budget, CURVES)
    result = allocate(problem, "rules")
    check_invariants(problem, result)
    rates = {"A": 0.0545, "B": 0.0585, "C": 0.0625}
    for app, ln in zip(apps, result.lines):
        if ln.amount_yuan > 0:
            assert ln.rate == rates[app.rating]


def brute_force(problem: Problem) -> float:
    """Best expected profit by enumerating every (amount, rate) of every enterprise."""
    c = problem.constraints
    amounts = [0] + list(range(c.min_loan_yuan, c.max_loan_yuan + 1, c.step_yuan))
    rates = [r for r in problem.churn.rates if c.rate_min <= r <= c.rate_max]
    options = []
    for app in problem.applicants:
        opts = [(0, 0.0)]
        if app.rating != "D":
            for z in amounts[1:]:
                for r in rates:
                    w = problem.churn.retention(r, app.rating)
                    opts.append((z, w * (r * (1 - app.default_probability) - c.lgd * app.default_probability) * z))
        options.append(opts)
    best = 0.0
    for combo in itertools.product(*options):
        if sum(z for z, _ in combo) <= c.budget_yuan:
            best = max(best, sum(v for _, v in combo))
    return best


@settings(max_examples=60, deadline=None)
@given(applicant_lists(max_size=3), st.sampled_from([0, 100_000, 250_000, 300_000, 450_000, 600_000, 2_000_000]))
def test_exact_equals_brute_force_on_tiny_instances(apps: list[Applicant], budget: int) -> None:
    problem = make_problem(apps, budget, SMALL_CURVES, min_loan_yuan=100_000, max_loan_yuan=300_000,
                           step_yuan=50_000, rate_max=0.15)
    assert solve_exact(problem).expected_profit_yuan == pytest.approx(brute_force(problem), rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10.0), min_size=1, max_size=40), st.integers(1, 5), st.integers(0, 30),
       st.integers(0, 400))
def test_closed_form_equals_milp(values: list[float], lo: int, span: int, budget: int) -> None:
    apps = [Applicant(f"E{i}", "A", 0.0) for i in range(len(values))]
    units = build_units(make_problem(apps, budget * 10_000, SMALL_CURVES))
    units = type(units)(**{**{f: getattr(units, f) for f in units.__slots__},  # same units, our values and bounds
                           "value": np.asarray(values)[:, None], "best": np.zeros(len(values), dtype=np.int64),
                           "rates": np.full((len(values), 1), 0.04),
                           "lo_steps": np.full(len(values), lo), "hi_steps": np.full(len(values), lo + span),
                           "budget_steps": budget})
    steps, objective = solve_closed_form(values, lo, lo + span, budget)
    milp_steps, milp_objective, _ = solve_milp(units)
    assert objective == pytest.approx(milp_objective, rel=1e-9, abs=1e-9)
    assert np.dot(steps, np.ones_like(steps)) <= budget
    assert np.all((steps == 0) | ((steps >= lo) & (steps <= lo + span)))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from("ABC"), st.floats(0.0, 0.3), st.floats(0.0, 1.0))
def test_continuous_best_rate_beats_a_dense_grid(rating: str, p: float, lgd: float) -> None:
    problem = make_problem([Applicant("E1", rating, p)], 1_000_000, CURVES, rate_grid="continuous", lgd=lgd)
    units = build_units(problem)
    dense = np.linspace(0.04, 0.15, 20_001)
    best_dense = float(np.max(CURVES.retention_table(dense)["ABC".index(rating)] * (dense * (1 - p) - lgd * p)))
    if units.n == 0:
        assert best_dense <= 1e-12
    else:
        best = units.best_value[0] / problem.constraints.step_yuan
        assert best >= best_dense - 1e-12
        assert best <= best_dense + 1e-6  # the dense grid is within 5.5e-6 of any rate


def test_segment_policy_gives_one_line_per_segment() -> None:
    apps = [Applicant(f"E{i}", "ABCD"[i % 4], 0.01 * (i % 5), segment=f"s{i % 3}") for i in range(30)]
    problem = make_problem(apps, 12_000_000, CURVES, policy="segment")
    for result in (solve_exact(problem), solve_anneal(problem, seed=3)):
        check_invariants(problem, result)
        by_segment: dict[str, set[tuple[int, float]]] = {}
        for app, ln in zip(apps, result.lines):
            if app.rating != "D":
                by_segment.setdefault(app.segment, set()).add((ln.amount_yuan, ln.rate))
        assert all(len(v) == 1 for v in by_segment.values())
    assert solve_anneal(problem, seed=3).gap == pytest.approx(0.0, abs=1e-9)


def test_move_cap_holds_and_closing_is_allowed() -> None:
    apps = [Applicant("E1", "A", 0.01), Applicant("E2", "A", 0.02), Applicant("E3", "D", 0.9)]
    previous = {"E1": 300_000, "E2": 800_000, "E3": 500_000}
    problem = make_problem(apps, 3_000_000, CURVES, max_move_yuan=200_000, previous_amount_yuan=previous)
    for result in (solve_exact(problem), solve_anneal(problem, seed=0)):
        lines = {ln.enterprise_id: ln for ln in result.lines}
        assert lines["E1"].amount_yuan == 500_000 and "move_capped" in lines["E1"].reasons
        assert lines["E2"].amount_yuan == 1_000_000
        assert lines["E3"].amount_yuan == 0  # D closes whatever the cap


def test_exact_handles_100k_enterprises() -> None:
    """Correct at scale; how fast is scripts/bench_allocator.py's job (a timed assert flaked on 2 shared cores)."""
    rng = np.random.default_rng(0)
    apps = [Applicant(f"S{i}", "ABCD"[i % 4], float(p)) for i, p in enumerate(rng.beta(1, 20, 100_000))]
    problem = make_problem(apps, 500_000_000, CURVES)
    result = solve_exact(problem)
    check_invariants(problem, result)
    assert result.total_amount_yuan == 500_000_000


@pytest.mark.parametrize("budget", [50_000_000, 70_000_000, 100_000_000])
def test_anneal_within_a_thousandth_on_the_real_labeled(budget: int) -> None:
    """The 123 labeled, default probability = smoothed default rate of the rating (a model-free proxy)."""
    import pandas as pd

    from tests.unit.allocator.strategies import CHURN_CSV

    ent = pd.read_csv(CHURN_CSV.parent / "enterprises.csv")
    lab = ent[ent["labeled"] == 1]
    stats = lab.groupby("rating")["defaulted"].agg(["sum", "count"])
    proxy = {r: (s + 0.5) / (c + 1) for r, (s, c) in stats.iterrows()}
    apps = [Applicant(e, r, float(proxy[r])) for e, r in zip(lab["enterprise_id"], lab["rating"])]
    problem = make_problem(apps, budget, CURVES)
    result = solve_anneal(problem, seed=0)
    check_invariants(problem, result)
    assert result.gap is not None and result.gap <= 1e-3
