"""Kafka plumbing on aiokafka: client settings (SASL/TLS), topic creation, publishing, reading back.

The hot path (consume ``invoices`` -> Redis -> rescore -> publish) runs on aiokafka
directly; see :mod:`streams.app` for why faust-streaming's per-event stream is not used there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel

from streams.codecs import encode, encode_key
from streams.errors import PublishFailed, StreamError
from streams.settings import KafkaSettings, TopicSettings


T = TypeVar("T", bound=BaseModel)
log = logging.getLogger(__name__)

#: Errors after which aiokafka's idempotent producer is dead for good (its sender task ends): the
#: broker lost or rejected the producer's id and sequence numbers, e.g. after a restart that lost
#: its producer-state snapshot. Only a new producer (a new producer id) can publish again.
PRODUCER_STATE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, InvalidProducerIdMapping,
                       ProducerFenced)


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
    """The topics: ``invoices``, the DLQ and ``risk-alerts`` append-only, scores and credit lines compacted.

    ``topics.min_insync_replicas``, when set, goes into every topic's config. ``risk-alerts`` is not
    compacted: each alert is an event in a history (an enterprise can have several open rules, and an
    alert that fired, cleared and fired again happened twice), not the latest state of a key;
    compaction would keep only the last alert per subject.

    Examples
    --------
    >>> specs = topic_specs(TopicSettings(replication=3, min_insync_replicas=2))
    >>> [(s.name, s.replication_factor, s.topic_configs) for s in specs][2]
    ('enterprise-scores', 3, {'min.insync.replicas': '2', 'cleanup.policy': 'compact'})
    >>> specs[-1].name, specs[-1].topic_configs
    ('risk-alerts', {'min.insync.replicas': '2'})
    """
    base = {} if topics.min_insync_replicas is None else {"min.insync.replicas": str(topics.min_insync_replicas)}
    compact = {**base, "cleanup.policy": "compact"}
    return [
        NewTopic(topics.invoices, topics.partitions, topics.replication, topic_configs=dict(base)),
        NewTopic(topics.dlq, topics.partitions, topics.replication, topic_configs=dict(base)),
        NewTopic(topics.scores, topics.partitions, topics.replication, topic_configs=compact),
        NewTopic(topics.credit_lines, topics.partitions, topics.replication, topic_configs=dict(compact)),
        NewTopic(topics.allocations, 1, topics.replication, topic_configs=dict(base)),
        NewTopic(topics.alerts, topics.partitions, topics.replication, topic_configs=dict(base)),
    ]


async def create_topics(kafka: KafkaSettings, specs: Sequence[NewTopic], *, exist_ok: bool = True,
                        timeout_s: float = 30.0) -> list[str]:
    """Create these topics and wait until every partition has a leader (so producers do not race creation).

    The one place riskmon creates topics (the worker, ``riskmon topics create``, the tests' and the
    benchmarks' fixtures). Returns the names created; with ``exist_ok`` a topic that exists already
    is left as it is, else it is an error.

    Raises
    ------
    BrokerUnavailable
        When the broker cannot be reached, refuses a topic, or a partition has no leader in time.
    """
    admin = AIOKafkaAdminClient(request_timeout_ms=max(1000, int(timeout_s * 1000)), **client_kwargs(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics()) if exist_ok else set()
        wanted = [spec for spec in specs if spec.name not in existing]
        if wanted:
            try:
                response = await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a second worker won the race
                if not exist_ok:
                    raise
                response = None
            allowed = {0, 36} if exist_ok else {0}  # 36: TOPIC_ALREADY_EXISTS (another worker won the race)
            errors = [e for e in (response.to_object().get("topic_errors", []) if response is not None else [])
                      if e.get("error_code", 0) not in allowed]
            if errors:
                raise BrokerUnavailable(f"creating topics on {kafka.bootstrap} failed: {errors}", retriable=False)
        if wanted:
            await await_leaders(admin, {spec.name: spec.num_partitions for spec in wanted}, timeout_s)
        return [spec.name for spec in wanted]
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics on {kafka.bootstrap}: {exc!r}; is Kafka up (scripts/services up)?") from exc
    finally:
        await admin.close()


async def await_leaders(admin: AIOKafkaAdminClient, partitions: Mapping[str, int],
                        timeout_s: float) -> dict[str, dict[int, tuple[int, int]]]:
    """Describe the topics until each has its number of ``partitions``, every one with a leader; then per
    topic, partition -> (leader node id, number of replicas).

    A topic just created may be unknown for a moment to the broker ``admin`` asks (on a cluster the
    metadata reaches each broker in its own time).

    Raises
    ------
    BrokerUnavailable
        When that is not seen within ``timeout_s``, with the last answer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(list(partitions))
        leaders = {d["topic"]: {p["partition"]: (p.get("leader", -1), len(p.get("replicas", [])))
                                for p in d.get("partitions", [])}
                   for d in described if d.get("error_code", 0) == 0}
        if all(len(leaders.get(topic, {})) == n and all(leader >= 0 for leader, _ in leaders[topic].values())
               for topic, n in partitions.items()):
            return leaders
        if loop.time() >= deadline:
            raise BrokerUnavailable(f"topics {list(partitions)} not ready after {timeout_s} s: {described}")
        await asyncio.sleep(0.05)


async def ensure_topics(kafka: KafkaSettings, topics: TopicSettings) -> list[str]:
    """Create the missing topics of the settings; returns the names created (existing ones are left as they are)."""
    return await create_topics(kafka, topic_specs(topics))


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
    """Send every ``(key, event)`` and wait until all are acknowledged by the broker.

    Raises
    ------
    PublishFailed
        When the broker did not acknowledge them all; ``retriable`` follows aiokafka's verdict
        (a broker that is down or electing a leader: retriable; a message over the size limit: not).
    """
    if not items:
        return
    try:
        futures = [await producer.send(topic, encode(value), key=encode_key(key)) for key, value in items]
        await asyncio.gather(*futures)
    except KafkaError as exc:
        raise PublishFailed(f"publishing {len(items)} messages to {topic} failed: {exc!r}",
                            retriable=bool(getattr(exc, "retriable", False)) or _transient(exc)) from exc


def _transient(exc: KafkaError) -> bool:
    """Errors aiokafka does not flag retriable but that only mean 'the broker is not there yet'."""
    return isinstance(exc, (KafkaTimeoutError, KafkaConnectionError))


class ProducerHandle:
    """The one producer a worker publishes through, replaced by a new one when its state is lost.

    aiokafka's idempotent producer stops for good on :data:`PRODUCER_STATE_LOST` (a broker that came
    back from an outage without the producer's sequence numbers answers ``OutOfOrderSequenceNumber``);
    the handle then closes it and starts a fresh one (a new producer id) on the next publish, so a
    Kafka outage of any length ends with the worker publishing again. A message the dead producer may
    have written is written again (at least once; consumers of the outputs are idempotent by key).
    """

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self.producer = factory()
        self._started = False
        self.replaced = 0

    async def start(self) -> None:
        await self.producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self.producer.stop()
            self._started = False

    async def ready(self) -> AIOKafkaProducer:
        """The producer, started; raises :class:`PublishFailed` (retriable) while no broker answers."""
        if not self._started:
            try:
                await self.producer.start()
            except BaseException as exc:  # a broker still away, or a caller's timeout cancelling the start
                failed, self.producer = self.producer, self._factory()  # the next try builds anew
                with contextlib.suppress(Exception):
                    await failed.stop()  # close what start() opened
                if isinstance(exc, KafkaError):
                    raise PublishFailed(f"starting a new producer failed: {exc!r}", retriable=True) from exc
                raise
            self._started = True
        return self.producer

    async def replace(self, why: BaseException) -> None:
        """Close the dead producer; the next :meth:`ready` starts its successor."""
        old, self.producer, self._started = self.producer, self._factory(), False
        self.replaced += 1
        log.warning("producer state lost (%r); replacing the producer (a new producer id)", why)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), 10.0)


def _dead(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's sender task has ended (aiokafka fails every later send)."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


class KafkaPublisher(Generic[T]):
    """:class:`streams.ports.BatchPublisher` onto one topic through the worker's :class:`ProducerHandle`."""

    def __init__(self, handle: ProducerHandle, topic: str) -> None:
        self.handle, self.topic = handle, topic

    async def publish_many(self, items: Sequence[tuple[str, T]]) -> None:
        producer = await self.handle.ready()
        try:
            await publish_many(producer, self.topic, items)
        except PublishFailed as exc:
            if isinstance(exc.__cause__, PRODUCER_STATE_LOST) or _dead(producer):
                if producer is self.handle.producer:  # not yet replaced by another topic's publisher
                    await self.handle.replace(exc.__cause__ or exc)
                raise PublishFailed(f"{exc} (the producer was replaced; retrying)", retriable=True) from exc
            raise


async def read_topic(kafka: KafkaSettings, topic: str, *, timeout_s: float = 10.0,
                     strict: bool = False) -> list[tuple[str | None, bytes, int]]:
    """Every message now in ``topic`` (all partitions, from the start to the current end), as (key, value, timestamp_ms).

    The one way riskmon reads a topic to its end (with the settings' TLS/SASL). A tombstone's value
    is ``b""``. By default a missing topic reads as empty and a read that runs out of time returns
    what it has; with ``strict`` both raise :class:`BrokerUnavailable`, as does a broker that cannot
    be reached.
    """
    consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=max(1000, int(timeout_s * 1000)), **client_kwargs(kafka))
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise BrokerUnavailable(f"cannot reach Kafka at {kafka.bootstrap}: {type(exc).__name__} "
                                "(is it up? scripts/services up)") from None
    out: list[tuple[str | None, bytes, int]] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for a topic not yet known
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            if strict:
                raise BrokerUnavailable(f"topic {topic!r} does not exist on {kafka.bootstrap}", retriable=False)
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
                    if m.offset < end[tp]:
                        out.append((m.key.decode() if m.key is not None else None, m.value or b"", m.timestamp))
                if messages and messages[-1].offset + 1 >= end[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        if remaining and strict:
            raise BrokerUnavailable(f"timed out reading {topic} after {timeout_s:.0f} s ({len(out)} messages read)")
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
