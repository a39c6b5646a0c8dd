"""Reasons where they are used: ``--reasons lines|all|none`` changes which rows are explained, never a decision."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from streams.backtest.asof import parse_as_of
from streams.backtest.columnar import fold_duckdb, score_columnar
from streams.backtest.engine import lines_needing_reasons
from streams.backtest.eventcache import table_of
from streams.backtest.report import write_report
from streams.backtest.run import BacktestConfig, BacktestResult, run_backtest
from streams.backtest.scenarios import Scenario, Shock
from tests.unit.backtest.helpers import FeatureScorer, greedy_allocate, invoice, registry

IDS = tuple(f"E{i}" for i in range(1, 10))
RATINGS = {"E1": "A", "E2": "B", "E3": "D", "E4": "C"}


def _events() -> list:
    events, k = [], 0
    for month in range(1, 19):
        day = dt.date(2018 + (month - 1) // 12, (month - 1) % 12 + 1, 12)
        for i, eid in enumerate(IDS):
            if i == 8 and month > 9:  # E9 stops invoicing: its line is cut later
                continue
            k += 1
            events.append(invoice(eid, day, k, 300 * (i + 1) * (month if i % 3 else 19 - month), "out"))
            k += 1
            events.append(invoice(eid, day, k, 100 * (i + 1), "in", counterparty=f"S{i % 2}"))
    return events


def _run(reasons: str, engine: str = "events", scenario: Scenario | None = None) -> tuple[BacktestResult, int]:
    events = _events()
    reg = registry(*IDS[:7], ratings=RATINGS)  # E8, E9 are not clients: scored, no credit offered
    scorer = FeatureScorer()
    dates = parse_as_of("quarterly", events[0].issue_date, events[-1].issue_date)
    replayer = None
    if engine == "columnar":
        fold = fold_duckdb(table_of(events), dates)

        def replayer(*, shocked: bool, score_transform: object, blind_ids: object, reasons: bool) -> object:
            return score_columnar(fold, reg, scorer, score_transform=score_transform, blind_ids=blind_ids,
                                  reasons=reasons, score_batch=5)

    result = run_backtest(events, dates, reg, scorer, greedy_allocate, {"E1": _outcome("E1"), "E3": _outcome("E3")},
                          lambda r, g: 0.2, BacktestConfig(budget_yuan=1_500_000), scenario=scenario,
                          industry_of={e: "construction" for e in IDS}, replayer=replayer,  # type: ignore[arg-type]
                          reasons=reasons)  # type: ignore[arg-type]
    return result, scorer.explained


def _outcome(eid: str) -> object:
    from streams.backtest.outcomes import Outcome

    return Outcome(eid, RATINGS[eid], RATINGS[eid] == "D")


def _without_factors(result: BacktestResult) -> list:
    """Every decision with the risk factors blanked: what must not depend on the reasons mode."""
    out = []
    for d in result.base.dates:
        lines = {e: ln.model_copy(update={"risk_factors": []}) for e, ln in d.decision.lines.items()}
        scores = {e: s.model_copy(update={"risk_factors": []}) for e, s in d.decision.scores.items()}
        out.append((d.row(), lines, scores, d.decision.summary))
    return out


@pytest.mark.parametrize("engine", ["events", "columnar"])
def test_lines_mode_explains_every_published_or_lent_line_exactly_as_all_does(engine: str) -> None:
    all_, n_all = _run("all", engine)
    lines, n_lines = _run("lines", engine)
    none, n_none = _run("none", engine)
    assert _without_factors(all_) == _without_factors(lines) == _without_factors(none)
    assert n_none == 0 and 0 < n_lines < n_all
    n_published = 0
    for a, b, c in zip(all_.base.dates, lines.base.dates, none.base.dates, strict=True):
        need = lines_needing_reasons(b.decision.lines, b.decision.changed)
        assert set(need) >= {ln.enterprise_id for ln in b.decision.changed}
        n_published += len(b.decision.changed)
        for e in need:
            # the double names the sales and rating it was given: these came from the same inputs
            assert b.decision.scores[e].risk_factors == a.decision.scores[e].risk_factors != []
            assert b.decision.lines[e].risk_factors == a.decision.lines[e].risk_factors != []
        for ln in b.decision.changed:  # what the worker would publish carries reasons, as there
            assert ln.risk_factors == a.decision.scores[ln.enterprise_id].risk_factors
        for e in set(b.decision.scores) - set(need):
            assert b.decision.scores[e].risk_factors == []
        assert all(s.risk_factors == [] for s in c.decision.scores.values())
        assert all(ln.risk_factors == [] for ln in c.decision.lines.values())
        assert all(s.risk_factors == [] for s in b.decision.blind_scores.values())
    assert n_published > len(IDS)  # later dates published changes too, not only the first lines


def test_no_row_of_lines_csv_with_a_line_lacks_its_reasons(tmp_path: Path) -> None:
    result, _ = _run("lines")
    write_report(result, tmp_path, {"reasons": "lines"})
    table = pd.read_csv(tmp_path / "lines.csv", keep_default_na=False)
    lent = table[table["amount_yuan"] > 0]
    assert len(lent) > 0 and (lent["risk_factors"] != "").all()
    unexplained = table[table["risk_factors"] == ""]
    assert len(unexplained) > 0 and (unexplained["amount_yuan"] == 0).all()


def test_a_score_only_scenario_explains_its_own_lines() -> None:
    shock = Scenario("risk", (Shock(("construction",), dt.date(2018, 8, 1), default_probability_multiplier=30.0),))
    base, _ = _run("all", scenario=shock)
    lines, _ = _run("lines", scenario=shock)
    assert base.shocked is not None and lines.shocked is not None
    for a, b in zip(base.shocked.dates, lines.shocked.dates, strict=True):
        for e in lines_needing_reasons(b.decision.lines, b.decision.changed):
            assert b.decision.lines[e].risk_factors == a.decision.lines[e].risk_factors != []


def test_an_unknown_reasons_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="reasons must be one of"):
        _run("some")
