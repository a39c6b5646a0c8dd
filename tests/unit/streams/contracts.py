"""One contract test suite per port, run against every adapter (memory here, Redis in integration).

A test module subclasses a suite and provides the ``store`` fixture.
"""

from __future__ import annotations

import datetime as dt

import pytest

from streams.events import CreditLine, EnterpriseScore
from streams.features.fold import fold_delta
from streams.ports import DeltaItem, Verdict

NOW = dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)


def make_score(eid: str, rating: str = "B", pd_: float = 0.1) -> EnterpriseScore:
    return EnterpriseScore(
        enterprise_id=eid, as_of=dt.date(2019, 12, 31), rating=rating, rating_known=False,  # type: ignore[arg-type]
        rating_probabilities={"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1}, default_probability=pd_,
        segment="potential", industry="manufacturing", legal_form="limited_company", n_invoices=3,
        bundle_version="test", scored_at=NOW,
    )


def make_line(eid: str, amount: float = 200_000.0, rate: float = 0.06) -> CreditLine:
    return CreditLine(
        enterprise_id=eid, allocation_id="a1", as_of=dt.date(2019, 12, 31), amount_yuan=amount, rate=rate,
        expected_profit_yuan=1000.0, default_probability=0.1, rating="B", segment="potential",
        reasons=["optimal"], bundle_version="test", solver="exact", decided_at=NOW,
    )


def _kafka(eid: str, ids: list[str], offsets: range, *, partition: int = 0, month: int = 24230,
           delta: dict[str, int] | None = None) -> list[DeltaItem]:
    """Items as the worker makes them from Kafka records (topic t, one partition)."""
    return [DeltaItem(eid, i, delta or {"n": 1}, month=month, topic="t", partition=partition, offset=o)
            for i, o in zip(ids, offsets, strict=True)]


class FeatureStoreContract:
    """What every FeatureStore does; the store fixture has the default dedup window (12 months)."""

    @pytest.fixture
    def store(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def test_empty_store(self, store) -> None:
        assert store.enterprise_ids() == set()
        assert store.watermark() is None
        state = store.load("E1")
        assert state.enterprise_id == "E1" and state.counters == {} and state.n_events == 0

    def test_apply_is_idempotent_on_event_id(self, store) -> None:
        assert store.apply("E1", "ev1", {"a": 2, "b": -5}) is True
        assert store.apply("E1", "ev1", {"a": 2, "b": -5}) is False
        assert store.apply("E1", "ev2", {"a": 1}) is True
        state = store.load("E1")
        assert state.counters == {"a": 3, "b": -5}
        assert state.seen == set()  # no store keeps every event id
        assert store.enterprise_ids() == {"E1"}

    def test_same_event_id_in_two_enterprises_is_two_events(self, store) -> None:
        assert store.apply("E1", "ev", {"a": 1})
        assert store.apply("E2", "ev", {"a": 1})
        assert store.load("E2").counters == {"a": 1}
        assert store.enterprise_ids() == {"E1", "E2"}

    def test_apply_many_reports_duplicates_in_order_including_within_batch(self, store) -> None:
        items = [DeltaItem("E1", "x", {"n": 1}), DeltaItem("E2", "y", {"n": 4}), DeltaItem("E1", "x", {"n": 1}),
                 DeltaItem("E1", "z", {"n": 10, "big": 10**15})]
        write = store.apply_many(items)
        assert write.applied == [True, True, False, True]
        assert write.verdicts[2] is Verdict.DUPLICATE
        assert write.counters == {"E1": {"n": 11, "big": 10**15}, "E2": {"n": 4}}
        assert store.apply_many(items[:2]).applied == [False, False]
        assert store.apply_many([]).verdicts == []
        e1, e2 = store.load_many(["E1", "E2"])
        assert e1.counters == {"n": 11, "big": 10**15} and e2.counters == {"n": 4}

    def test_load_many(self, store) -> None:
        store.apply("E1", "a", {"n": 1}, name="nm")
        (state, empty) = store.load_many(["E1", "E9"], with_seen=False)  # with_seen: accepted, ignored
        assert (state.counters, state.seen, state.name) == ({"n": 1}, set(), "nm")
        assert empty.counters == {} and empty.enterprise_id == "E9"

    def test_huge_counters_stay_exact(self, store) -> None:
        big = 9_000_000_000_000_123
        items = [DeltaItem("E1", f"h{i}", {"amt": big if i % 2 else -big + 1, "n": 1}) for i in range(6)]
        store.apply_many(items)
        store.apply_many([DeltaItem("E1", f"s{i}", {"amt": 3_000_000_000_000_001}) for i in range(3)])
        assert store.load("E1").counters == {"amt": 3 * (big + (-big + 1)) + 9_000_000_000_000_003, "n": 6}

    def test_name_is_kept_once(self, store) -> None:
        store.apply_many([DeltaItem("E1", "a", {"n": 1}, name="***科技有限公司"), DeltaItem("E1", "b", {"n": 1}, name="other")])
        assert store.load("E1").name == "***科技有限公司"
        store.apply("E2", "c", {"n": 1})
        assert store.load("E2").name is None

    def test_counter_reaching_zero_is_consistent(self, store) -> None:
        store.apply("E1", "p", {"amt": 100})
        store.apply("E1", "m", {"amt": -100})
        assert store.load("E1").counters.get("amt", 0) == 0

    def test_watermark_only_moves_forward(self, store) -> None:
        assert store.advance_watermark(dt.date(2019, 5, 1)) == dt.date(2019, 5, 1)
        assert store.advance_watermark(dt.date(2018, 1, 1)) == dt.date(2019, 5, 1)
        assert store.advance_watermark(dt.date(2019, 6, 1)) == dt.date(2019, 6, 1)
        assert store.watermark() == dt.date(2019, 6, 1)

    def test_watermark_moves_by_quorum_of_clients_and_an_operator_can_set_it(self, store) -> None:
        d = dt.date
        assert store.advance_watermark_quorum({"E1": d(2019, 5, 1)}, 3) == d(2019, 5, 1)  # one client: its date
        assert store.advance_watermark_quorum({"E2": d(2019, 6, 1), "E3": d(2019, 7, 1)}, 3) == d(2019, 5, 1)
        # one client far ahead does not move it: the 3rd most recent of (2030, 2019-07, 2019-06) is 2019-06
        assert store.advance_watermark_quorum({"E1": d(2030, 1, 1)}, 3) == d(2019, 6, 1)
        assert store.advance_watermark_quorum({"E1": d(2019, 1, 1)}, 3) == d(2019, 6, 1)  # latest dates only grow
        assert [e for e, _ in store.latest_dates(2)] == ["E1", "E3"]
        assert store.advance_watermark_quorum({}, 3) == d(2019, 6, 1)
        # the operator pulls it back; the runaway client's date comes down with it
        assert store.set_watermark(d(2019, 6, 15)) == 2
        assert store.watermark() == d(2019, 6, 15)
        assert store.latest_dates(3) == [("E3", d(2019, 6, 15)), ("E1", d(2019, 6, 15)), ("E2", d(2019, 6, 1))]
        assert store.advance_watermark_quorum({"E2": d(2019, 8, 1)}, 3) == d(2019, 6, 15)
        assert store.advance_watermark_quorum({"E4": d(2019, 9, 1), "E1": d(2019, 9, 2)}, 3) == d(2019, 8, 1)

    def test_load_returns_an_independent_copy(self, store) -> None:
        store.apply("E1", "a", {"n": 1, "cp:in:S1": 1})
        state = store.load("E1")
        state.counters["n"] = 99
        state.counterparties["cp:in:S1"] = 99
        assert store.load("E1").counters == {"n": 1, "s:ncp_in": 1}
        assert store.load("E1").counterparties == {"cp:in:S1": 1}

    # ---- exactly once with bounded state

    def test_kafka_redelivery_is_fenced_by_the_last_applied_offset(self, store) -> None:
        items = _kafka("E1", [f"e{i}" for i in range(5)], range(10, 15))
        assert store.apply_many(items).applied == [True] * 5
        again = store.apply_many(items[2:] + _kafka("E1", ["e5"], range(15, 16)))  # the tail again, then a new one
        assert again.verdicts == [Verdict.REDELIVERED] * 3 + [Verdict.APPLIED]
        assert store.load("E1").counters == {"n": 6}
        assert again.counters == {"E1": {"n": 6}}  # the stored values, also for a batch that was all redelivered

    def test_producer_resend_within_the_window_is_a_duplicate(self, store) -> None:
        store.apply_many(_kafka("E1", ["a", "b"], range(0, 2)))
        resent = store.apply_many(_kafka("E1", ["b", "a", "c"], range(2, 5)))  # new offsets: a producer re-send
        assert resent.verdicts == [Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.APPLIED]
        assert store.load("E1").counters == {"n": 3}

    def test_conflicting_redelivery_changes_nothing_and_is_not_fenced(self, store) -> None:
        store.apply_many(_kafka("E1", ["a"], range(0, 1)))
        batch = _kafka("E1", ["a"], range(1, 2), delta={"n": 7}) + _kafka("E1", ["b"], range(2, 3))
        assert store.apply_many(batch).verdicts == [Verdict.CONFLICT, Verdict.APPLIED]
        assert store.load("E1").counters == {"n": 2}
        # redelivered (e.g. a crash before the dead letter was published): judged again, not skipped
        assert store.apply_many(batch).verdicts == [Verdict.CONFLICT, Verdict.DUPLICATE]

    def test_conflict_within_one_batch(self, store) -> None:
        items = [DeltaItem("E1", "a", {"n": 1}, month=5), DeltaItem("E1", "a", {"n": 2}, month=5)]
        assert store.apply_many(items).verdicts == [Verdict.APPLIED, Verdict.CONFLICT]
        assert store.load("E1").counters == {"n": 1}

    def test_content_hash_decides_a_conflict_when_given(self, store) -> None:
        a = DeltaItem("E1", "a", {"n": 1}, month=5, content_hash="aaaa")
        assert store.apply_many([a]).applied == [True]
        same = DeltaItem("E1", "a", {"n": 1}, month=5, content_hash="aaaa")
        other = DeltaItem("E1", "a", {"n": 1}, month=5, content_hash="bbbb")
        assert store.apply_many([same, other]).verdicts == [Verdict.DUPLICATE, Verdict.CONFLICT]

    def test_events_before_the_window_are_dead_letters(self, store) -> None:
        month = 2019 * 12
        store.apply_many([DeltaItem("E1", "old", {"n": 1}, month=month)])
        store.apply_many([DeltaItem("E1", "new", {"n": 1}, month=month + 12)])  # window: month+1 .. month+12
        late = store.apply_many([DeltaItem("E1", "old", {"n": 1}, month=month),  # its month left the window
                                 DeltaItem("E1", "x", {"n": 1}, month=month + 1),
                                 DeltaItem("E1", "y", {"n": 1}, month=month + 13),
                                 DeltaItem("E1", "z", {"n": 1}, month=month + 1)])  # y moved the window past it
        assert late.verdicts == [Verdict.LATE, Verdict.APPLIED, Verdict.APPLIED, Verdict.LATE]
        assert store.load("E1").counters == {"n": 4}
        assert store.apply_many([DeltaItem("E2", "first", {"n": 1}, month=1)]).applied == [True]

    def test_fences_are_per_partition(self, store) -> None:
        store.apply_many(_kafka("E1", ["a"], range(100, 101), partition=0))
        moved = store.apply_many(_kafka("E1", ["b"], range(3, 4), partition=5))  # partitions added: a new fence
        assert moved.verdicts == [Verdict.APPLIED]

    def test_bad_delta_is_refused_whole(self, store) -> None:
        with pytest.raises(ValueError, match="cpa increments"):
            store.apply_many([DeltaItem("E1", "a", {"n": 1}), DeltaItem("E1", "b", {"cpa:in:S1": -1})])
        with pytest.raises(ValueError, match="whitespace"):
            store.apply_many([DeltaItem("E1", "c", {"n 1": 1})])
        assert store.enterprise_ids() == set() and store.load("E1").counters == {}

    def test_counterparties_live_apart_with_summaries_equal_to_the_fold(self, store) -> None:
        deltas = [{"cp:out:B1": 1, "cpa:out:B1": 500, "n": 1}, {"cp:out:B2": 1, "cpa:out:B2": 900},
                  {"cp:out:B1": 1, "cpa:out:B1": 700}, {"cp:in:S1": 1}, {"cp:out:B3": 1, "cpa:out:B3": 2**62}]
        write = store.apply_many([DeltaItem("E1", f"e{i}", d) for i, d in enumerate(deltas[:3])])
        write2 = store.apply_many([DeltaItem("E1", f"e{i}", d) for i, d in enumerate(deltas) if i >= 3])
        counters: dict[str, int] = {}
        cps: dict[str, int] = {}
        for d in deltas:
            fold_delta(counters, cps, d)
        state = store.load("E1")
        assert (state.counters, state.counterparties) == (counters, cps)
        assert counters["s:cpamax_out"] == 2**62 and counters["s:ncp_out"] == 3
        scoring = store.load_many(["E1"])[0]  # what scoring reads: no counterparty counters
        assert scoring.counterparties == {} and scoring.counters == counters
        assert write.counters["E1"] == {"n": 1, "s:ncp_out": 2, "s:cpasum_out": 2100, "s:cpamax_out": 1200}
        assert write2.counters["E1"] == {"s:ncp_in": 1, "s:cpasum_in": 0, "s:cpamax_in": 0, "s:ncp_out": 3,
                                         "s:cpasum_out": 2100 + 2**62, "s:cpamax_out": 2**62}


class ScoreStoreContract:
    @pytest.fixture
    def store(self):  # pragma: no cover
        raise NotImplementedError

    def test_put_get_all(self, store) -> None:
        assert store.all() == {} and store.get("E1") is None
        store.put_many([make_score("E1"), make_score("E2", "D", 0.9)])
        store.put_many([make_score("E1", "A", 0.01)])
        assert store.get("E1") == make_score("E1", "A", 0.01)
        assert set(store.all()) == {"E1", "E2"}
        assert store.all()["E2"].rating == "D"
        store.put_many([])


class CreditLineStoreContract:
    @pytest.fixture
    def store(self):  # pragma: no cover
        raise NotImplementedError

    def test_put_all(self, store) -> None:
        assert store.all() == {}
        store.put_many([make_line("E1"), make_line("E2", 0.0, 0.0)])
        store.put_many([make_line("E1", 300_000.0)])
        lines = store.all()
        assert lines["E1"].amount_yuan == 300_000.0 and lines["E2"] == make_line("E2", 0.0, 0.0)


class AlertStateStoreContract:
    @pytest.fixture
    def store(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def test_missing_keys_are_none(self, store) -> None:
        assert store.load_many(["score:E1", "drift:default_probability"]) == {"score:E1": None,
                                                                             "drift:default_probability": None}

    def test_round_trip_per_enterprise_and_global(self, store) -> None:
        from streams.alerts import WatchState

        states = {"score:E1": WatchState({"pd_threshold": 0.2}, {"pd": 0.7, "rating": "D"}),
                  "line:E1": WatchState({}, {"amount": 0.0}),
                  "dlq:producer-9": WatchState({"dlq_burst": 123}, {"bucket": 123, "count": 30, "reasons": ["x"]})}
        store.put_many(states)
        loaded = store.load_many(list(states) + ["score:E2"])
        assert loaded["score:E2"] is None
        for key, state in states.items():
            assert dict(loaded[key].open) == dict(state.open)
            assert dict(loaded[key].last) == dict(state.last)

    def test_put_overwrites(self, store) -> None:
        from streams.alerts import WatchState

        store.put_many({"score:E1": WatchState({"pd_jump": 0.1}, {"pd": 0.5})})
        store.put_many({"score:E1": WatchState({}, {"pd": 0.2})})
        state = store.load_many(["score:E1"])["score:E1"]
        assert dict(state.open) == {} and state.last["pd"] == 0.2
