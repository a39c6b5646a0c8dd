"""The ingest loop on real Kafka and Redis: malformed messages land in the DLQ with reasons and their
coordinates, the valid ones around them are applied and scored, and offsets are committed."""

from __future__ import annotations

import asyncio
import base64
import itertools

import redis

from streams.adapters.kafka import group_lag, make_producer, read_topic
from streams.adapters.redis_store import RedisFeatureStore
from streams.app import IngestLoop
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore, InvoiceEvent
from streams.features.fold import fold_all
from streams.settings import KafkaSettings
from tests.integration.streams.worker_kit import create_worker_topics, redis_worker_context, worker_settings
from tests.unit.streams.test_pipeline import MALFORMED


async def test_malformed_messages_go_to_the_dlq_and_valid_ones_are_processed(
        unique_name: str, kafka_settings: KafkaSettings, redis_url: str, redis_prefix: str, topic_factory) -> None:  # type: ignore[no-untyped-def]
    settings = worker_settings(unique_name, kafka_settings)
    t = settings.topics
    create_worker_topics(settings, topic_factory)
    valid = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 300) if not isinstance(e, RejectedRow)]
    client = redis.Redis.from_url(redis_url)
    prefix = redis_prefix.rstrip(":")
    ctx = redis_worker_context(settings, client, prefix)
    # interleave: every malformed message sits between valid ones, on the same keys
    producer = make_producer(settings.kafka)
    await producer.start()
    sent_bad: dict[bytes, str] = {}
    try:
        bad = list(MALFORMED.items())
        for i, ev in enumerate(valid):
            await producer.send_and_wait(t.invoices, ev.model_dump_json().encode(), key=ev.enterprise_id.encode())
            if i % 10 == 5 and bad:
                name, raw = bad.pop()
                await producer.send_and_wait(t.invoices, raw, key=ev.enterprise_id.encode())
                sent_bad[raw] = name
        assert not bad
        # a redelivered copy of valid events (a producer retry): changes nothing
        for ev in valid[:20]:
            await producer.send_and_wait(t.invoices, ev.model_dump_json().encode(), key=ev.enterprise_id.encode())
    finally:
        await producer.stop()

    total = len(valid) + len(MALFORMED) + 20
    assert await group_lag(settings.kafka, t.invoices, settings.kafka.group_id) == total
    loop = IngestLoop(ctx)
    await loop.start()
    runner = asyncio.create_task(loop.run())
    try:
        for _ in range(300):
            if loop.processed >= total:
                break
            await asyncio.sleep(0.1)
        assert loop.processed == total
        assert loop.core is not None
        summary = await loop.core.allocate()
    finally:
        await loop.stop()
        await runner

    assert await group_lag(settings.kafka, t.invoices, settings.kafka.group_id) == 0
    dead = [DeadLetter.model_validate_json(v) for _, v, _ in await read_topic(settings.kafka, t.dlq)]
    assert len(dead) == len(MALFORMED)
    by_raw = {base64.b64decode(d.raw_base64): d for d in dead}
    assert set(by_raw) == set(sent_bad)
    for raw, d in by_raw.items():
        assert d.reason and d.error and d.source_topic == t.invoices and d.source_offset >= 0
        assert d.source_partition in (0, 1) and d.key is not None
    assert by_raw[MALFORMED["inconsistent_total"]].reason == "total_mismatch"
    assert by_raw[MALFORMED["empty"]].reason == "empty"
    counts = {line.split("{")[1]: float(line.split()[-1]) for line in ctx.metrics.exposition().decode().splitlines()
              if line.startswith("riskmon_dlq_total{")}
    assert sum(counts.values()) == len(MALFORMED)

    # the valid events are all applied, once
    expected = fold_all(valid)
    store = RedisFeatureStore(client, prefix)
    for state in store.load_many(sorted(expected)):
        assert state.counters == expected[state.enterprise_id].counters
    assert store.watermark() == max(e.issue_date for e in valid)

    scores = {k: EnterpriseScore.model_validate_json(v) for k, v, _ in await read_topic(settings.kafka, t.scores)}
    assert set(scores) == set(expected)
    assert summary is not None and isinstance(summary, AllocationSummary)
    lines = [CreditLine.model_validate_json(v) for _, v, _ in await read_topic(settings.kafka, t.credit_lines)]
    assert {line.enterprise_id for line in lines} == set(expected)

    # offsets were committed: a new loop in the same group finds nothing left to do
    again = IngestLoop(ctx)
    await again.start()
    runner = asyncio.create_task(again.run())
    for _ in range(200):  # until the group hands it the partitions
        if again.consumer is not None and again.consumer.assignment():
            break
        await asyncio.sleep(0.1)
    assigned = again.consumer.assignment() if again.consumer is not None else set()

    async def caught_up() -> bool:  # a fetch came back for every partition, and it is at the end
        assert again.consumer is not None
        for tp in assigned:
            hw = again.consumer.highwater(tp)
            if hw is None or await again.consumer.position(tp) < hw:
                return False
        return True
    for _ in range(200):
        if await caught_up():
            break
        await asyncio.sleep(0.1)
    assert await caught_up()
    await again.stop()
    await runner
    assert len(assigned) == 2 and again.processed == 0
    assert ctx.metrics.quantiles()["n"] > 0  # freshness was measured for the scored messages
