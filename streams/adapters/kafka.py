"""Kafka plumbing on aiokafka: client settings (SASL/TLS), topic creation, publishing, reading back.

The hot path (consume ``invoices`` -> Redis -> rescore -> publish) runs on aiokafka
directly; see :mod:`streams.app` for why faust-streaming's per-event stream is not used there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel

from streams.codecs import encode, encode_key
from streams.errors import StreamError
from streams.settings import KafkaSettings, TopicSettings


class BrokerUnavailable(StreamError):
    """Kafka could not be reached or refused a request."""

    retriable = True


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for bootstrap, security protocol, SASL and TLS."""
    kwargs: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap, "security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
        )
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return kwargs


def topic_specs(topics: TopicSettings) -> list[NewTopic]:
    """The five topics: ``invoices`` and the DLQ append-only, scores and credit lines compacted.

    ``topics.min_insync_replicas``, when set, goes into every topic's config.

    Examples
    --------
    >>> specs = topic_specs(TopicSettings(replication=3, min_insync_replicas=2))
    >>> [(s.name, s.replication_factor, s.topic_configs) for s in specs][2]
    ('enterprise-scores', 3, {'min.insync.replicas': '2', 'cleanup.policy': 'compact'})
    """
    base = {} if topics.min_insync_replicas is None else {"min.insync.replicas": str(topics.min_insync_replicas)}
    compact = {**base, "cleanup.policy": "compact"}
    return [
        NewTopic(topics.invoices, topics.partitions, topics.replication, topic_configs=dict(base)),
        NewTopic(topics.dlq, topics.partitions, topics.replication, topic_configs=dict(base)),
        NewTopic(topics.scores, topics.partitions, topics.replication, topic_configs=compact),
        NewTopic(topics.credit_lines, topics.partitions, topics.replication, topic_configs=dict(compact)),
        NewTopic(topics.allocations, 1, topics.replication, topic_configs=dict(base)),
    ]


async def ensure_topics(kafka: KafkaSettings, topics: TopicSettings) -> list[str]:
    """Create the missing topics; returns the names created (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [spec for spec in topic_specs(topics) if spec.name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a second worker won the race
                pass
        return [spec.name for spec in wanted]
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics on {kafka.bootstrap}: {exc!r}; is Kafka up (scripts/services up)?") from exc
    finally:
        await admin.close()


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer tuned for batches: idempotent, acks from all in-sync replicas, short linger, lz4-free (no extra deps).

    Idempotence makes the broker drop the duplicates a retry after a lost acknowledgement would
    write (a leader moving to another broker is such a case).
    """
    options: dict[str, Any] = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "max_batch_size": 512 * 1024,
                               "client_id": kafka.client_id, **client_kwargs(kafka)}
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def publish_many(producer: AIOKafkaProducer, topic: str, items: Sequence[tuple[str, BaseModel]]) -> None:
    """Send every ``(key, event)`` and wait until all are acknowledged by the broker."""
    if not items:
        return
    futures = [await producer.send(topic, encode(value), key=encode_key(key)) for key, value in items]
    await asyncio.gather(*futures)


async def read_topic(kafka: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> list[tuple[str | None, bytes, int]]:
    """Every message now in ``topic`` (all partitions, from the start to the current end), as (key, value, timestamp_ms)."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **client_kwargs(kafka))
    await consumer.start()
    out: list[tuple[str | None, bytes, int]] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for a topic not yet known
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while remaining and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, messages in batch.items():
                for m in messages:
                    out.append((m.key.decode() if m.key is not None else None, m.value or b"", m.timestamp))
                if messages and messages[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def group_lag(kafka: KafkaSettings, topic: str, group_id: str) -> int:
    """Messages of ``topic`` not yet committed by consumer group ``group_id`` (all partitions).

    Raises
    ------
    BrokerUnavailable
        When the topic does not exist (no partitions known after a metadata refresh).
    """
    consumer = AIOKafkaConsumer(group_id=group_id, enable_auto_commit=False, **client_kwargs(kafka))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for an unsubscribed topic
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise BrokerUnavailable(f"topic {topic} does not exist on {kafka.bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        end = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += end[tp] - (committed or 0)
        return lag
    finally:
        await consumer.stop()
