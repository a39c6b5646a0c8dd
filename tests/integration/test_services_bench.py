"""scripts/benchlib.py against the real broker: keyed placement, counts and the baseline consumer."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from aiokafka import AIOKafkaProducer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import benchlib  # noqa: E402

from tests.conftest import kafka_kwargs


async def test_produce_places_keys_like_keyed_send_and_baseline_reads_all(kafka_bootstrap: str, topic_factory) -> None:
    records = benchlib.load_invoice_records(limit=3000, cache_dir=None)
    assert len(records) == 3000
    first = json.loads(records[0][1])
    assert first["enterprise_id"].encode() == records[0][0] and first["schema_version"] == 1

    bulk = topic_factory(partitions=4, suffix="bulk")
    stats = await benchlib.produce(kafka_bootstrap, bulk, records)
    assert stats.messages == 3000 and stats.bytes == sum(len(k) + len(v) for k, v in records)
    assert await benchlib.end_offsets_total(kafka_bootstrap, bulk) == 3000

    # the same keys sent one by one with a keyed AIOKafkaProducer.send land on the same partitions
    keyed = topic_factory(partitions=4, suffix="keyed")
    producer = AIOKafkaProducer(**kafka_kwargs())
    await producer.start()
    try:
        keys = sorted({k for k, _ in records})
        futures = [await producer.send(keyed, b"x", key=k) for k in keys]
        sent_partition = {k: (await f).partition for k, f in zip(keys, futures)}
    finally:
        await producer.stop()

    got = await benchlib.consume_baseline(kafka_bootstrap, bulk, mode="getmany", decode="pydantic")
    assert got.messages == 3000 and got.bytes == stats.bytes and got.msgs_per_s > 0

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bulk, **kafka_kwargs(), auto_offset_reset="earliest")
    await consumer.start()
    placed: dict[bytes, set[int]] = defaultdict(set)
    values: list[bytes] = []
    try:
        while len(values) < 3000:
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                for m in msgs:
                    placed[m.key].add(m.partition)
                    values.append(m.value)
    finally:
        await consumer.stop()
    assert {k: p for k, (p,) in ((k, tuple(v)) for k, v in placed.items())} == sent_partition
    assert sorted(values) == sorted(v for _, v in records)


async def test_iter_mode_reads_the_same_count(kafka_bootstrap: str, topic_factory) -> None:
    records = benchlib.load_invoice_records(limit=500, cache_dir=None)
    topic = topic_factory(partitions=2)
    await benchlib.produce(kafka_bootstrap, topic, records, acks="all")
    got = await benchlib.consume_baseline(kafka_bootstrap, topic, mode="iter", decode="json")
    assert (got.messages, got.mode, got.decode) == (500, "iter", "json")


def test_parallel_baseline_splits_partitions_and_reads_everything(kafka_bootstrap: str, topic_factory) -> None:
    import asyncio

    records = benchlib.load_invoice_records(limit=1000, cache_dir=None)
    topic = topic_factory(partitions=4)
    asyncio.run(benchlib.produce(kafka_bootstrap, topic, records))
    stats = benchlib.parallel_baseline(kafka_bootstrap, topic, consumers=2, timeout_s=60)
    assert stats["consumers"] == 2 and stats["messages"] == 1000
    assert sorted(p for group in stats["partitions"] for p in group) == [0, 1, 2, 3]
    assert stats["bytes"] == sum(len(k) + len(v) for k, v in records)
