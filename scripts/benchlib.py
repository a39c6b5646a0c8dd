"""Shared helpers for riskmon's Kafka benchmarks: encode the real invoices, produce them, read them back.

Importable by path from other benchmark scripts::

    sys.path.insert(0, str(REPO / "scripts"))
    import benchlib
    records = benchlib.load_invoice_records(limit=200_000)        # [(key, value)], cached on disk
    asyncio.run(benchlib.create_topic(bootstrap, topic, 4))
    produced = asyncio.run(benchlib.produce(bootstrap, topic, records))
    baseline = asyncio.run(benchlib.consume_baseline(bootstrap, topic))   # plain aiokafka consumer

Every client is built from the project's Kafka settings (:func:`kafka_kwargs`: SASL/TLS from the
``RISKMON_*`` environment and the services' credentials file, as every riskmon command), so the
benchmarks run against the locked-down services as they are.

Messages are the real invoices as JSON :class:`streams.events.InvoiceEvent` (``model_dump_json``),
keyed by enterprise id and partitioned with Kafka's default murmur2 partitioner, exactly as a keyed
``AIOKafkaProducer.send`` would place them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO / "var" / "bench"

Record = tuple[bytes, bytes]


# ----------------------------------------------------------------------------- clients


def kafka_settings(bootstrap: str) -> Any:
    """The project's KafkaSettings (SASL/TLS from the environment and the credentials file) at ``bootstrap``.

    Another broker than the one the settings name (e.g. the three-broker cluster started for a
    benchmark) gets plain settings: the credentials file's lines are not for it.
    """
    from streams.settings import KafkaSettings, Settings

    kafka = Settings().kafka
    if bootstrap.split(",")[0].strip() != kafka.bootstrap.split(",")[0].strip():
        return KafkaSettings(bootstrap=bootstrap)
    return kafka.model_copy(update={"bootstrap": bootstrap})


def kafka_kwargs(bootstrap: str) -> dict[str, Any]:
    """aiokafka keyword arguments for ``bootstrap`` with the project's security settings (client_kwargs)."""
    from streams.adapters.kafka import client_kwargs

    return client_kwargs(kafka_settings(bootstrap))


# ----------------------------------------------------------------------------- the real invoices


def iter_invoice_records(data_dir: Path | None = None, limit: int | None = None) -> Iterator[Record]:
    """(enterprise id, InvoiceEvent JSON) for every valid invoice row, in file order (rejected rows skipped)."""
    from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events

    n = 0
    for event in iter_events(data_dir or DEFAULT_DATA_DIR):
        if isinstance(event, RejectedRow):
            continue
        yield event.enterprise_id.encode(), event.model_dump_json().encode()
        n += 1
        if limit is not None and n >= limit:
            return


def _data_fingerprint(data_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(data_dir)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    from streams.events import EVENT_SCHEMA_VERSION

    h.update(f"schema={EVENT_SCHEMA_VERSION}".encode())
    return h.hexdigest()[:16]


def load_invoice_records(
    data_dir: Path | None = None, limit: int | None = None, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> list[Record]:
    """All (or the first ``limit``) invoice records, encoded once and cached as ``key<TAB>json`` lines.

    Encoding the 1.1 M real invoices through pydantic takes about two minutes; the cache (~350 MB,
    under ``var/bench/``) makes later runs start in seconds. Compact JSON never contains a raw tab
    or newline, so the line format is unambiguous. ``cache_dir=None`` disables the cache.
    """
    from streams.dataset import DEFAULT_DATA_DIR

    data_dir = data_dir or DEFAULT_DATA_DIR
    if cache_dir is None:
        return list(iter_invoice_records(data_dir, limit))
    cache = cache_dir / f"invoices-{_data_fingerprint(data_dir)}.tsv"
    if not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            for key, value in iter_invoice_records(data_dir):
                fh.write(key + b"\t" + value + b"\n")
        tmp.replace(cache)
    records: list[Record] = []
    with cache.open("rb") as fh:
        for line in fh:
            key, _, value = line.rstrip(b"\n").partition(b"\t")
            records.append((key, value))
            if limit is not None and len(records) >= limit:
                break
    return records


# ----------------------------------------------------------------------------- topics


async def create_topic(
    bootstrap: str, topic: str, partitions: int = 4, config: dict[str, str] | None = None, timeout_s: float = 30.0,
    replication: int = 1,
) -> None:
    """Create ``topic`` (``replication`` copies of each partition) and wait until each partition has a leader
    (:func:`streams.adapters.kafka.create_topics`)."""
    from aiokafka.admin import NewTopic

    from streams.adapters.kafka import create_topics

    spec = NewTopic(topic, num_partitions=partitions, replication_factor=replication, topic_configs=config or {})
    await create_topics(kafka_settings(bootstrap), [spec], exist_ok=False, timeout_s=timeout_s)


async def delete_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_kwargs(bootstrap))
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def fresh_topic_name(prefix: str = "bench-invoices") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- produce


@dataclass(frozen=True)
class ProduceStats:
    topic: str
    partitions: int
    messages: int
    bytes: int  # key + value bytes
    seconds: float
    msgs_per_s: float
    mb_per_s: float
    compression: str
    acks: int | str


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    acks: int | str = 1,
    compression: str | None = None,
    batch_bytes: int = 512 * 1024,
    max_in_flight: int = 64,
) -> ProduceStats:
    """Produce ``records`` keyed, as fast as aiokafka allows: one explicit batch per partition.

    The partition of each key is Kafka's default (murmur2 of the key), the same as
    ``AIOKafkaProducer.send(topic, value, key=key)``. ``acks=1`` waits for the leader's write.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(
        **kafka_kwargs(bootstrap),
        acks=acks,
        compression_type=compression,
        max_batch_size=batch_bytes,
        max_request_size=max(batch_bytes * 2, 1048576),
        linger_ms=5,
    )
    await producer.start()
    try:
        parts = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        batches: dict[int, Any] = {}
        pending: list[asyncio.Future[Any]] = []
        n = 0
        nbytes = 0
        start = time.perf_counter()

        async def flush(p: int) -> None:
            batch = batches.pop(p)
            fut = await producer.send_batch(batch, topic, partition=p)
            pending.append(fut)
            if len(pending) >= max_in_flight:
                await asyncio.gather(*pending)
                pending.clear()

        for key, value in records:
            p = partitioner(key, parts, parts)
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                await flush(p)
                batch = batches[p] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record of {len(key) + len(value)} bytes exceeds batch_bytes={batch_bytes}")
            n += 1
            nbytes += len(key) + len(value)
        for p in list(batches):
            await flush(p)
        await asyncio.gather(*pending)
        seconds = time.perf_counter() - start
    finally:
        await producer.stop()
    return ProduceStats(
        topic=topic,
        partitions=len(parts),
        messages=n,
        bytes=nbytes,
        seconds=round(seconds, 3),
        msgs_per_s=round(n / seconds, 1),
        mb_per_s=round(nbytes / seconds / 1e6, 2),
        compression=compression or "none",
        acks=acks,
    )


# ----------------------------------------------------------------------------- consume


@dataclass(frozen=True)
class ConsumeStats:
    topic: str
    mode: str  # "getmany" (batches) or "iter" (async for, one message at a time)
    decode: str  # "none", "json" (json.loads) or "pydantic" (InvoiceEvent.model_validate_json)
    messages: int
    bytes: int
    seconds: float  # from the first message received to the last (steady-state reading)
    wall_seconds: float  # from consumer start (group join included) to the last message
    msgs_per_s: float
    mb_per_s: float


async def end_offsets_total(bootstrap: str, topic: str) -> int:
    """How many messages ``topic`` holds (sum of end offsets minus beginning offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka_kwargs(bootstrap))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - first use of the topic
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        await consumer.stop()


async def consume_baseline(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    *,
    mode: str = "getmany",
    decode: str = "none",
    group_id: str | None = None,
    timeout_s: float = 600.0,
) -> ConsumeStats:
    """Read every message of ``topic`` with a plain aiokafka consumer in a fresh consumer group.

    The consumer joins a new group (like a worker), starts from the earliest offset, and reads
    until it has ``expected`` messages (default: all the topic holds now). Nothing is processed
    beyond the optional decode, so this is the ceiling a worker on the same broker can approach.
    """
    import json

    from aiokafka import AIOKafkaConsumer

    if expected is None:
        expected = await end_offsets_total(bootstrap, topic)
    validate = None
    if decode == "pydantic":
        from streams.events import InvoiceEvent

        validate = InvoiceEvent.model_validate_json
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_kwargs(bootstrap),
        group_id=group_id or f"bench-baseline-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    wall_start = time.perf_counter()
    await consumer.start()
    n = 0
    nbytes = 0
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        if mode == "getmany":
            while n < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10000)
                for msgs in batches.values():
                    if first is None and msgs:
                        first = time.perf_counter()
                    for m in msgs:
                        nbytes += len(m.value) + (len(m.key) if m.key else 0)
                        if decode == "json":
                            json.loads(m.value)
                        elif validate is not None:
                            validate(m.value)
                    n += len(msgs)
        elif mode == "iter":
            async for m in consumer:
                if first is None:
                    first = time.perf_counter()
                nbytes += len(m.value) + (len(m.key) if m.key else 0)
                if decode == "json":
                    json.loads(m.value)
                elif validate is not None:
                    validate(m.value)
                n += 1
                if n >= expected or time.monotonic() >= deadline:
                    break
        else:
            raise ValueError(f"unknown mode {mode!r}")
        end = time.perf_counter()
    finally:
        await consumer.stop()
    if n < expected:
        raise TimeoutError(f"read {n} of {expected} messages from {topic!r} within {timeout_s} s")
    seconds = end - (first or wall_start)
    return ConsumeStats(
        topic=topic,
        mode=mode,
        decode=decode,
        messages=n,
        bytes=nbytes,
        seconds=round(seconds, 3),
        wall_seconds=round(end - wall_start, 3),
        msgs_per_s=round(n / seconds, 1),
        mb_per_s=round(nbytes / seconds / 1e6, 2),
    )


def _partition_reader(
    bootstrap: str, topic: str, partitions: list[int], barrier: Any, out: Any, timeout_s: float
) -> None:
    """Child process of :func:`parallel_baseline`: read ``partitions`` from the beginning to their end."""

    async def read() -> tuple[int, int, float, float]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka_kwargs(bootstrap))
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            begin = await consumer.beginning_offsets(tps)
            expected = sum(end[tp] - begin[tp] for tp in tps)
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
            start = time.perf_counter()
            n = nbytes = 0
            deadline = time.monotonic() + timeout_s
            while n < expected and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=1000, max_records=10000)).values():
                    for m in msgs:
                        nbytes += len(m.value) + (len(m.key) if m.key else 0)
                    n += len(msgs)
            return n, nbytes, start, time.perf_counter()
        finally:
            await consumer.stop()

    try:
        out.put(("ok", partitions, *asyncio.run(read())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(("error", partitions, repr(exc)))
        barrier.abort()


def parallel_baseline(bootstrap: str, topic: str, consumers: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """``consumers`` plain aiokafka consumers in separate processes, partitions split round-robin.

    Each process reads its partitions from the beginning (getmany, no decoding); they start together
    (a barrier) and the aggregate rate is all messages over (last finish - common start). Compare it
    with ``consumers=1`` on the same topic for the plain-consumer speed-up.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    probe = asyncio.run(_partition_ids(bootstrap, topic))
    groups = [probe[i::consumers] for i in range(consumers)]
    groups = [g for g in groups if g]
    barrier = ctx.Barrier(len(groups))
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_partition_reader, args=(bootstrap, topic, g, barrier, out, timeout_s)) for g in groups
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=timeout_s + 60) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [r for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"parallel baseline failed: {errors}")
    n = sum(r[2] for r in results)
    nbytes = sum(r[3] for r in results)
    seconds = max(r[5] for r in results) - min(r[4] for r in results)
    return {
        "topic": topic,
        "consumers": len(groups),
        "partitions": [r[1] for r in results],
        "messages": n,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds, 1),
        "mb_per_s": round(nbytes / seconds / 1e6, 2),
        "per_consumer_msgs_per_s": [round(r[2] / (r[5] - r[4]), 1) for r in results],
    }


async def _partition_ids(bootstrap: str, topic: str) -> list[int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_kwargs(bootstrap))
    await admin.start()
    try:
        [desc] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in desc["partitions"])


def as_dict(stats: ProduceStats | ConsumeStats) -> dict[str, Any]:
    return asdict(stats)
