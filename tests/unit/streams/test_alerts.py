"""Early-warning rules: each fires once per subject until it clears (no storms), on scores, lines, sales, DLQ."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.adapters.memory import InMemoryAlertStateStore, InMemoryFeatureStore
from streams.alerts import (AlertRules, ScoreView, WatchState, count_by_rule, evaluate_batch, evaluate_dead_letters,
                            evaluate_line, evaluate_score, evaluate_scores)
from streams.drift import DriftAlarm
from streams.events import RiskAlert
from streams.pipeline import Source, ingest
from tests.unit.streams.contracts import NOW, make_line, make_score

RULES = AlertRules(pd_threshold=0.5, pd_step=0.15, sales_drop=0.5, sales_min_yuan=1000.0, dlq_burst=5,
                   dlq_window_s=60.0)


def view(pd_: float, rating: str = "B", as_of: dt.date = dt.date(2019, 12, 31)) -> ScoreView:
    return ScoreView("E1", as_of, rating, pd_, f"E1@{as_of}@{pd_}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=60),
       st.lists(st.sampled_from("ABCD"), min_size=60, max_size=60))
def test_no_storm_threshold_alerts_alternate_with_clearing(pds: list[float], ratings: list[str]) -> None:
    """Between two pd_threshold alerts the probability went below the threshold; while it stays above, silence."""
    state: WatchState | None = None
    fired_at: list[int] = []
    downgrades: list[int] = []
    for i, p in enumerate(pds):
        state, alerts = evaluate_score(state, view(p, ratings[i]), rules=RULES, now=NOW)
        rules = [a.rule for a in alerts]
        assert len(rules) == len(set(rules)), "one alert per rule and subject at most"
        if "pd_threshold" in rules:
            fired_at.append(i)
        if "rating_downgrade" in rules:
            downgrades.append(i)
    for a, b in zip(fired_at, fired_at[1:], strict=False):
        assert any(p < RULES.pd_threshold for p in pds[a + 1 : b]), (a, b)
    for i in fired_at:
        assert pds[i] >= RULES.pd_threshold
    # a downgrade alert re-fires only after the rating came back to the one before the downgrade
    for a, b in zip(downgrades, downgrades[1:], strict=False):
        before = ratings[a - 1]
        assert any(r <= before for r in ratings[a + 1 : b]), (a, b, ratings[: b + 1])


def test_repeated_high_scores_raise_one_alert_until_cleared() -> None:
    state, alerts = evaluate_score(None, view(0.1, "B"), rules=RULES, now=NOW)
    assert alerts == []
    state, alerts = evaluate_score(state, view(0.8, "D"), rules=RULES, now=NOW)
    assert sorted(a.rule for a in alerts) == ["pd_jump", "pd_threshold", "rating_downgrade"]
    by_rule = {a.rule: a for a in alerts}
    assert by_rule["rating_downgrade"].label_before == "B" and by_rule["rating_downgrade"].label_after == "D"
    assert by_rule["pd_jump"].value_before == 0.1 and by_rule["pd_jump"].value_after == 0.8
    assert by_rule["pd_threshold"].score_event_id == "E1@2019-12-31@0.8"
    assert all(a.enterprise_id == "E1" and a.subject == "E1" for a in alerts)
    for _ in range(10):  # the worker rescores every micro-batch: no storm
        state, alerts = evaluate_score(state, view(0.85, "D"), rules=RULES, now=NOW)
        assert alerts == []
    state, alerts = evaluate_score(state, view(0.1, "B"), rules=RULES, now=NOW)  # everything clears
    assert alerts == [] and dict(state.open) == {}
    state, alerts = evaluate_score(state, view(0.8, "D"), rules=RULES, now=NOW)
    assert sorted(a.rule for a in alerts) == ["pd_jump", "pd_threshold", "rating_downgrade"]


def test_line_cut_then_closed_then_reopened() -> None:
    line = make_line("E1", 600_000)
    state, alerts = evaluate_line(None, line.model_copy(update={"previous_amount_yuan": None}), now=NOW)
    assert alerts == []  # a first line is no cut
    state, alerts = evaluate_line(state, line.model_copy(update={"amount_yuan": 400_000.0,
                                                                 "previous_amount_yuan": 600_000.0}), now=NOW)
    assert [(a.rule, a.value_before, a.value_after, a.line_event_id) for a in alerts] == [
        ("line_cut", 600_000.0, 400_000.0, "a1/E1")]
    state, alerts = evaluate_line(state, line.model_copy(update={"amount_yuan": 0.0,
                                                                 "previous_amount_yuan": 400_000.0}), now=NOW)
    assert [a.rule for a in alerts] == ["line_closed"] and alerts[0].severity == "critical"
    state, alerts = evaluate_line(state, line.model_copy(update={"amount_yuan": 0.0,
                                                                 "previous_amount_yuan": 0.0}), now=NOW)
    assert alerts == []
    state, _ = evaluate_line(state, line.model_copy(update={"amount_yuan": 300_000.0, "previous_amount_yuan": 0.0}),
                             now=NOW)
    assert dict(state.open) == {}


def test_sales_drop_reads_complete_months_of_the_feature_store() -> None:
    features = InMemoryFeatureStore()
    features.apply("E1", "e1", {"m:201910:amt_out": 500_000_00})
    features.apply("E1", "e2", {"m:201911:amt_out": 100_000_00})
    features.apply("E1", "e3", {"m:201912:amt_out": 1_00})  # the running month: not read on 2019-12-31
    states = InMemoryAlertStateStore()
    score = make_score("E1")  # as of 2019-12-31
    new, alerts = evaluate_batch(states, features, [score], (), (), rules=RULES, now=NOW)
    assert [(a.rule, a.value_before, a.value_after) for a in alerts] == [("sales_drop", 500_000.0, 100_000.0)]
    assert alerts[0].reasons == ["sales_2019-11_fell_80%_month_on_month"]
    states.put_many(new)
    _, again = evaluate_batch(states, features, [score], (), (), rules=RULES, now=NOW)
    assert again == []


def test_dead_letter_burst_per_producer_and_window() -> None:
    def bad(key: str, n: int, at: dt.datetime) -> list:
        return [ingest(b"{", Source("invoices", 0, i, key), at) for i in range(n)]

    t0 = dt.datetime(2020, 1, 1, 12, 0, 5, tzinfo=dt.UTC)
    state, alerts = evaluate_dead_letters(None, "E7", bad("E7", 4, t0), rules=RULES, now=t0)
    assert alerts == []
    state, alerts = evaluate_dead_letters(state, "E7", bad("E7", 3, t0), rules=RULES, now=t0)
    assert [(a.rule, a.subject, a.value_after) for a in alerts] == [("dlq_burst", "producer:E7", 5.0)]
    state, alerts = evaluate_dead_letters(state, "E7", bad("E7", 50, t0), rules=RULES, now=t0)
    assert alerts == []  # the same burst: one alert
    later = t0 + dt.timedelta(minutes=5)  # quiet windows in between: cleared, a new burst alerts again
    state, alerts = evaluate_dead_letters(state, "E7", bad("E7", 5, later), rules=RULES, now=later)
    assert [a.rule for a in alerts] == ["dlq_burst"]


def test_batch_evaluation_covers_drift_and_dlq_and_counts_by_rule() -> None:
    states = InMemoryAlertStateStore()
    now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    dead = [ingest(b"", Source("invoices", 0, i, "E9"), now) for i in range(6)]
    alarm = DriftAlarm("default_probability", "adwin", dt.date(2019, 12, 3), 0.4, 300)
    new, alerts = evaluate_batch(states, InMemoryFeatureStore(), [], dead, [alarm, alarm], rules=RULES, now=now)
    counts = count_by_rule(alerts)
    assert counts["dlq_burst"] == 1 and counts["drift"] == 1 and sum(counts.values()) == 2
    assert {a.subject for a in alerts} == {"producer:E9", "portfolio:default_probability"}
    for a in alerts:  # every alert survives the wire
        assert RiskAlert.model_validate_json(a.model_dump_json()) == a


def test_scores_in_one_batch_chain_their_state() -> None:
    s1, s2 = make_score("E1", "B", 0.1), make_score("E1", "D", 0.9)
    new, alerts = evaluate_scores({}, [s1, s2], {}, rules=RULES, now=NOW)
    assert sorted(a.rule for a in alerts) == ["pd_jump", "pd_threshold", "rating_downgrade"]
    assert new["score:E1"].last["pd"] == 0.9


def test_watch_state_codec_rejects_junk_as_fresh() -> None:
    assert WatchState.from_json(b"not json") is None
    assert WatchState.from_json(None) is None
    s = WatchState({"pd_jump": 0.2}, {"pd": 0.5})
    assert WatchState.from_json(s.to_json()) == s
