"""The edge on real Kafka and Redis: a 5 MB message, a wrong key and a future-dated invoice end in the DLQ
while the stream goes on; ``riskmon watermark show|set`` on real Redis."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import itertools

import pytest
import redis

from streams.adapters.kafka import group_lag, make_producer, read_topic
from streams.adapters.redis_store import RedisFeatureStore
from streams.app import IngestLoop
from streams.cli import main
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.events import DeadLetter
from streams.features.fold import fold_all
from streams.settings import KafkaSettings
from tests.integration.streams.worker_kit import create_worker_topics, redis_worker_context, worker_settings

FIVE_MB = 5 * 1024 * 1024


async def test_a_5mb_message_a_wrong_key_and_a_2030_invoice_are_dead_letters_and_the_stream_goes_on(
        unique_name: str, kafka_settings: KafkaSettings, redis_url: str, redis_prefix: str, topic_factory) -> None:  # type: ignore[no-untyped-def]
    settings = worker_settings(unique_name, kafka_settings)
    t = settings.topics
    create_worker_topics(settings, topic_factory)
    valid = [e for e in itertools.islice(iter_events(DEFAULT_DATA_DIR), 200) if not isinstance(e, RejectedRow)]
    client = redis.Redis.from_url(redis_url)
    prefix = redis_prefix.rstrip(":")
    ctx = redis_worker_context(settings, client, prefix)
    huge = b'{"event_id": "' + b"x" * FIVE_MB + b'"}'
    wrong_key = valid[0].model_copy(update={"event_id": "wrong-key-1"}).model_dump_json().encode()
    future = valid[1].model_copy(update={
        "event_id": "future-1", "enterprise_id": "X999", "issue_date": dt.date(2030, 1, 1),
        "produced_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}).model_dump_json().encode()
    producer = make_producer(settings.kafka, max_request_size=FIVE_MB + 1024 * 1024)
    await producer.start()
    try:
        for i, ev in enumerate(valid):
            await producer.send_and_wait(t.invoices, ev.model_dump_json().encode(), key=ev.enterprise_id.encode())
            if i == 50:
                await producer.send_and_wait(t.invoices, huge, key=b"E1")
            if i == 100:
                await producer.send_and_wait(t.invoices, wrong_key, key=b"E2")
            if i == 150:
                await producer.send_and_wait(t.invoices, future, key=b"X999")
    finally:
        await producer.stop()
    total = len(valid) + 3

    loop = IngestLoop(ctx)
    await loop.start()
    runner = asyncio.create_task(loop.run())
    try:
        for _ in range(600):
            if loop.processed >= total:
                break
            await asyncio.sleep(0.1)
        assert loop.processed == total
    finally:
        await loop.stop()
        await runner

    assert await group_lag(settings.kafka, t.invoices, settings.kafka.group_id) == 0
    dead = {d.reason: d for d in (DeadLetter.model_validate_json(v) for _, v, _ in await read_topic(settings.kafka, t.dlq))}
    assert set(dead) == {"invalid_value", "key_mismatch", "event_time_future"}
    big = dead["invalid_value"]  # an event_id of 5 MB
    assert big.raw_truncated and big.raw_length == len(huge) and big.raw_sha256 == hashlib.sha256(huge).hexdigest()
    assert huge.startswith(base64.b64decode(big.raw_base64)) and big.source_offset >= 0
    assert len(big.model_dump_json()) <= settings.ingest.max_dead_letter_bytes
    assert base64.b64decode(dead["key_mismatch"].raw_base64) == wrong_key and dead["key_mismatch"].key == "E2"
    assert base64.b64decode(dead["event_time_future"].raw_base64) == future

    expected = fold_all(valid)
    store = RedisFeatureStore(client, prefix)
    for state in store.load_many(sorted(expected)):
        assert state.counters == expected[state.enterprise_id].counters
    assert "X999" not in store.enterprise_ids()
    assert store.watermark() == max(e.issue_date for e in valid)


def test_watermark_show_and_set_on_real_redis(redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    prefix = redis_prefix.rstrip(":")
    monkeypatch.setenv("RISKMON_REDIS__URL", redis_url)
    monkeypatch.setenv("RISKMON_REDIS__PREFIX", prefix)
    store = RedisFeatureStore(redis.Redis.from_url(redis_url), prefix)
    d = dt.date
    store.advance_watermark_quorum({"E1": d(2020, 2, 21), "E2": d(2020, 2, 20), "E3": d(2020, 2, 19)}, 3)
    store.advance_watermark_quorum({"E4": d(2030, 1, 1), "E5": d(2030, 1, 1), "E6": d(2030, 1, 1)}, 3)
    assert main(["watermark", "show"]) == 0
    out = capsys.readouterr().out
    assert "watermark: 2030-01-01" in out and "E6\t2030-01-01" in out
    assert main(["watermark", "set", "2020-02-21"]) == 0
    assert "2030-01-01 -> 2020-02-21; 3 client latest date(s) lowered" in capsys.readouterr().out
    assert store.watermark() == d(2020, 2, 21)
    assert store.advance_watermark_quorum({"E1": d(2020, 2, 22)}, 3) == d(2020, 2, 21)
    for argv, message in ((["watermark", "set"], "set needs a date"), (["watermark", "set", "2020-13-01"], "not a date"),
                          (["watermark", "show", "2020-01-01"], "show takes no date")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
