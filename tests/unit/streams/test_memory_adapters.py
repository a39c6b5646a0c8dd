from __future__ import annotations

import pytest

from streams.adapters.memory import (
    InMemoryCreditLineStore,
    InMemoryFeatureStore,
    InMemoryRegistry,
    InMemoryScoreStore,
)
from streams.dataset import DEFAULT_DATA_DIR
from tests.unit.streams.contracts import CreditLineStoreContract, FeatureStoreContract, ScoreStoreContract


class TestInMemoryFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryFeatureStore:
        return InMemoryFeatureStore()


class TestInMemoryScoreStore(ScoreStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryScoreStore:
        return InMemoryScoreStore()


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
