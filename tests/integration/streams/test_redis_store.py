"""The Redis adapters pass the same contract suites as the in-memory ones, and equal the batch fold."""

from __future__ import annotations

import itertools
import pickle
import threading
from collections.abc import Callable, Iterable

import pytest
import redis

from streams.adapters.memory import InMemoryRegistry
from redis.crc import key_slot

from streams.adapters.redis_store import (
    KEY_VERSION,
    RedisAlertStateStore,
    RedisCreditLineStore,
    RedisFeatureStore,
    RedisRegistry,
    RedisScoreStore,
    clear_prefix,
    prepare_columns,
    shard_of,
)
from streams.columns import InvoiceColumns, columns_from_events
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.events import InvoiceEvent
from streams.errors import StoreUnavailable
from streams.features.fold import fold_all
from streams.features.vector import month_index
from streams.pipeline import Source, apply_events
from streams.ports import VERDICT_LETTERS, DeltaItem, Verdict
from tests.unit.streams.contracts import (
    AlertStateStoreContract,
    CreditLineStoreContract,
    FeatureStoreContract,
    ScoreStoreContract,
    make_score,
)

pytestmark = pytest.mark.services


class TestRedisFeatureStore(FeatureStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisFeatureStore:
        return RedisFeatureStore(redis_client, stream_prefix)


class TestRedisScoreStore(ScoreStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisScoreStore:
        return RedisScoreStore(redis_client, stream_prefix)


class TestRedisAlertStateStore(AlertStateStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisAlertStateStore:
        return RedisAlertStateStore(redis_client, stream_prefix)


class TestRedisCreditLineStore(CreditLineStoreContract):
    @pytest.fixture
    def store(self, redis_client: redis.Redis, stream_prefix: str) -> RedisCreditLineStore:
        return RedisCreditLineStore(redis_client, stream_prefix)


def test_keys_are_versioned_hash_tagged_and_one_slot_per_script(redis_client: redis.Redis, stream_prefix: str) -> None:
    store = RedisFeatureStore(redis_client, stream_prefix)
    store.apply_many([DeltaItem("E7", "ev", {"n": 1, "cp:in:S1": 1}, name="x", month=2019 * 12 + 4)])
    RedisScoreStore(redis_client, stream_prefix).put_many([make_score("E7")])
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{stream_prefix}:*"))
    base, shard = f"{stream_prefix}:{KEY_VERSION}", f"s{shard_of('E7'):02d}"
    assert keys == [f"{base}:{{E7}}:counters", f"{base}:{{E7}}:cp", f"{base}:{{E7}}:dd:201905",
                    f"{base}:{{E7}}:meta", f"{base}:{{{shard}}}:enterprises", f"{base}:{{{shard}}}:scores"]
    assert len({key_slot(k.encode()) for k in keys if "{E7}" in k}) == 1  # what one Lua call touches: one slot
    assert clear_prefix(redis_client, stream_prefix) == 6


def _kafka_items(events: list, partition_of: dict[str, int]) -> tuple[list, list]:  # type: ignore[type-arg]
    sources, next_offset = [], dict.fromkeys(range(4), 0)
    for e in events:
        p = partition_of.setdefault(e.enterprise_id, len(partition_of) % 4)
        sources.append(Source("invoices", p, next_offset[p]))
        next_offset[p] += 1
    return events, sources


def _key_sizes(client: redis.Redis, prefix: str) -> dict[str, int]:
    """MEMORY USAGE of every key under the prefix."""
    keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return dict(zip(keys, pipe.execute(), strict=True))


def _field_counts(client: redis.Redis, keys: Iterable[str]) -> dict[str, int]:
    """HLEN of every hash (SCARD of the sets) among these keys."""
    keys = sorted(keys)
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.scard(k) if k.endswith(":enterprises") else pipe.hlen(k)
    return dict(zip(keys, pipe.execute(), strict=True))


def _memory_bytes(client: redis.Redis, prefix: str) -> tuple[int, int]:
    sizes = _key_sizes(client, prefix)
    return len(sizes), sum(sizes.values())


def test_memory_does_not_grow_when_the_same_invoices_are_redelivered(redis_client: redis.Redis, stream_prefix: str) -> None:
    events = sorted((e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 20_000) if not isinstance(e, RejectedRow)),
                    key=lambda e: e.issue_date)
    events, sources = _kafka_items(events, {})
    store = RedisFeatureStore(redis_client, stream_prefix)
    for start in range(0, len(events), 2000):
        apply_events(store, events[start : start + 2000], sources[start : start + 2000])
    before = _memory_bytes(redis_client, stream_prefix)
    for start in range(0, len(events), 2000):  # a consumer restarted from offset 0: every record redelivered
        r = apply_events(store, events[start : start + 2000], sources[start : start + 2000])
        assert r.applied == 0 and r.duplicates == len(events[start : start + 2000])
    assert _memory_bytes(redis_client, stream_prefix) == before
    # a producer re-sending the last quarter (new offsets): duplicates in the window, the same keys
    newest = {e.enterprise_id: month_index(e.issue_date) for e in events}  # sorted by date: the last wins
    recent = [i for i, e in enumerate(events) if month_index(e.issue_date) > newest[e.enterprise_id] - 6]
    tail = [events[i] for i in recent]
    resent = [Source(sources[i].topic, sources[i].partition, sources[i].offset + 1_000_000) for i in recent]
    r = apply_events(store, tail, resent)
    assert r.applied == 0 and not r.rejected and r.duplicates == len(tail) > 1000
    keys, size = _memory_bytes(redis_client, stream_prefix)
    assert keys == before[0] and size <= before[1] + 16 * len(store.enterprise_ids())  # only fence values changed
    expected = fold_all(events)
    for state in store.load_many(sorted(expected), with_counterparties=True):
        assert state.counters == expected[state.enterprise_id].counters
        assert state.counterparties == expected[state.enterprise_id].counterparties


def test_columnar_redelivery_leaves_memory_and_counters_unchanged(redis_client: redis.Redis, stream_prefix: str) -> None:
    """The worker's path (apply_columns): a Kafka redelivery (same offsets) and a producer re-send (new offsets,
    same event ids and content) write nothing: every key's MEMORY USAGE and every counter stay as they were."""
    events, columns = _real_slice(20_000)

    store = RedisFeatureStore(redis_client, stream_prefix)
    batches = [list(range(start, min(start + 2000, len(events)))) for start in range(0, len(events), 2000)]
    for at in batches:
        assert (store.apply_columns(columns(at)).letters == VERDICT_LETTERS[Verdict.APPLIED]).all()
    ids = sorted(store.enterprise_ids())

    def counters() -> list[tuple[dict[str, int], dict[str, int]]]:
        return [(s.counters, s.counterparties) for s in store.load_many(ids, with_counterparties=True)]

    sizes, state = _key_sizes(redis_client, stream_prefix), counters()
    fields = _field_counts(redis_client, sizes)
    expected = fold_all(events)
    assert state == [(expected[e].counters, expected[e].counterparties) for e in ids]
    for at in batches:  # a consumer restarted from offset 0: every record redelivered at its own offset
        letters = store.apply_columns(columns(at)).letters
        assert (letters == VERDICT_LETTERS[Verdict.REDELIVERED]).all()
    assert _key_sizes(redis_client, stream_prefix) == sizes
    assert _field_counts(redis_client, sizes) == fields and counters() == state
    # a producer re-sending what is inside each enterprise's dedup window (new offsets, same ids and content)
    newest = {e.enterprise_id: month_index(e.issue_date) for e in events}  # sorted by date: the last wins
    recent = [i for i, e in enumerate(events) if month_index(e.issue_date) > newest[e.enterprise_id] - 6]
    for start in range(0, len(recent), 2000):
        letters = store.apply_columns(columns(recent[start : start + 2000], shift=1_000_000)).letters
        assert (letters == VERDICT_LETTERS[Verdict.DUPLICATE]).all()
    after = _key_sizes(redis_client, stream_prefix)
    assert after.keys() == sizes.keys() and len(recent) > 1000
    assert _field_counts(redis_client, sizes) == fields
    # no key grew but the offset fences (longer numbers); a large dedup hash may shrink when the reads finish
    # Redis's incremental rehash (its old table freed), which is not growth
    assert all(after[k] <= sizes[k] for k in sizes if not k.endswith(":meta"))
    assert sum(after[k] - sizes[k] for k in sizes if k.endswith(":meta")) <= 16 * len(ids)
    assert counters() == state


def test_dedup_window_keeps_only_the_newest_months(redis_client: redis.Redis, stream_prefix: str) -> None:
    store = RedisFeatureStore(redis_client, stream_prefix, dedup_window_months=3)
    start = 2018 * 12
    for m in range(30):
        store.apply_many([DeltaItem("E1", f"e{m}-{k}", {"n": 1}, month=start + m) for k in range(5)])
    months = sorted(k.decode().rsplit(":", 1)[1] for k in redis_client.scan_iter(match=f"{stream_prefix}:*:dd:*"))
    assert months == ["202004", "202005", "202006"]
    assert store.load("E1").counters == {"n": 150}


def test_real_events_with_concurrent_redelivery_equal_the_batch_fold(redis_client: redis.Redis, stream_prefix: str) -> None:
    events = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 20_000) if not isinstance(e, RejectedRow)]
    store = RedisFeatureStore(redis_client, stream_prefix, dedup_window_months=600)  # file order: any month

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
    loaded = store.load_many(sorted(expected), with_counterparties=True)
    for state in loaded:
        assert state.counters == expected[state.enterprise_id].counters
        assert state.counterparties == expected[state.enterprise_id].counterparties
        assert state.n_events == expected[state.enterprise_id].n_events
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


def test_columns_prepared_elsewhere_apply_as_unprepared(redis_client: redis.Redis, stream_prefix: str) -> None:
    """The worker groups and folds a batch in its decode process (prepare_columns, pickled across): the same
    verdicts, counters and state as a store that prepares them itself, also for a batch mixing new events
    with re-sent ones (the second round trip folds the new ones anew); a preparation of other columns is ignored."""
    events, columns = _real_slice(6_000)

    plain = RedisFeatureStore(redis_client, stream_prefix + ":plain")
    prepared = RedisFeatureStore(redis_client, stream_prefix + ":prepared")
    half = len(events) // 2
    batches = [(list(range(half)), 0), (list(range(half - 500, len(events))), 0),  # 500 redelivered, the rest new
               (list(range(0, len(events), 3)), 1_000_000)]  # re-sent at new offsets: duplicates
    seen = []
    for at, shift in batches:
        cols = columns(at, shift)
        ready = pickle.loads(pickle.dumps(prepare_columns(cols)))
        a, b = plain.apply_columns(cols), prepared.apply_columns(cols, ready)
        assert a.letters.tolist() == b.letters.tolist() and a.counters == b.counters
        seen.append({_VERDICT_OF[x] for x in b.letters.tolist()})
    assert seen[1] >= {Verdict.APPLIED, Verdict.REDELIVERED} and Verdict.DUPLICATE in seen[2]
    other = prepare_columns(columns(list(range(10))))
    assert prepared.apply_columns(columns(list(range(20))), other).letters.tolist() == \
        plain.apply_columns(columns(list(range(20)))).letters.tolist()
    ids = sorted(plain.enterprise_ids())
    assert ids == sorted(prepared.enterprise_ids())
    assert [(s.counters, s.counterparties) for s in plain.load_many(ids, with_counterparties=True)] == \
        [(s.counters, s.counterparties) for s in prepared.load_many(ids, with_counterparties=True)]
    expected = fold_all(events)
    assert [s.counters for s in prepared.load_many(ids)] == [expected[e].counters for e in ids]


_VERDICT_OF = {code: verdict for verdict, code in VERDICT_LETTERS.items()}


def _real_slice(n: int) -> tuple[list[InvoiceEvent], Callable[..., InvoiceColumns]]:
    """The first ``n`` real invoices in issue-date order as Kafka items, and ``columns(at, shift=0)``: the rows
    ``at`` as a polled batch's columns, their offsets moved by ``shift`` (a producer's re-send)."""
    events = sorted((e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), n) if not isinstance(e, RejectedRow)),
                    key=lambda e: e.issue_date)
    events, sources = _kafka_items(events, {})

    def columns(at: list[int], shift: int = 0) -> InvoiceColumns:
        return columns_from_events([events[i] for i in at], list(range(len(at))), "invoices",
                                   [sources[i].partition for i in at], [sources[i].offset + shift for i in at])

    return events, columns
