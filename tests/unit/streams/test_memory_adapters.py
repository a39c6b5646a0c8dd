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
