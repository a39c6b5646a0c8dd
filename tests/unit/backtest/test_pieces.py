"""As-of parsing, outcome arithmetic by hand, scenario files, drift monitors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from streams.backtest.asof import parse_as_of, period_ends
from streams.backtest.outcomes import LineView, Outcome, first_flag_dates, flat_allocation, realised_profit, roc_ks
from streams.backtest.scenarios import load_scenario, parse_scenario
from streams.drift import DriftMonitor, psi

FIRST, LAST = dt.date(2016, 10, 4), dt.date(2020, 2, 21)
EXAMPLES = Path(__file__).resolve().parents[3] / "streams" / "backtest" / "examples"


def test_quarterly_and_monthly_cover_the_data_and_end_on_its_last_day() -> None:
    q = parse_as_of("quarterly", FIRST, LAST)
    assert q[0] == dt.date(2016, 12, 31) and q[-2:] == (dt.date(2019, 12, 31), LAST)
    assert len(q) == 14 and all(d.month in (3, 6, 9, 12) for d in q[:-1])
    m = parse_as_of(" Monthly ", FIRST, LAST)
    assert m[0] == dt.date(2016, 10, 31) and m[-1] == LAST and len(m) == 41
    assert period_ends(dt.date(2019, 1, 1), dt.date(2019, 3, 31), 3) == [dt.date(2019, 3, 31)]


def test_explicit_dates_are_sorted_and_deduplicated() -> None:
    assert parse_as_of("2019-12-31,2019-06-30,2019-12-31", FIRST, LAST) == (dt.date(2019, 6, 30), dt.date(2019, 12, 31))
    with pytest.raises(ValueError, match="no as-of date"):
        parse_as_of(" , ", FIRST, LAST)
    with pytest.raises(ValueError, match="bad as-of date 'yearly'"):
        parse_as_of("yearly", FIRST, LAST)


def test_realised_profit_by_hand() -> None:
    # churn 10% for A at 5%, 30% for C at 8%; LGD 0.5
    churn = {("A", 0.05): 0.1, ("C", 0.08): 0.3}
    lines = [LineView("E1", 1_000_000, 0.05, "A"),  # repaid: 0.9 * 0.05 * 1e6 = 45 000
             LineView("E2", 300_000, 0.08, "C"),  # defaulted: -0.7 * 0.5 * 3e5 = -105 000
             LineView("E3", 0, 0.0, "B"),  # no line
             LineView("E4", 200_000, 0.05, "A")]  # unlabeled
    outcomes = {"E1": Outcome("E1", "A", False), "E2": Outcome("E2", "C", True), "E3": Outcome("E3", "B", True)}
    r = realised_profit(lines, outcomes, churn=lambda rate, g: churn[(g, rate)], lgd=0.5)
    assert r.interest_yuan == pytest.approx(45_000)
    assert r.loss_yuan == pytest.approx(105_000)
    assert r.profit_yuan == pytest.approx(-60_000)
    assert (r.lent_labeled_yuan, r.lent_unlabeled_yuan, r.n_lines_labeled, r.n_lines_defaulted) == (1_300_000, 200_000, 2, 1)
    # a churn shock of x3 on E2 leaves it retention 1 - 0.9 = 0.1
    shocked = realised_profit(lines, outcomes, churn=lambda rate, g: churn[(g, rate)], lgd=0.5,
                              churn_multiplier=lambda e: 3.0 if e == "E2" else 1.0)
    assert shocked.loss_yuan == pytest.approx(0.1 * 0.5 * 300_000)


def test_flat_baseline_splits_the_budget_and_never_lends_to_d() -> None:
    cands = [(f"E{i}", "D" if i % 3 == 0 else "B") for i in range(1, 31)]
    lines = flat_allocation(cands, 10_000_000, rate=0.06)
    assert len(lines) == 20 and {line.amount_yuan for line in lines} == {500_000}
    assert all(line.rate == 0.06 and line.rating == "B" for line in lines)
    assert [line.amount_yuan for line in flat_allocation(cands[:2], 50_000_000)] == [1_000_000, 1_000_000]
    assert flat_allocation(cands, 50_000) == []


def test_roc_ks_and_first_flags() -> None:
    perfect = roc_ks([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
    assert (perfect.auc, perfect.ks) == (1.0, 1.0)
    assert np.isnan(roc_ks([0.1, 0.2], [False, False]).auc)
    h = {dt.date(2019, 6, 30): {"E1": 0.5}, dt.date(2019, 3, 31): {"E1": 0.49}}
    assert first_flag_dates(h, {"E1": Outcome("E1", "D", True)}, 0.5) == {"E1": dt.date(2019, 6, 30)}


def test_example_scenarios_parse_and_bad_ones_say_why() -> None:
    names = sorted(load_scenario(p).name for p in EXAMPLES.glob("*.json"))
    assert names == ["covid-2020", "manufacturing-slump-2019"]
    with pytest.raises(ValueError, match="unknown industries"):
        parse_scenario('{"name": "x", "shocks": [{"industries": ["mining"]}]}')
    with pytest.raises(ValueError, match="sales_multiplier"):
        parse_scenario('{"name": "x", "shocks": [{"industries": ["*"], "sales_multiplier": -1}]}')
    with pytest.raises(ValueError, match="invalid scenario"):
        parse_scenario('{"name": "x", "shocks": [], "colour": 1}')
    with pytest.raises(ValueError, match="cannot read scenario file"):
        load_scenario(EXAMPLES / "missing.json")


def test_overlapping_shocks_compound() -> None:
    s = parse_scenario('{"name": "x", "shocks": [{"industries": ["*"], "default_probability_multiplier": 2},'
                       ' {"industries": ["construction"], "from": "2019-01-01", "default_probability_multiplier": 3}]}')
    assert s.pd_multiplier("construction", dt.date(2019, 2, 1)) == 6.0
    assert s.pd_multiplier("construction", dt.date(2018, 2, 1)) == 2.0
    assert s.pd_multiplier("manufacturing", dt.date(2019, 2, 1)) == 2.0
    assert not s.changes_events


def test_psi_is_zero_on_identical_samples_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(1)
    ref = rng.lognormal(10, 2, 400)
    shifts = [psi(ref, ref * f) for f in (1.0, 1.5, 3.0, 10.0)]
    assert shifts[0] == 0.0 and shifts == sorted(shifts) and shifts[-1] > 0.25
    assert np.isnan(psi([], [1.0]))


def test_drift_monitor_uses_event_time_and_is_deterministic() -> None:
    series = [10.0] * 24 + [4.0] * 12
    runs = []
    for _ in range(2):
        m = DriftMonitor("E1", "page_hinkley", min_instances=6, threshold=20.0)
        runs.append([a.t for t, v in enumerate(series) if (a := m.update(v, 201900 + t)) is not None])
    assert runs[0] == runs[1] and runs[0] and runs[0][0] >= 201924
    quiet = DriftMonitor("E2", "page_hinkley", min_instances=6, threshold=20.0)
    assert all(quiet.update(10.0, t) is None for t in range(36))
    assert quiet.update(float("nan"), 99) is None and quiet.n_seen == 36
    with pytest.raises(ValueError, match="unknown detector"):
        DriftMonitor("x", "cusum")  # type: ignore[arg-type]
