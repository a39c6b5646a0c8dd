"""One contract test suite per port, run against every adapter (memory here, Redis in integration).

A test module subclasses a suite and provides the ``store`` fixture.
"""

from __future__ import annotations

import datetime as dt

import pytest

from streams.events import CreditLine, EnterpriseScore
from streams.ports import DeltaItem

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


class FeatureStoreContract:
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
        assert state.seen == {"ev1", "ev2"}
        assert store.enterprise_ids() == {"E1"}

    def test_same_event_id_in_two_enterprises_is_two_events(self, store) -> None:
        assert store.apply("E1", "ev", {"a": 1})
        assert store.apply("E2", "ev", {"a": 1})
        assert store.load("E2").counters == {"a": 1}
        assert store.enterprise_ids() == {"E1", "E2"}

    def test_apply_many_reports_duplicates_in_order_including_within_batch(self, store) -> None:
        items = [DeltaItem("E1", "x", {"n": 1}), DeltaItem("E2", "y", {"n": 4}), DeltaItem("E1", "x", {"n": 1}),
                 DeltaItem("E1", "z", {"n": 10, "big": 10**15})]
        assert store.apply_many(items) == [True, True, False, True]
        assert store.apply_many(items[:2]) == [False, False]
        assert store.apply_many([]) == []
        e1, e2 = store.load_many(["E1", "E2"])
        assert e1.counters == {"n": 11, "big": 10**15} and e2.counters == {"n": 4}

    def test_load_many_without_seen(self, store) -> None:
        store.apply("E1", "a", {"n": 1}, name="nm")
        (state, empty) = store.load_many(["E1", "E9"], with_seen=False)
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

    def test_load_returns_an_independent_copy(self, store) -> None:
        store.apply("E1", "a", {"n": 1})
        state = store.load("E1")
        state.counters["n"] = 99
        state.seen.add("zzz")
        assert store.load("E1").counters == {"n": 1}
        assert store.apply("E1", "zzz", {"n": 1}) is True


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
