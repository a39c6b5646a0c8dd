"""The live worker: a faust-streaming app (leader-only allocator timer, lifecycle, signals) around an
aiokafka ingest loop (invoices -> Redis features -> rescoring -> scores), built by :func:`create_app`.

Why the hot path is not a faust agent: faust-streaming 0.15's per-event stream machinery
(one channel hand-off and ``asyncio.wait`` per message) measured ~3 000 messages/s on
this machine with an agent that did nothing (``stream.take_events`` or ``stream.events``),
against ~210 000/s for a plain aiokafka consumer on the same topic, which rules out the
30 % throughput target. So the ingest loop consumes with aiokafka ``getmany`` in the
consumer group ``kafka.group_id`` and commits offsets by hand *after* the batch's Redis
write and the publication of its scores and dead letters (at-least-once; the Redis fold is
idempotent, so redelivery after a crash never double-counts). faust keeps what it does
well: the worker lifecycle and SIGTERM handling, and leader election for the allocator
timer (``@app.timer(on_leader=True)``).

All store and model work of a batch runs in one executor thread, through the same pure
functions as the backtest (:func:`streams.pipeline.process_batch`,
:func:`streams.pipeline.run_allocation`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.scoring import Scorer
from streams.adapters.kafka import client_kwargs, make_producer, publish_many
from streams.codecs import decode_key
from streams.drift import ScoreDriftWatch
from streams.errors import StreamError
from streams.events import AllocationSummary, EnterpriseScore
from streams.metrics import Metrics
from streams.pipeline import (Allocate, BatchOutcome, Source, allocation_id_for, process_batch, rescore, run_allocation,
                              stale_score_ids)
from streams.ports import CreditLineStore, EnterpriseRegistry, FeatureStore, ScoreStore
from streams.settings import Settings

log = logging.getLogger("riskmon.worker")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class WorkerContext:
    """Everything a worker talks to, built once in ``main()`` and passed down."""

    settings: Settings
    features: FeatureStore
    scores: ScoreStore
    lines: CreditLineStore
    registry: EnterpriseRegistry
    scorer: Scorer
    allocate: Allocate
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], dt.datetime] = utc_now
    drift: ScoreDriftWatch = field(default_factory=ScoreDriftWatch)


class IngestLoop:
    """Consume ``invoices`` in micro-batches, fold into the feature store, rescore, publish, commit."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskmon-batch")
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.processed = 0
        self.batches = 0
        self.last_batch_at: float | None = None

    async def start(self) -> None:
        s = self.ctx.settings
        self.producer = make_producer(s.kafka)
        self.consumer = AIOKafkaConsumer(
            group_id=s.kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.worker.batch_size,
            fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=300_000,
            **client_kwargs(s.kafka),
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([s.topics.invoices], listener=_Rebalance(self))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in flight (its offsets are committed), then close the clients."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("stopping with a batch still in flight; its messages will be redelivered")
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        """Loop until :meth:`stop`."""
        assert self.consumer is not None, "start() first"  # noqa: S101 - programming error, not input
        within_ms = int(self.ctx.settings.worker.batch_within_s * 1000)
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=within_ms, max_records=self.ctx.settings.worker.batch_size)
            if not batch:
                continue
            self._idle.clear()
            try:
                await self.handle(batch)
            finally:
                self._idle.set()

    async def handle(self, batch: dict[TopicPartition, list[Any]]) -> BatchOutcome:
        """Process one polled batch; offsets are committed only after everything it produced is acknowledged."""
        ctx, m = self.ctx, self.ctx.metrics
        t0 = time.perf_counter()
        messages = [(msg.value or b"", Source(msg.topic, msg.partition, msg.offset, decode_key(msg.key)))
                    for msgs in batch.values() for msg in msgs]
        produced_ms = [msg.timestamp for msgs in batch.values() for msg in msgs]
        outcome = await self._process_with_retry(messages)
        t1 = time.perf_counter()
        s = ctx.settings.topics
        assert self.producer is not None  # noqa: S101
        await publish_many(self.producer, s.dlq, [(d.key or "", d) for d in outcome.dead_letters])
        await publish_many(self.producer, s.scores, [(sc.enterprise_id, sc) for sc in outcome.scores])
        published_ms = time.time() * 1000
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs}
        try:
            assert self.consumer is not None  # noqa: S101
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:  # a rebalance took the partitions: the new owner redoes them
            log.warning("offset commit failed (%r) for %s; the batch will be redelivered (idempotent)", exc,
                        {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})
        # metrics
        m.batches.inc()
        m.events.labels(outcome="applied").inc(outcome.applied.applied)
        m.events.labels(outcome="duplicate").inc(outcome.applied.duplicates)
        m.events.labels(outcome="dead").inc(len(outcome.dead_letters))
        for d in outcome.dead_letters:
            m.dead_letter(d.reason)
            log.warning("dead letter topic=%s partition=%s offset=%s reason=%s", d.source_topic, d.source_partition,
                        d.source_offset, d.reason)
        m.scores.inc(len(outcome.scores))
        for alarm in ctx.drift.observe(outcome.scores):
            m.drift_alarms.labels(signal=str(alarm.key)).inc()
            log.warning("drift alarm on %s at event time %s after %d scores (value %.3f)", alarm.key, alarm.t,
                        alarm.n_seen, alarm.value)
        if outcome.scores:
            m.freshness(max(0.0, (published_ms - p) / 1000) for p in produced_ms if p and p > 0)
        m.batch_latency.observe(time.perf_counter() - t0)
        m.scoring_latency.observe(t1 - t0)
        if outcome.applied.watermark is not None:
            m.watermark.set((outcome.applied.watermark - dt.date(1970, 1, 1)).days)
        assigned = self.consumer.assignment() if self.consumer is not None else set()
        for tp, msgs in batch.items():
            if tp not in assigned or self.consumer is None:  # revoked by a rebalance meanwhile
                continue
            hw = self.consumer.highwater(tp)
            if hw is not None and msgs:
                m.lag.labels(partition=str(tp.partition)).set(max(0, hw - msgs[-1].offset - 1))
        self.processed += len(messages)
        self.batches += 1
        self.last_batch_at = time.time()
        return outcome

    async def _process_with_retry(self, messages: list[tuple[bytes, Source]]) -> BatchOutcome:
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                return await loop.run_in_executor(
                    self._executor,
                    lambda: process_batch(messages, ctx.features, ctx.scores, ctx.registry, ctx.scorer,
                                          now=ctx.clock(), score_batch_size=ctx.settings.worker.score_batch_size))
            except StreamError as exc:
                first, last = messages[0][1], messages[-1][1]
                log.error("batch failed topic=%s partition=%s offset=%s..%s: %s", first.topic, first.partition,
                          first.offset, last.offset, exc)
                if not exc.retriable or self._stopping.is_set():
                    raise
                self.ctx.metrics.store_retries.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:
                first, last = messages[0][1], messages[-1][1]
                log.exception("batch failed topic=%s partition=%s offset=%s..%s: %r", first.topic, first.partition,
                              first.offset, last.offset, exc)
                raise


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On any rebalance, forget cached features: another worker may have written those enterprises."""

    def __init__(self, ingest: IngestLoop) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._invalidate("revoked", revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._invalidate("assigned", assigned)

    def _invalidate(self, what: str, tps: Any) -> None:
        invalidate = getattr(self.ingest.ctx.features, "invalidate", None)
        if invalidate is not None:
            invalidate()
        log.info("partitions %s: %s", what, sorted(f"{tp.topic}/{tp.partition}" for tp in tps))


def _fingerprint(scores: dict[str, EnterpriseScore]) -> tuple[int, str]:
    """What the allocator last decided on: how many scores, and the newest of them."""
    return len(scores), max(x.scored_at.isoformat() for x in scores.values())


class AllocatorStep:
    """One allocator run over the current scores; publishes changed lines and the summary."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._last_fingerprint: tuple[int, str] | None = None
        self._lock = asyncio.Lock()
        self.last_summary: AllocationSummary | None = None

    async def run(self, producer: AIOKafkaProducer, *, force: bool = False) -> AllocationSummary | None:
        async with self._lock:
            ctx, s = self.ctx, self.ctx.settings
            loop = asyncio.get_running_loop()

            def decide() -> Any:
                scores = ctx.scores.all()
                if len(scores) < s.allocator.min_scores:
                    return None
                fingerprint = _fingerprint(scores)
                if fingerprint == self._last_fingerprint and not force:
                    return None
                as_of = ctx.features.watermark() or max(x.as_of for x in scores.values())
                now = ctx.clock()
                # Scores of enterprises that stopped invoicing were computed in an earlier month: rescore
                # them as of the watermark first (reading Redis itself, not this worker's cache: other
                # workers own most of these partitions), so the lines equal the backtest's.
                refreshed = rescore(stale_score_ids(scores.values(), as_of), getattr(ctx.features, "inner", ctx.features),
                                    ctx.registry, ctx.scorer, as_of=as_of, now=now)
                if refreshed:
                    ctx.scores.put_many(refreshed)
                    scores = {**scores, **{x.enterprise_id: x for x in refreshed}}
                    fingerprint = _fingerprint(scores)
                outcome = run_allocation(
                    scores, ctx.lines.all(), ctx.allocate, ctx.registry, budget_yuan=s.allocator.budget_yuan,
                    solver=s.allocator.solver, as_of=as_of, now=now, allocation_id=allocation_id_for(as_of, now),
                    bundle_version=ctx.scorer.version, seed=s.allocator.seed)
                return fingerprint, outcome, refreshed

            decided = await loop.run_in_executor(None, decide)
            if decided is None:
                return None
            fingerprint, outcome, refreshed = decided
            await publish_many(producer, s.topics.scores, [(x.enterprise_id, x) for x in refreshed])
            await publish_many(producer, s.topics.credit_lines, [(line.enterprise_id, line) for line in outcome.changed])
            await publish_many(producer, s.topics.allocations, [(outcome.summary.allocation_id, outcome.summary)])
            # remembered only once published: a crash in between republishes the same decisions
            await loop.run_in_executor(None, ctx.lines.put_many, outcome.changed)
            self._last_fingerprint = fingerprint
            m = ctx.metrics
            m.allocations.inc()
            m.allocator_runtime.set(outcome.summary.runtime_s)
            m.allocator_gap.set(outcome.summary.gap or 0.0)
            m.allocated.set(outcome.summary.total_amount_yuan)
            m.lines_changed.inc(len(outcome.changed))
            m.unknown_enterprises.set(outcome.n_unknown)
            self.last_summary = outcome.summary
            log.info("allocation %s as of %s: %d lines, %.0f yuan, %d changed, solver %s", outcome.summary.allocation_id,
                     outcome.summary.as_of, outcome.summary.n_lines, outcome.summary.total_amount_yuan,
                     outcome.summary.n_changed, outcome.summary.solver)
            return outcome.summary


def build_context(settings: Settings) -> WorkerContext:
    """Connect to Redis, seed the registry from the data set's ``enterprises.csv``, load the bundle and churn.

    Raises
    ------
    FileNotFoundError, models.errors.ModelError, allocator.AllocatorError, StreamError
        With a message saying what is missing.
    """
    from allocator import ChurnCurves
    from models.bundle import load_bundle
    from streams.adapters.allocation import make_allocate
    from streams.adapters.memory import InMemoryRegistry
    from streams.adapters.redis_store import (RedisCreditLineStore, RedisFeatureStore, RedisRegistry,
                                              RedisScoreStore, connect)

    client = connect(settings.redis)
    prefix = settings.redis.prefix
    registry = RedisRegistry(client, prefix)
    source = InMemoryRegistry.from_data_dir(settings.data_dir)
    registry.put_many([info for e in sorted(source.enterprise_ids()) if (info := source.get(e)) is not None])
    scorer = load_bundle(settings.bundle_dir)
    churn = ChurnCurves.from_csv(settings.data_dir / "churn.csv")
    from streams.adapters.cached import CachedFeatureStore

    features = RedisFeatureStore(client, prefix, dedup_window_months=settings.redis.dedup_window_months)
    return WorkerContext(settings=settings, features=CachedFeatureStore(features),
                         scores=RedisScoreStore(client, prefix), lines=RedisCreditLineStore(client, prefix),
                         registry=registry, scorer=scorer, allocate=make_allocate(churn))


def create_app(settings: Settings, ctx: WorkerContext) -> Any:
    """The faust app of one worker: the ingest loop as a service, the leader-only allocator timer, /health."""
    import faust
    import mode

    from streams.health import HealthServer

    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka.bootstrap}",
        broker_credentials=_faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        datadir=str(settings.state_dir / settings.app_id),
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        topic_replication_factor=settings.topics.replication,
    )
    ingest = IngestLoop(ctx)
    allocator = AllocatorStep(ctx)

    async def health() -> dict[str, Any]:
        status = "ok"
        watermark = None
        try:
            watermark = await asyncio.get_running_loop().run_in_executor(None, ctx.features.watermark)
        except StreamError as exc:
            status = f"store unavailable: {exc}"
        assigned = sorted(tp.partition for tp in ingest.consumer.assignment()) if ingest.consumer else []
        return {"status": status, "leader": app.is_leader(), "partitions": assigned, "processed": ingest.processed,
                "batches": ingest.batches, "watermark": watermark, "bundle_version": ctx.scorer.version,
                "last_allocation": allocator.last_summary.allocation_id if allocator.last_summary else None,
                "freshness": ctx.metrics.quantiles(),
                "drift_alarms": {key: len(mon.alarms) for key, mon in sorted(ctx.drift.monitors.items()) if mon.alarms}}

    async def allocate_now() -> dict[str, Any]:
        if not app.is_leader() or ingest.producer is None:
            return {"ran": False, "why": "not the leader"}
        summary = await allocator.run(ingest.producer, force=True)
        return {"ran": summary is not None, "summary": summary.model_dump(mode="json") if summary else None}

    server = HealthServer(settings.worker.metrics_port, ctx.metrics, health, allocate_now) \
        if settings.worker.metrics_port else None

    class IngestService(mode.Service):
        async def on_start(self) -> None:
            await ingest.start()
            if server is not None:
                await server.start()

        @mode.Service.task
        async def _consume(self) -> None:
            await ingest.run()

        async def on_stop(self) -> None:
            await ingest.stop()
            if server is not None:
                await server.stop()

    app.service(IngestService)

    @app.timer(settings.allocator.interval_s, on_leader=True)
    async def allocate_timer() -> None:
        if ingest.producer is not None:
            try:
                await allocator.run(ingest.producer)
            except Exception:  # the next tick tries again; the worker keeps ingesting
                log.exception("allocator run failed")

    app.riskmon = {"ingest": ingest, "allocator": allocator, "server": server}  # type: ignore[attr-defined]
    return app


def _faust_credentials(settings: Settings) -> Any:
    import faust

    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    ssl_context = client_kwargs(k).get("ssl_context")
    if k.security_protocol.startswith("SASL"):
        password = k.sasl_password.get_secret_value() if k.sasl_password else ""
        return faust.SASLCredentials(username=k.sasl_username or "", password=password,
                                     mechanism=k.sasl_mechanism or "PLAIN", ssl_context=ssl_context)
    return faust.SSLCredentials(ssl_context)
