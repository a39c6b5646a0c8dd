"""The columnar engine equals the streaming fold: counters, feature vectors, sequences, snapshots and lines."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.backtest.columnar import counters_of, fold_duckdb, nan_equal, score_columnar, walk_states
from streams.backtest.engine import allocate_snapshots, replay
from streams.backtest.eventcache import table_of
from streams.features.fold import fold_all
from streams.features.vector import WINDOW_MONTHS, month_index, to_sequence, to_vector
from tests.unit.backtest.helpers import FeatureScorer, greedy_allocate, invoice, registry

IDS = ("E1", "E2", "E3", "E4")
START = dt.date(2016, 1, 1)


@st.composite
def event_streams(draw: st.DrawFn) -> list:
    n = draw(st.integers(1, 80))
    events = []
    for k in range(n):
        eid = draw(st.sampled_from(IDS))
        day = START + dt.timedelta(days=draw(st.integers(0, 1600)))
        amount = draw(st.sampled_from([0, -1, 1])) * draw(st.integers(0, 80_000))
        direction = draw(st.sampled_from(["in", "out"]))
        status = draw(st.sampled_from(["valid", "valid", "void"]))
        events.append(invoice(eid, day, k, amount, direction, status, f"C{draw(st.integers(0, 5))}"))
    # redeliveries: a copy of an event id folds once
    for _ in range(draw(st.integers(0, 5))):
        events.append(events[draw(st.integers(0, n - 1))])
    events.sort(key=lambda e: e.issue_date)
    return events


def _m_counters(counters: dict[str, int], as_of: dt.date) -> dict[str, int]:
    """The fold's nonzero monthly counters within the 36-month window ending at the as-of month."""
    end = month_index(as_of)
    out = {}
    for key, value in counters.items():
        if key.startswith("m:") and value:
            month = int(key[2:6]) * 12 + int(key[6:8]) - 1
            if end - WINDOW_MONTHS < month <= end:
                out[key] = value
    return out


@settings(max_examples=60, deadline=None)
@given(events=event_streams(), cuts=st.lists(st.integers(-30, 1700), min_size=1, max_size=6))
def test_states_as_of_every_date_equal_the_fold_of_the_invoices_up_to_it(events: list, cuts: list[int]) -> None:
    dates = sorted({START + dt.timedelta(days=c) for c in cuts})
    fold = fold_duckdb(table_of(events), dates)
    assert fold.n_duplicates == len(events) - len({e.event_id for e in events})
    seen: dict[dt.date, set[str]] = {d: set() for d in dates}
    for st_ in walk_states(fold, enterprise_chunk=3):
        states = fold_all(e for e in events if e.issue_date <= st_.as_of)
        assert st_.n_events == sum(s.n_events for s in states.values())
        for i, eid in enumerate(st_.enterprise_ids):
            seen[st_.as_of].add(eid)
            state = states[eid]
            # the counters, to the fen
            assert counters_of(st_, i) == _m_counters(state.counters, st_.as_of)
            cp = {d: sum(1 for k, v in state.counterparties.items() if k.startswith(f"cp:{d}:") and v > 0)
                  for d in ("in", "out")}
            cpa = {d: max([v for k, v in state.counterparties.items() if k.startswith(f"cpa:{d}:")], default=0)
                   for d in ("in", "out")}
            assert list(st_.arrays.cp_count[i]) == [cp["in"], cp["out"]]
            assert list(st_.arrays.cpa_max[i]) == [cpa["in"], cpa["out"]]
            # the feature vector and the monthly sequence, bit for bit
            from streams.features.vector import features_from_arrays, sequences_from_window

            row = features_from_arrays(st_.arrays)[i]
            expected = to_vector(state, st_.as_of)
            assert nan_equal(dict(zip(expected, row.tolist(), strict=True)), expected)
            np.testing.assert_array_equal(sequences_from_window(st_.arrays.window)[i], to_sequence(state, st_.as_of))
    for as_of in dates:  # every enterprise with an invoice by the date, and no other
        assert seen[as_of] == {e.enterprise_id for e in events if e.issue_date <= as_of}


@settings(max_examples=25, deadline=None)
@given(events=event_streams(), cuts=st.lists(st.integers(0, 1700), min_size=1, max_size=4))
def test_snapshots_and_lines_equal_the_event_replay(events: list, cuts: list[int]) -> None:
    dates = sorted({START + dt.timedelta(days=c) for c in cuts})
    reg = registry(*IDS, ratings={"E1": "A", "E2": "D"})
    old = replay(events, dates, reg, FeatureScorer(), blind_ids=("E1", "E2"))
    new = score_columnar(fold_duckdb(table_of(events), dates), reg, FeatureScorer(), blind_ids=("E1", "E2"),
                         enterprise_chunk=2, score_batch=3)
    assert new.n_events == old.n_events and new.n_duplicates == old.n_duplicates
    for a, b in zip(old.snapshots, new.snapshots, strict=True):
        assert (a.as_of, a.enterprise_ids, a.n_events) == (b.as_of, b.enterprise_ids, b.n_events)
        np.testing.assert_array_equal(a.numeric, b.numeric)
        assert a.scores == b.scores
        assert a.blind_scores == b.blind_scores
    last = dates[-1]
    assert old.monthly_sales(last) == {e: m for e, m in new.monthly_sales(last).items()} | {
        e: {} for e in old.monthly_sales(last) if e not in new.monthly_sales(last)}
    kw = {"budget_yuan": 2e6, "solver": "t", "bundle_version": "v"}
    assert (allocate_snapshots(old.snapshots, greedy_allocate, reg, **kw)
            == allocate_snapshots(new.snapshots, greedy_allocate, reg, **kw))


def test_bad_rows_of_a_user_table_are_counted_not_folded() -> None:
    good = table_of([invoice("E1", dt.date(2019, 1, 5), 1, 100)])
    bad = pa.table({
        "event_id": ["b1", "b2", "b3"], "enterprise_id": ["E1", "E1", "E1"], "direction": ["sideways", "in", "in"],
        "invoice_no": ["1", "2", "3"], "counterparty_id": ["C", "C", "C"], "amount": ["1.00", "abc", "1.001"],
        "tax": ["0", "0", "0"], "total": ["1.00", "1.00", "1.00"], "status": ["valid", "valid", "valid"],
        "produced_at": [""] * 3, "issue_date": [dt.date(2019, 1, 6)] * 3, "enterprise_name": [None] * 3,
    }).cast(good.schema)
    fold = fold_duckdb(pa.concat_tables([good, bad]), [dt.date(2019, 12, 31)])
    assert (fold.n_rows, fold.n_rejected, fold.n_events) == (4, 3, 1)


def test_a_date_before_any_invoice_has_no_enterprise() -> None:
    events = [invoice("E1", dt.date(2019, 3, 1), 1, 100)]
    out = score_columnar(fold_duckdb(table_of(events), [dt.date(2019, 1, 1), dt.date(2019, 3, 1)]),
                         registry("E1"), FeatureScorer())
    assert [s.enterprise_ids for s in out.snapshots] == [(), ("E1",)]
    assert [s.n_events for s in out.snapshots] == [0, 1]


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_the_chunk_size_changes_nothing(chunk: int) -> None:
    events = [invoice(e, dt.date(2018, m, 3), k, 100 * k, "out" if k % 2 else "in") for k, (e, m) in
              enumerate((e, m) for e in IDS for m in range(1, 13))]
    dates = [dt.date(2018, 3, 31), dt.date(2018, 12, 31)]
    ref = score_columnar(fold_duckdb(table_of(events), dates), registry(*IDS), FeatureScorer())
    out = score_columnar(fold_duckdb(table_of(events), dates), registry(*IDS), FeatureScorer(), enterprise_chunk=chunk)
    for a, b in zip(ref.snapshots, out.snapshots, strict=True):
        np.testing.assert_array_equal(a.numeric, b.numeric)
        assert a.scores == b.scores
