"""The replay engine: point-in-time snapshots (no look-ahead), determinism, order checks."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.backtest.asof import parse_as_of
from streams.backtest.engine import allocate_snapshots, chunk_by_as_of, replay
from streams.features.fold import fold_all
from streams.features.vector import to_vector
from tests.unit.backtest.helpers import FeatureScorer, greedy_allocate, invoice, registry

IDS = ("E1", "E2", "E3")
START = dt.date(2018, 1, 1)


@st.composite
def event_streams(draw: st.DrawFn) -> list:
    n = draw(st.integers(1, 60))
    events = []
    for k in range(n):
        eid = draw(st.sampled_from(IDS))
        day = START + dt.timedelta(days=draw(st.integers(0, 800)))
        amount = draw(st.integers(-500, 50_000))
        direction = draw(st.sampled_from(["in", "out"]))
        status = draw(st.sampled_from(["valid", "valid", "void"]))
        events.append(invoice(eid, day, k, amount, direction, status, f"C{k % 4}"))
    events.sort(key=lambda e: e.issue_date)
    return events


@settings(max_examples=40, deadline=None)
@given(events=event_streams(), cut=st.integers(0, 800), chunk=st.integers(1, 7))
def test_a_snapshot_equals_a_replay_of_only_the_invoices_up_to_its_date(events: list, cut: int, chunk: int) -> None:
    as_of = START + dt.timedelta(days=cut)
    reg = registry(*IDS, ratings={"E1": "A"})
    full = replay(events, [as_of], reg, FeatureScorer(), chunk=chunk).snapshots[0]
    past = [e for e in events if e.issue_date <= as_of]
    only_past = replay(past, [as_of], reg, FeatureScorer(), chunk=chunk).snapshots[0]
    # the invoices dated after the as-of date changed nothing: features, scores
    assert full.enterprise_ids == only_past.enterprise_ids
    np.testing.assert_array_equal(full.numeric, only_past.numeric)
    assert full.scores == only_past.scores
    # and the features are the batch fold of exactly those invoices
    states = fold_all(past)
    for i, eid in enumerate(full.enterprise_ids):
        expected = to_vector(states[eid], as_of)
        got = dict(zip(expected, full.numeric[i], strict=True))
        assert got.keys() == expected.keys()
        assert all((np.isnan(a) and np.isnan(b)) or a == b for a, b in zip(got.values(), expected.values()))
    # lines decided on the snapshot are the same too
    a = allocate_snapshots([full], greedy_allocate, reg, budget_yuan=1e6, solver="t", bundle_version="v")
    b = allocate_snapshots([only_past], greedy_allocate, reg, budget_yuan=1e6, solver="t", bundle_version="v")
    assert a == b


def test_a_later_invoice_changes_later_snapshots_but_not_earlier_ones() -> None:
    reg = registry("E1")
    events = [invoice("E1", dt.date(2019, 1, 10), 1, 100), invoice("E1", dt.date(2019, 3, 10), 2, 900_000)]
    snaps = replay(events, [dt.date(2019, 2, 28), dt.date(2019, 3, 31)], reg, FeatureScorer()).snapshots
    early, late = (s.scores["E1"] for s in snaps)
    assert early.n_invoices == 1 and late.n_invoices == 2
    assert late.default_probability < early.default_probability


def test_replay_is_deterministic_and_stamps_event_time_not_the_wall_clock() -> None:
    reg = registry(*IDS)
    events = [invoice(e, dt.date(2019, m, 5), 10 * m + i, 1000 * m) for m in range(1, 7) for i, e in enumerate(IDS)]
    dates = parse_as_of("quarterly", events[0].issue_date, events[-1].issue_date)
    runs = []
    for _ in range(2):
        snaps = replay(events, dates, reg, FeatureScorer()).snapshots
        runs.append(allocate_snapshots(snaps, greedy_allocate, reg, budget_yuan=1e6, solver="t", bundle_version="v"))
    assert runs[0] == runs[1]
    first = runs[0][0]
    assert first.summary.decided_at == dt.datetime(2019, 3, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert all(line.as_of == first.as_of for line in first.lines.values())


def test_lines_chain_like_the_live_allocator() -> None:
    reg = registry("E1", "E2")
    events = [invoice("E1", dt.date(2019, 1, 5), 1, 100), invoice("E2", dt.date(2019, 1, 6), 2, 200),
              invoice("E2", dt.date(2019, 5, 6), 3, 5_000_000)]
    snaps = replay(events, [dt.date(2019, 3, 31), dt.date(2019, 6, 30)], reg, FeatureScorer()).snapshots
    d1, d2 = allocate_snapshots(snaps, greedy_allocate, reg, budget_yuan=500_000, solver="t", bundle_version="v")
    assert {e for e, line in d1.lines.items() if line.amount_yuan > 0} == {"E2"}
    # E2's sales grew further: it keeps the line, unchanged lines are not republished
    assert d2.lines["E2"].amount_yuan == 500_000
    assert all(line.enterprise_id != "E2" or line.change_reasons for line in d2.changed)


def test_snapshots_are_taken_for_dates_before_and_after_all_events() -> None:
    reg = registry("E1")
    events = [invoice("E1", dt.date(2019, 1, 10), 1)]
    snaps = replay(events, [dt.date(2018, 12, 31), dt.date(2020, 1, 1)], reg, FeatureScorer()).snapshots
    assert [len(s.scores) for s in snaps] == [0, 1]
    decisions = allocate_snapshots(snaps, greedy_allocate, reg, budget_yuan=1e6, solver="t", bundle_version="v")
    assert [d.as_of for d in decisions] == [dt.date(2020, 1, 1)]


def test_out_of_order_events_are_refused() -> None:
    days = [dt.date(2019, 1, 2), dt.date(2019, 1, 1)]
    with pytest.raises(ValueError, match="out of event-time order"):
        list(chunk_by_as_of(days, [], key=lambda d: d))


def test_blind_scores_hide_the_known_rating_from_the_scorer() -> None:
    reg = registry("E1", "E2", ratings={"E1": "D", "E2": "A"})
    events = [invoice("E1", dt.date(2019, 1, 10), 1, 900_000), invoice("E2", dt.date(2019, 1, 11), 2, 10)]
    snap = replay(events, [dt.date(2019, 1, 31)], reg, FeatureScorer(), blind_ids=["E1", "E9"]).snapshots[0]
    assert snap.scores["E1"].rating == "D" and snap.scores["E1"].rating_known
    assert set(snap.blind_scores) == {"E1"}
    assert snap.blind_scores["E1"].rating == "A" and not snap.blind_scores["E1"].rating_known
    assert snap.blind_scores["E1"].default_probability == snap.scores["E1"].default_probability


def test_redelivered_events_are_counted_as_duplicates() -> None:
    ev = invoice("E1", dt.date(2019, 1, 10), 1)
    result = replay([ev, ev], [dt.date(2019, 1, 31)], registry("E1"), FeatureScorer())
    assert (result.n_events, result.n_duplicates) == (1, 1)
