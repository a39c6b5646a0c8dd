"""Early-warning alerts in the backtest: the worker's rules over the as-of dates (issue 12).

Checked against counts derived independently from the backtest's own decisions: a threshold
alert per upward crossing of the default probability, a ``line_closed`` per line that went from
lent to nothing, nothing read from after an as-of date, and the report's files agreeing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from streams.alerts import AlertRules, count_by_rule
from streams.backtest.alerts import replay_alerts
from streams.backtest.report import write_report
from streams.features.vector import month_index
from tests.unit.backtest.test_run_report import _run


def test_threshold_alerts_fire_once_per_upward_crossing_and_closed_lines_once_per_closing() -> None:
    result = _run()
    decisions = [d.decision for d in result.base.dates]
    threshold = AlertRules().pd_threshold
    crossings: dict[str, int] = {}
    above: dict[str, bool] = {}
    closings: dict[str, int] = {}
    for d in decisions:
        for eid, s in d.scores.items():
            now_above = s.default_probability >= threshold
            if now_above and not above.get(eid, False):
                crossings[eid] = crossings.get(eid, 0) + 1
            above[eid] = now_above
        for line in d.changed:
            if line.previous_amount_yuan and line.previous_amount_yuan > 0 and line.amount_yuan <= 0:
                closings[line.enterprise_id] = closings.get(line.enterprise_id, 0) + 1
    got: dict[str, dict[str, int]] = {}
    for a in result.alerts:
        got.setdefault(a.rule, {})
        got[a.rule][a.subject] = got[a.rule].get(a.subject, 0) + 1
    assert crossings, "the test backtest has no enterprise over the threshold; it proves nothing"
    assert got.get("pd_threshold", {}) == crossings
    assert got.get("line_closed", {}) == closings
    assert not got.get("dlq_burst"), "the backtest replays validated events only"
    # each alert links back to the score event and is dated at its as-of date
    for a in result.alerts:
        if a.rule == "pd_threshold":
            assert a.as_of is not None and a.score_event_id and a.score_event_id.startswith(f"{a.subject}@{a.as_of}")
            assert a.raised_at.date() == a.as_of


def test_the_replay_reads_nothing_after_an_as_of_date() -> None:
    result = _run()
    decisions = [d.decision for d in result.base.dates]
    sales = result.base.replay.monthly_sales(decisions[-1].as_of)
    full = replay_alerts(decisions, sales)
    cut = decisions[len(decisions) // 2].as_of
    last_month = month_index(cut)  # months from the as-of month on are unknown at ``cut``
    known = {e: {m: v for m, v in months.items() if m < last_month} for e, months in sales.items()}
    early = replay_alerts([d for d in decisions if d.as_of <= cut], known)
    assert early, "no alert by the cut date; the test proves nothing"
    assert early == [a for a in full if a.as_of is not None and a.as_of <= cut]


def test_the_report_lists_the_alerts_and_counts_them_by_rule(tmp_path: Path) -> None:
    result = _run()
    paths = write_report(result, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    table = pd.read_csv(paths["alerts.csv"])
    assert summary["alerts"]["n"] == len(result.alerts) == len(table) > 0
    assert summary["alerts"]["by_rule"] == count_by_rule(result.alerts)
    assert table["rule"].value_counts().to_dict() == {k: v for k, v in count_by_rule(result.alerts).items() if v}
    assert "Early-warning alerts" in (tmp_path / "report.html").read_text(encoding="utf-8")
