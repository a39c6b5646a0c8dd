"""The Redis adapters pass the same contract suites as the in-memory ones, and equal the batch fold."""

from __future__ import annotations

import itertools
import threading

import pytest
import redis

from streams.adapters.memory import InMemoryRegistry
from streams.adapters.redis_store import (
    RedisCreditLineStore,
    RedisFeatureStore,
    RedisRegistry,
    RedisScoreStore,
    clear_prefix,
)
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.errors import StoreUnavailable
from streams.features.fold import fold_all
from streams.pipeline import apply_events
from tests.unit.streams.contracts import CreditLineStoreContract, FeatureStoreContract, ScoreStoreContract

pytestmark = pytest.mark.services


class TestRedisFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisFeatureStore:
        return RedisFeatureStore(redis_client, stream_prefix)


class TestRedisScoreStore(ScoreStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisScoreStore:
        return RedisScoreStore(redis_client, stream_prefix)


class TestRedisCreditLineStore(CreditLineStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisCreditLineStore:
        return RedisCreditLineStore(redis_client, stream_prefix)


def test_keys_are_versioned_and_hash_tagged(redis_client: redis.Redis, stream_prefix: str) -> None:
    RedisFeatureStore(redis_client, stream_prefix).apply("E7", "ev", {"n": 1}, name="x")
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{stream_prefix}:*"))
    assert keys == [f"{stream_prefix}:v1:enterprises", f"{stream_prefix}:v1:{{E7}}:counters",
                    f"{stream_prefix}:v1:{{E7}}:meta", f"{stream_prefix}:v1:{{E7}}:seen"]
    assert clear_prefix(redis_client, stream_prefix) == 4


def test_real_events_with_concurrent_redelivery_equal_the_batch_fold(redis_client: redis.Redis, stream_prefix: str) -> None:
    events = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 20_000) if not isinstance(e, RejectedRow)]
    store = RedisFeatureStore(redis_client, stream_prefix)

    def worker(offset: int) -> None:  # two writers racing over the same events: each is applied once
        for start in range(offset, len(events), 1000):
            apply_events(store, events[start : start + 1000])

    threads = [threading.Thread(target=worker, args=(0,)), threading.Thread(target=worker, args=(0,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = fold_all(events)
    assert store.enterprise_ids() == set(expected)
    loaded = store.load_many(sorted(expected))
    for state in loaded:
        assert state.counters == expected[state.enterprise_id].counters
        assert state.seen == expected[state.enterprise_id].seen
    assert store.watermark() == max(e.issue_date for e in events)


def test_registry_roundtrip(redis_client: redis.Redis, stream_prefix: str) -> None:
    source = InMemoryRegistry.from_data_dir(DEFAULT_DATA_DIR)
    registry = RedisRegistry(redis_client, stream_prefix)
    registry.put_many([source.get(e) for e in sorted(source.enterprise_ids())])  # type: ignore[misc]
    fresh = RedisRegistry(redis_client, stream_prefix)
    assert fresh.enterprise_ids() == source.enterprise_ids()
    assert fresh.get("E1") == source.get("E1") and fresh.get("E400") == source.get("E400")


def test_driver_errors_become_store_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    store = RedisFeatureStore(client, "nowhere")
    with pytest.raises(StoreUnavailable) as info:
        store.apply("E1", "e", {"n": 1})
    assert info.value.retriable and "scripts/services up" in str(info.value)
