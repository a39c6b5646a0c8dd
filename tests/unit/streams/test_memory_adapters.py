from __future__ import annotations

import pytest

from streams.adapters.memory import (
    InMemoryCreditLineStore,
    InMemoryFeatureStore,
    InMemoryRegistry,
    InMemoryScoreStore,
)
from streams.dataset import DEFAULT_DATA_DIR
from tests.unit.streams.contracts import (AlertStateStoreContract, CreditLineStoreContract, FeatureStoreContract,
                                          ScoreStoreContract)


class TestInMemoryFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryFeatureStore:
        return InMemoryFeatureStore()


class TestInMemoryScoreStore(ScoreStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryScoreStore:
        return InMemoryScoreStore()


class TestInMemoryAlertStateStore(AlertStateStoreContract):
    @pytest.fixture
    def store(self):
        from streams.adapters.memory import InMemoryAlertStateStore

        return InMemoryAlertStateStore()


class TestInMemoryCreditLineStore(CreditLineStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryCreditLineStore:
        return InMemoryCreditLineStore()


def test_registry_from_real_data() -> None:
    registry = InMemoryRegistry.from_data_dir(DEFAULT_DATA_DIR)
    assert len(registry.enterprise_ids()) == 425
    e1 = registry.get("E1")
    assert e1 is not None and e1.rating == "A" and "电器" in e1.name
    unrated = [registry.get(e) for e in registry.enterprise_ids() if registry.get(e).rating is None]  # type: ignore[union-attr]
    assert len(unrated) == 302
    assert registry.get("E999") is None


class TestCachedFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self):  # type: ignore[no-untyped-def]
        from streams.adapters.cached import CachedFeatureStore

        return CachedFeatureStore(InMemoryFeatureStore())


def test_cache_follows_the_inner_store_under_redelivery_and_evicts() -> None:
    from streams.adapters.cached import CachedFeatureStore
    from streams.ports import DeltaItem

    inner = InMemoryFeatureStore()
    store = CachedFeatureStore(inner, max_entries=2)
    for n in range(50):
        items = [DeltaItem(f"E{n % 3}", f"ev{n % 20}", {"n": 1, f"k{n % 4}": n}, name=f"name{n % 3}")]
        store.apply_many(items + items)
        for state in store.load_many(["E0", "E1", "E2"], with_seen=False):
            assert state.counters == inner.load(state.enterprise_id).counters
            assert state.name == inner.load(state.enterprise_id).name
    assert store.hits > 0 and store.misses > 0
    store.invalidate()
    assert store.load_many(["E1"], with_seen=False)[0].counters == inner.load("E1").counters


class _WritesThenFails:
    """An inner store whose write goes through but whose reply is lost (Redis killed after the script ran)."""

    def __init__(self, inner: InMemoryFeatureStore) -> None:
        self.inner, self.fail_next = inner, False

    def apply_many(self, items):  # type: ignore[no-untyped-def]
        write = self.inner.apply_many(items)
        if self.fail_next:
            self.fail_next = False
            from streams.errors import StoreUnavailable

            raise StoreUnavailable("connection lost")
        return write

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def test_cache_equals_the_store_after_a_write_whose_reply_was_lost() -> None:
    from streams.adapters.cached import CachedFeatureStore
    from streams.errors import StoreUnavailable
    from streams.ports import DeltaItem, Verdict

    inner = InMemoryFeatureStore()
    flaky = _WritesThenFails(inner)
    store = CachedFeatureStore(flaky)  # type: ignore[arg-type]
    store.apply_many([DeltaItem("E1", "a", {"n": 1}, topic="t", partition=0, offset=0)])
    assert store.load_many(["E1"])[0].counters == {"n": 1}  # cached now
    batch = [DeltaItem("E1", "b", {"n": 1, "m": 5}, topic="t", partition=0, offset=1)]
    flaky.fail_next = True
    with pytest.raises(StoreUnavailable):
        store.apply_many(batch)  # applied in the store, but the worker never heard
    write = store.apply_many(batch)  # the retry: redelivered, nothing applied
    assert write.verdicts == [Verdict.REDELIVERED]
    assert store.load_many(["E1"])[0].counters == inner.load("E1").counters == {"n": 2, "m": 5}


def test_returned_counters_alone_keep_a_cached_state_exact() -> None:
    from streams.adapters.cached import CachedFeatureStore
    from streams.ports import DeltaItem

    inner = InMemoryFeatureStore()
    store = CachedFeatureStore(inner)
    store.apply("E1", "a", {"n": 1})
    store.load_many(["E1"])
    inner.apply("E1", "behind-its-back", {"n": 10})  # e.g. applied by an attempt whose reply was lost
    store.apply("E1", "c", {"n": 1})
    assert store.load_many(["E1"])[0].counters == {"n": 12}  # the write returned the stored value
