"""The live worker: a faust-streaming app (leader-only allocator timer, lifecycle, signals) around an
aiokafka ingest loop (invoices -> Redis features -> rescoring -> scores), built by :func:`create_app`.

Three layers, from the inside out:

* :mod:`streams.pipeline` decides (``fold_batch``, ``rescore``, ``decide_allocation``): pure over the ports.
* :class:`WorkerCore` folds one polled batch, rescores a window of batches (``worker.rescore_within_s``)
  or runs one allocator step: off the event loop, with backoff while Redis or Kafka is down
  (reported as ``degraded``), splitting a batch that fails for one message until that message is
  found and dead-lettered, and publishing only through :class:`streams.ports.BatchPublisher` ports.
  Unit tests drive it with in-memory fakes.
* :class:`IngestLoop` and :func:`create_app` are the Kafka shell: consume, hand each batch to the
  core, commit a window's offsets only once everything it produced is acknowledged.

Why the hot path is not a faust agent: faust-streaming 0.15's per-event stream machinery
(one channel hand-off and ``asyncio.wait`` per message) measured ~3 000 messages/s on
this machine with an agent that did nothing (``stream.take_events`` or ``stream.events``),
against ~210 000/s for a plain aiokafka consumer on the same topic. So the ingest loop consumes
with aiokafka ``getmany`` in the consumer group ``kafka.group_id`` and commits offsets by hand
(at-least-once; the Redis fold is idempotent, so redelivery after a crash never double-counts).
faust keeps what it does well, where per-event cost does not matter: the worker lifecycle and
SIGTERM handling, and leader election for the allocator timer (``@app.timer(on_leader=True)``),
in its own consumer group ``app_id``, which :func:`check_worker_settings` keeps apart from
``kafka.group_id``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.scoring import Scorer
from streams.columns import RecordBatch
from streams.decoder import make_decoder
from streams.adapters.kafka import KafkaPublisher, ProducerHandle, client_kwargs, make_producer
from streams.drift import ScoreDriftWatch
from streams.errors import PublishFailed, StoreRestarted, StreamError
from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore, RiskAlert
from streams.live_alerts import LiveAlerts
from streams.metrics import Metrics
from streams.pipeline import (Allocate, AllocationPolicy, AllocationStep, ApplyResult, BatchOutcome, Fingerprint,
                              DecodedBatch, apply_decoded, decide_allocation, decode_parts, fold_records,
                              merge_outcomes, poison_letter, record_source, rescore)
from streams.policy import IngestPolicy
from streams.ports import (AlertStateStore, BatchPublisher, CreditLineStore, EnterpriseRegistry, FeatureStore,
                           ScoreStore)
from streams.settings import Settings, TopicSettings

T = TypeVar("T")
log = logging.getLogger("riskmon.worker")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
SYNC_EVERY_S = 1.0  # an idle worker checks this often that the store has not restarted behind its back
#: A worker is catching up (and the leader defers its allocator) while more than this many messages, or more than a
#: batch, are left after a poll: with large batches "more than a batch" alone missed a backlog of several seconds.
BACKLOG_MESSAGES = 10_000
BROKER_UNREACHABLE = "no broker answers a metadata request"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SettingsConflict(StreamError):
    """Settings that cannot work together (a one-line message naming them)."""


def check_worker_settings(settings: Settings) -> None:
    """Refuse settings under which the worker's two Kafka roles would collide.

    Raises
    ------
    SettingsConflict
        When ``RISKMON_APP_ID`` (faust's group, which elects the allocator leader) equals
        ``RISKMON_KAFKA__GROUP_ID`` (the invoice consumers' group): the two use different group
        protocols and the broker would reject one with ``InconsistentGroupProtocolError``; or when
        two topic settings name the same topic.

    Examples
    --------
    >>> from streams.settings import KafkaSettings
    >>> s = Settings(_env_prefix="NOPE_", app_id="x", kafka=KafkaSettings(group_id="x"))
    >>> check_worker_settings(s)
    Traceback (most recent call last):
    ...
    streams.app.SettingsConflict: RISKMON_APP_ID and RISKMON_KAFKA__GROUP_ID are both 'x': ...
    """
    if settings.app_id == settings.kafka.group_id:
        raise SettingsConflict(
            f"RISKMON_APP_ID and RISKMON_KAFKA__GROUP_ID are both {settings.app_id!r}: the leader election (app id) "
            "and the invoice consumers (group id) need two different consumer groups; change one of them")
    names = {f: getattr(settings.topics, f) for f in ("invoices", "dlq", "scores", "credit_lines", "allocations")}
    seen: dict[str, str] = {}
    for name_field, topic in names.items():
        if topic in seen:
            raise SettingsConflict(f"RISKMON_TOPICS__{seen[topic].upper()} and RISKMON_TOPICS__{name_field.upper()} "
                                   f"are both {topic!r}: every topic setting needs its own topic")
        seen[topic] = name_field


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
    alert_states: AlertStateStore | None = None  # None: no early-warning alerts

    def policy(self) -> AllocationPolicy:
        a = self.settings.allocator
        return AllocationPolicy(budget_yuan=a.budget_yuan, solver=a.solver, seed=a.seed, min_scores=a.min_scores)


@dataclass(frozen=True)
class Outputs:
    """The worker's outputs, as publisher ports (Kafka topics in the worker, lists in tests); ``alerts`` optional."""

    dead_letters: BatchPublisher[DeadLetter]
    scores: BatchPublisher[EnterpriseScore]
    credit_lines: BatchPublisher[CreditLine]
    allocations: BatchPublisher[AllocationSummary]
    alerts: BatchPublisher[RiskAlert] | None = None

    @classmethod
    def kafka(cls, producer: ProducerHandle, topics: TopicSettings) -> Outputs:
        return cls(KafkaPublisher(producer, topics.dlq), KafkaPublisher(producer, topics.scores),
                   KafkaPublisher(producer, topics.credit_lines), KafkaPublisher(producer, topics.allocations),
                   KafkaPublisher(producer, topics.alerts))


def live_alerts(ctx: WorkerContext, publisher: BatchPublisher[RiskAlert] | None,
                in_thread: Callable[[Callable[[], Any]], Awaitable[Any]]) -> LiveAlerts | None:
    """The worker's alert hook, or None when alerts are disabled or have no state store or publisher."""
    s = ctx.settings
    if ctx.alert_states is None or publisher is None or not s.alerts.enabled:
        return None
    return LiveAlerts(publisher, ctx.alert_states, ctx.features, s.alerts.rules(), ctx.metrics, ctx.clock, in_thread)


class Record(Protocol):
    """What the core reads of a consumed message (aiokafka's ``ConsumerRecord`` has these)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


class Stopped(Exception):
    """The worker was asked to stop while waiting for a service; the batch is left uncommitted."""


@dataclass
class _Window:
    """What the batches folded since the last rescoring owe: the enterprises to rescore, as of which date, and
    the dead letters, record timestamps and message count to report once the scores are out."""

    touched: set[str] = field(default_factory=set)
    watermark: dt.date | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    timestamps_ms: list[int] = field(default_factory=list)
    messages: int = 0
    since: float | None = None  # time.monotonic() of the window's first batch; None: empty

    def add(self, outcome: BatchOutcome, messages: int, timestamps_ms: list[int]) -> None:
        self.touched.update(outcome.applied.touched)
        mark = outcome.applied.watermark
        if mark is not None and (self.watermark is None or mark > self.watermark):
            self.watermark = mark
        self.dead_letters.extend(outcome.dead_letters)
        self.timestamps_ms.extend(timestamps_ms)
        self.messages += messages
        if self.since is None:
            self.since = time.monotonic()


class WorkerCore:
    """One batch, one allocator step: off the event loop, through the ports, never fatal for a service outage.

    ``degraded`` maps a component (``store``, ``kafka``) to why it is failing now; the core keeps
    retrying with exponential backoff (``BACKOFF_FIRST_S`` up to ``BACKOFF_MAX_S``) until it works
    again or :meth:`stop` is called, and it returns from :meth:`handle` only once everything the
    batch produced was acknowledged, so the shell never commits what was not published.
    """

    def __init__(self, ctx: WorkerContext, outputs: Outputs, *, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.ctx = ctx
        self.outputs = outputs
        self.degraded: dict[str, str] = {}
        self.processed = 0
        self.batches = 0
        self.last_batch_at: float | None = None
        self.last_summary: AllocationSummary | None = None
        self._backoff_max_s = backoff_max_s
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskmon-batch")
        self._decoder = make_decoder(ctx.settings.worker.decode_process)  # pure: no store
        self._prepare = ctx.features.column_preparer()  # the store's pure first step, run in the decode process
        self._decoding: _Decoding | None = None  # the batch being decoded (its write starts with the next one)
        self._inflight: asyncio.Future[BatchOutcome] | None = None  # the batch whose store write is under way
        self._allocating = asyncio.Lock()
        self._last_fingerprint: Fingerprint | None = None
        self._window = _Window()
        self.policy = IngestPolicy.from_settings(ctx.settings.ingest)
        for component in ("store", "kafka"):  # the series exist (at 0) before anything fails
            ctx.metrics.degraded.labels(component=component).set(0)
        self.alerts = live_alerts(ctx, outputs.alerts, self._in_thread)

    # ------------------------------------------------------------------ lifecycle and state

    def stop(self) -> None:
        """Ask every wait for a service to give up (:class:`Stopped`)."""
        self._stopping.set()

    async def warm_up(self) -> None:
        """Start the decode process and its imports now (~1 s), not on the first batch.

        A process that cannot start (no ``/dev/shm`` for its semaphores, a process limit) is no reason to
        stop: the worker says so and decodes on a thread instead.
        """
        empty = RecordBatch("", [], [], [], [], [])
        try:
            await asyncio.get_running_loop().run_in_executor(self._decoder, decode_parts, empty, self.ctx.clock(),
                                                             self.policy, self._prepare)  # imports the store's module
        except Exception as exc:  # noqa: BLE001 - any failure to start means: decode here
            log.warning("the decode process could not start (%s); decoding on a thread of the worker", exc)
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = make_decoder(False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)

    @property
    def status(self) -> str:
        return "degraded" if self.degraded else "ok"

    def degrade(self, component: str, why: object) -> None:
        text = str(why).splitlines()[0][:300] if str(why) else repr(why)
        if self.degraded.get(component) != text:
            log.warning("degraded: %s: %s (retrying with backoff)", component, text)
        self.degraded[component] = text
        self.ctx.metrics.degraded.labels(component=component).set(1)

    def recover(self, component: str) -> None:
        if self.degraded.pop(component, None) is not None:
            log.info("recovered: %s", component)
            self.ctx.metrics.degraded.labels(component=component).set(0)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the core's one worker thread (batches and allocator steps never overlap)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _backoff(self, delay_s: float) -> float:
        """Sleep ``delay_s`` unless stopped; returns the next delay."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay_s)
        except TimeoutError:
            return min(delay_s * 2, self._backoff_max_s)
        raise Stopped

    # ------------------------------------------------------------------ one batch

    async def handle(self, records: Sequence[Record]) -> BatchOutcome:
        """Fold one polled batch and rescore what it touched (:meth:`fold` then :meth:`flush`).

        Returns once its dead letters and scores are acknowledged.

        Raises
        ------
        Stopped
            When :meth:`stop` was called while waiting for Redis or Kafka: nothing may be committed.
        """
        folded = await self.fold(records)
        scored = await self.flush()
        return BatchOutcome(folded.valid, folded.dead_letters, folded.applied, scored, folded.messages)

    def drop_window(self) -> None:
        """Forget the folded batches not yet rescored: the store lost them and they will be read again."""
        self._window = _Window()
        if self._decoding is not None:
            self._decoding.future.cancel()
            self._decoding = None
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None

    @property
    def pending(self) -> bool:
        """Whether folded batches wait for their rescoring (their offsets must not be committed yet)."""
        return self._window.since is not None or self._decoding is not None or self._inflight is not None

    def flush_in_s(self) -> float:
        """Seconds until the pending window is due for rescoring (0: due now; ``inf``: nothing pending)."""
        since = self._window.since
        if since is None:
            return float("inf")
        return max(0.0, since + self.ctx.settings.worker.rescore_within_s - time.monotonic())

    async def fold(self, records: Sequence[Record]) -> BatchOutcome:
        """Ingest and fold one polled batch, publish its dead letters; its rescoring joins the pending window.

        :meth:`begin_fold` then :meth:`settle`.

        Raises
        ------
        Stopped
            As :meth:`handle`.
        """
        await self.begin_fold(records)
        outcome = await self.settle()
        assert outcome is not None  # noqa: S101 - begin_fold left a batch in flight
        return outcome

    async def begin_fold(self, records: Sequence[Record]) -> None:
        """Start decoding this batch and return: the shell polls the next batch meanwhile.

        Three stages overlap: batch n + 1 is polled while batch n is decoded (in the decode process) and
        batch n - 1 is written to the store (on the core's thread); each call moves every batch one stage
        on. :meth:`settle` (and :meth:`flush`) finish them all and raise what a write raised; batches are
        written in poll order, one at a time.
        """
        t0 = time.perf_counter()
        batch = RecordBatch(records[0].topic if records else "", [r.value for r in records],
                            [r.key for r in records], [r.partition for r in records], [r.offset for r in records],
                            [r.timestamp or 0 for r in records])
        previous, self._decoding = self._decoding, self._decode(batch, t0)
        if previous is not None:
            await self._start_write(previous)
        if not self.ctx.settings.worker.overlap_writes:  # one batch at a time, from decode to store
            outcome = await self.settle()
            assert outcome is not None  # noqa: S101 - this batch was just started
            self._inflight = asyncio.ensure_future(_done(outcome))

    def _decode(self, batch: RecordBatch, t0: float) -> _Decoding:
        decoder = self._decoder
        future: asyncio.Future[Any]
        try:
            future = asyncio.get_running_loop().run_in_executor(
                decoder, partial(decode_parts, batch, self.ctx.clock(), self.policy, self._prepare))
        except Exception as exc:  # noqa: BLE001 - a broken pool refuses at once: the write below sees it
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return _Decoding(batch, future, t0, decoder)

    async def _start_write(self, decoding: _Decoding) -> None:
        """Wait for the batch's decode, then for the write before it, and start its own write."""
        decoded: DecodedBatch | None
        try:
            decoded = DecodedBatch(decoding.batch, *await decoding.future)
        except BrokenProcessPool as exc:  # the decode process died (killed, out of memory): a new one, next batch
            log.warning("the decode process failed (%s); this batch goes the sequential way", exc)
            if decoding.decoder is self._decoder:  # the batches behind it on the same process fail too: once
                log.warning("starting another decode process")
                self._decoder.shutdown(wait=False, cancel_futures=True)
                self._decoder = make_decoder(True)
            decoded = None
        except Exception:  # noqa: BLE001 - the sequential path retries, splits and dead-letters what fails
            decoded = None
        await self._settle_write()
        self._inflight = asyncio.ensure_future(self._write(decoding.batch, decoded, decoding.t0))
        await asyncio.sleep(0)  # let the write reach its thread now: a poll that finds records buffered never yields

    async def settle(self) -> BatchOutcome | None:
        """Finish the batches under way (decode, then write); the outcome of the last one, if any."""
        decoding, self._decoding = self._decoding, None
        if decoding is not None:
            await self._start_write(decoding)
        return await self._settle_write()

    async def _settle_write(self) -> BatchOutcome | None:
        task, self._inflight = self._inflight, None
        return await task if task is not None else None

    async def _write(self, batch: RecordBatch, decoded: DecodedBatch | None, t0: float) -> BatchOutcome:
        ctx, m = self.ctx, self.ctx.metrics
        outcome: BatchOutcome | None = None
        if decoded is not None:
            try:
                outcome = await self._retrying(
                    partial(apply_decoded, decoded, ctx.features, ctx.registry, now=ctx.clock(), policy=self.policy),
                    f"batch failed topic={batch.topic} offsets {batch.offsets[0]}..{batch.offsets[-1]}")
            except (Stopped, StoreRestarted):
                raise
            except Exception:  # noqa: BLE001 - again from the start, split until the culprit is found
                outcome = None
        if outcome is None:
            outcome = await self._process(batch)
        await self._publish(self.outputs.dead_letters, [(d.key or "", d) for d in outcome.dead_letters],
                            refused=_without_payload)
        m.batches.inc()
        m.events.labels(outcome="applied").inc(outcome.applied.applied)
        m.events.labels(outcome="duplicate").inc(outcome.applied.duplicates)
        m.events.labels(outcome="dead").inc(len(outcome.dead_letters))
        for d in outcome.dead_letters:
            m.dead_letter(d.reason)
            log.warning("dead letter topic=%s partition=%s offset=%s reason=%s: %s", d.source_topic,
                        d.source_partition, d.source_offset, d.reason, d.error)
        if outcome.applied.watermark is not None:
            m.watermark.set((outcome.applied.watermark - dt.date(1970, 1, 1)).days)
        self._window.add(outcome, len(batch), [ts for ts in batch.timestamps_ms if ts and ts > 0])
        m.batch_latency.observe(time.perf_counter() - t0)
        self.batches += 1
        return outcome

    async def flush(self) -> list[EnterpriseScore]:
        """Rescore every enterprise the pending window touched, once, as of its watermark; publish the scores.

        Returns once the scores are acknowledged; the shell then commits the window's offsets.

        Raises
        ------
        Stopped
            As :meth:`handle` (the window stays uncommitted: it is redelivered).
        """
        ctx, m = self.ctx, self.ctx.metrics
        await self.settle()  # the batch in flight belongs to this window
        window, self._window = self._window, _Window()
        if window.since is None:
            return []
        t0 = time.perf_counter()
        scores: list[EnterpriseScore] = []
        if window.touched and window.watermark is not None:
            scores = await self._rescore(sorted(window.touched), window.watermark)
        t1 = time.perf_counter()
        await self._publish(self.outputs.scores, [(sc.enterprise_id, sc) for sc in scores])
        published_ms = time.time() * 1000
        alarms = ctx.drift.observe(scores)
        if self.alerts is not None:  # early warnings, before the shell commits the window (at least once)
            await self.alerts.after_batch(scores, window.dead_letters, alarms)
        m.scores.inc(len(scores))
        for alarm in alarms:
            m.drift_alarms.labels(signal=str(alarm.key)).inc()
            log.warning("drift alarm on %s at event time %s after %d scores (value %.3f)", alarm.key, alarm.t,
                        alarm.n_seen, alarm.value)
        if scores:
            m.freshness(np.maximum(0.0, (published_ms - np.asarray(window.timestamps_ms, dtype=np.float64)) / 1000))
        m.scoring_latency.observe(t1 - t0)
        self.processed += window.messages
        self.last_batch_at = time.time()
        return scores

    async def _process(self, batch: RecordBatch) -> BatchOutcome:
        """Fold with retries; a batch that fails for another reason is split until the culprit is found."""
        ctx = self.ctx
        n = len(batch)
        try:
            return await self._retrying(
                partial(fold_records, batch, ctx.features, ctx.registry, now=ctx.clock(), policy=self.policy),
                f"batch failed topic={batch.topic} partition={batch.partitions[0]} "
                f"offset={batch.offsets[0]}..{batch.offsets[-1]}")
        except (Stopped, StoreRestarted):  # not a message's fault: the shell rewinds (StoreRestarted)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one message must not stop the stream
            if n == 1:
                source = record_source(batch, 0)
                log.error("poison message topic=%s partition=%s offset=%s: %r; dead-lettered", source.topic,
                          source.partition, source.offset, exc)
                raw = batch.values[0]
                dead = poison_letter(raw if raw is not None else b"", source, self.ctx.clock(), exc)
                return BatchOutcome(0, [dead], ApplyResult(frozenset(), frozenset(), 0, 0, None), [], 1)
            log.warning("batch of %d failed (%r) topic=%s offsets %s..%s; splitting it to find the message",
                        n, exc, batch.topic, batch.offsets[0], batch.offsets[-1])
            mid = n // 2
            return merge_outcomes(await self._process(batch.part(0, mid)), await self._process(batch.part(mid, n)))

    async def _rescore(self, ids: list[str], as_of: dt.date) -> list[EnterpriseScore]:
        """Rescore with retries; a failure for another reason is split until the enterprise is found.

        That enterprise's features stay applied and its score is not updated (logged); the next
        event that touches it tries again.
        """
        ctx = self.ctx

        def score() -> list[EnterpriseScore]:
            new_scores = rescore(ids, ctx.features, ctx.registry, ctx.scorer, as_of=as_of, now=ctx.clock(),
                                 batch_size=ctx.settings.worker.score_batch_size)
            ctx.scores.put_many(new_scores)
            return new_scores

        try:
            return await self._retrying(score, f"rescoring {len(ids)} enterprise(s) as of {as_of} failed")
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - one enterprise's model failure must not stop the stream
            if len(ids) == 1:
                log.error("rescoring %s as of %s failed: %r; its features are applied, its score is not updated",
                          ids[0], as_of, exc)
                return []
            mid = len(ids) // 2
            return await self._rescore(ids[:mid], as_of) + await self._rescore(ids[mid:], as_of)

    async def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on the core's thread until no retriable store error stops it (waiting degraded meanwhile)."""
        ctx = self.ctx
        delay = BACKOFF_FIRST_S
        while True:
            try:
                out = await self._in_thread(fn)
            except StoreRestarted:  # retrying is not enough: the shell reads again from the store's checkpoints
                ctx.features.invalidate()
                raise
            except StreamError as exc:
                # a write may have half-happened: whatever this process cached no longer says what the store holds
                ctx.features.invalidate()
                if not exc.retriable:
                    raise
                log.error("%s: %s", what, exc)
                self.degrade("store", exc)
                ctx.metrics.store_retries.inc()
                delay = await self._backoff(delay)
                continue
            except Exception:
                ctx.features.invalidate()
                raise
            self.recover("store")
            return out

    async def _publish(self, publisher: BatchPublisher[T], items: list[tuple[str, T]], *,
                       refused: Callable[[T, Exception], T] | None = None) -> None:
        """Publish until acknowledged; Kafka down means wait (degraded), never give up or skip.

        ``refused`` rewrites the items after an error that retrying cannot fix (e.g. over the size limit).
        """
        delay = BACKOFF_FIRST_S
        while items:
            try:
                await publisher.publish_many(items)
            except PublishFailed as exc:
                self.degrade("kafka", exc)
                if refused is not None and not exc.retriable:
                    items = [(k, refused(v, exc)) for k, v in items]
                delay = await self._backoff(delay)
                continue
            self.recover("kafka")
            return

    # ------------------------------------------------------------------ the allocator

    async def allocate(self, *, force: bool = False) -> AllocationSummary | None:
        """One allocator step (:func:`streams.pipeline.decide_allocation`); publishes what changed.

        Scores and lines are saved to their stores only once published: a crash in between
        republishes the same decisions.
        """
        async with self._allocating:
            ctx = self.ctx

            def decide() -> AllocationStep | None:
                return decide_allocation(
                    ctx.scores.all(), ctx.lines.all(), ctx.allocate, ctx.registry, ctx.policy(), now=ctx.clock(),
                    bundle_version=ctx.scorer.version, as_of=ctx.features.watermark(), features=ctx.features,
                    scorer=ctx.scorer, last_fingerprint=self._last_fingerprint, force=force)

            try:
                step = await self._in_thread(decide)
            except StreamError as exc:
                if not exc.retriable:
                    raise
                self.degrade("store", exc)
                return None
            if step is None:
                return None
            outcome = step.outcome
            await self._publish(self.outputs.scores, [(x.enterprise_id, x) for x in step.refreshed])
            await self._publish(self.outputs.credit_lines, [(line.enterprise_id, line) for line in outcome.changed])
            await self._publish(self.outputs.allocations, [(outcome.summary.allocation_id, outcome.summary)])
            if self.alerts is not None:
                # the rules over the rescored quiet enterprises (no invoice this month: their sales
                # may have stopped, which only a rescoring shows), then on cut and closed lines
                await self.alerts.after_batch(step.refreshed, [], [])
                await self.alerts.after_allocation(outcome.changed)

            def remember() -> None:
                ctx.scores.put_many(step.refreshed)
                ctx.lines.put_many(outcome.changed)

            await self._in_thread(remember)
            self._last_fingerprint = step.fingerprint
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


@dataclass(frozen=True, slots=True)
class _Decoding:
    """A batch whose decode was submitted (to ``decoder``), with when its handling began."""

    batch: RecordBatch
    future: asyncio.Future[Any]
    t0: float
    decoder: Executor


async def _done(outcome: BatchOutcome) -> BatchOutcome:
    return outcome


def _without_payload(dead: DeadLetter, exc: Exception) -> DeadLetter:
    """The dead letter without its raw bytes, for a broker that refuses it as it is (kept: reason and coordinates)."""
    note = f"raw payload ({len(dead.raw_base64)} base64 characters) not kept: the broker refused it ({exc})"
    return dead.model_copy(update={"raw_base64": "", "raw_truncated": True, "error": f"{dead.error} | {note}"[:1000]})


class IngestLoop:
    """The Kafka shell of the core: consume ``invoices`` in micro-batches, hand them to the core, commit."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: ProducerHandle | None = None
        self.core: WorkerCore | None = None
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._recheck = True  # set again on every partition assignment (_Rebalance)
        self.catching_up = False  # a backlog was left to read after the last poll (BACKLOG_MESSAGES)

    @property
    def processed(self) -> int:
        return self.core.processed if self.core is not None else 0

    @property
    def batches(self) -> int:
        return self.core.batches if self.core is not None else 0

    async def start(self) -> None:
        s = self.ctx.settings
        self.producer = ProducerHandle(lambda: make_producer(s.kafka))
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
        self.core = WorkerCore(self.ctx, Outputs.kafka(self.producer, s.topics))
        await self.core.warm_up()
        self.consumer.subscribe([s.topics.invoices], listener=_Rebalance(self))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in flight (its offsets are committed), then close the clients.

        A batch waiting for Redis or Kafka is abandoned uncommitted: it is redelivered.
        """
        self._stopping.set()
        if self.core is not None:
            self.core.stop()
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
        if self.core is not None:
            self.core.close()

    async def run(self) -> None:
        """Loop until :meth:`stop`: fold each polled batch, rescore once per window, then commit the window.

        A window closes when ``worker.rescore_within_s`` has passed since its first batch, or at once
        when a poll finds nothing new (caught up), or on stop. Offsets are committed only after the
        window's dead letters and scores are acknowledged.
        """
        if self.consumer is None or self.core is None:
            raise RuntimeError("IngestLoop.start() first")
        try:
            await self._run(self.consumer, self.core)
        except Stopped:
            log.warning("stopped while waiting for a service; the batches in flight stay uncommitted")
        finally:
            self._idle.set()

    async def _run(self, consumer: AIOKafkaConsumer, core: WorkerCore) -> None:
        worker = self.ctx.settings.worker
        within_ms = int(worker.batch_within_s * 1000)
        pending: dict[TopicPartition, int] = {}  # next offset per partition, committed when the window is out
        delay = BACKOFF_FIRST_S
        next_sync = 0.0
        while True:
            if self._stopping.is_set():  # finish the window in flight: its offsets are committed
                if core.pending:
                    try:
                        await core.flush()
                    except StoreRestarted:  # the store lost the window's writes: commit nothing, it is read again
                        return
                    await self._commit(pending)
                return
            due_s = core.flush_in_s()  # inf: nothing waits for rescoring yet (a write may be in flight)
            wait_ms = within_ms if due_s == float("inf") else min(within_ms, int(due_s * 1000))
            try:
                batch = await consumer.getmany(timeout_ms=wait_ms, max_records=worker.batch_size)
            except KafkaError as exc:  # the consumer reconnects by itself; say so and wait
                core.degrade("kafka", f"fetch failed: {exc!r}")
                delay = await core._backoff(delay)  # noqa: SLF001 - the same backoff as the core's
                continue
            delay = BACKOFF_FIRST_S
            records = [msg for msgs in batch.values() for msg in msgs]
            self.catching_up = self._behind(consumer, batch) > min(worker.batch_size, BACKLOG_MESSAGES)
            try:
                if self._recheck:  # started, or partitions assigned: resume them where the store has everything
                    self._recheck = False
                    if core.pending:
                        await core.flush()
                        await self._commit(pending)
                        pending = {}
                    await self._rewind(batch, "partitions assigned")  # this batch is read again
                    continue
                if records:
                    self._idle.clear()
                    # decoded while the previous batch's write finishes; written while the next one is polled
                    await core.begin_fold(records)
                    pending.update({tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs})
                if core.pending and (not records or core.flush_in_s() <= 0):
                    await core.flush()
                    await self._commit(pending)
                    pending = {}
                    self._idle.set()
                elif not records and not core.pending and time.monotonic() >= next_sync:
                    await self._sync()
                    next_sync = time.monotonic() + SYNC_EVERY_S
            except StoreRestarted as exc:  # the window's writes may be lost too: all is read again
                core.drop_window()
                pending = {}
                await self._rewind(batch, exc)
                self._idle.set()

    @staticmethod
    def _behind(consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> int:
        """Messages left to read after this batch, by the high watermarks of the last fetch (no request)."""
        behind = 0
        for tp, msgs in batch.items():
            hw = consumer.highwater(tp) if msgs else None
            if hw is not None:
                behind += max(0, hw - msgs[-1].offset - 1)
        return behind

    async def _sync(self) -> None:
        """While idle: a store that restarted and lost writes is found now, not at the next message."""
        assert self.core is not None  # noqa: S101 - run() checked
        try:
            await self.core._in_thread(self.ctx.features.sync)  # noqa: SLF001 - the core's one store thread
        except StoreRestarted as exc:
            await self._rewind({}, exc)
            return
        except StreamError as exc:  # the next batch waits for it with backoff
            self.core.degrade("store", exc)
            return
        self.core.recover("store")

    async def _rewind(self, batch: dict[TopicPartition, list[Any]], why: object) -> None:
        """Seek every assigned partition back to where the store has everything (never forward).

        ``batch`` is not applied (it is read again). A partition the store has no checkpoint for may
        have lost all it had (or never had one: a first start, an upgrade), so it is read again from its
        beginning; a store that keeps no checkpoints leaves the positions as they are. Waits with backoff
        while Redis or Kafka is down (raises Stopped when asked to stop meanwhile).
        """
        assert self.consumer is not None and self.core is not None  # noqa: S101 - run() checked
        consumer, core, topic = self.consumer, self.core, self.ctx.settings.topics.invoices
        assigned = sorted((tp for tp in consumer.assignment() if tp.topic == topic), key=lambda tp: tp.partition)
        delay = BACKOFF_FIRST_S
        while True:
            try:
                stored = await core._in_thread(  # noqa: SLF001 - the core's one store thread
                    partial(self.ctx.features.resume_offsets, topic, [tp.partition for tp in assigned]))
                missing = [tp for tp in assigned if stored is not None and tp.partition not in stored]
                begins = await consumer.beginning_offsets(missing) if missing else {}
                break
            except (StreamError, KafkaError) as exc:
                if isinstance(exc, StreamError) and not exc.retriable:
                    raise
                core.degrade("store" if isinstance(exc, StreamError) else "kafka", exc)
                delay = await core._backoff(delay)  # noqa: SLF001
        core.recover("store")
        back: dict[TopicPartition, int] = {}
        moved = {}
        for tp in assigned:
            msgs = batch.get(tp)
            here = msgs[0].offset if msgs else await consumer.position(tp)
            to = here if stored is None else min(here, stored.get(tp.partition, begins.get(tp, here)))
            if msgs or to < here:
                consumer.seek(tp, to)
            if to < here:
                back[tp] = to
                moved[f"{tp.topic}/{tp.partition}"] = f"{here} -> {to}" + ("" if tp.partition in (stored or {})
                                                                             else " (no checkpoint)")
        if moved:
            log.warning("%s: the store is behind the stream; reading again from its checkpoints %s", why, moved)
            self.ctx.metrics.store_retries.inc()
            try:  # so that a worker taking these partitions over (a rebalance, a crash) reads them again too
                await consumer.commit(back)
            except KafkaError as exc:
                log.warning("could not commit the rewound offsets (%r); a worker that takes these partitions over "
                            "now would resume past what the store lost", exc)
        elif stored is not None:
            log.info("store (re)connected; its checkpoints %s are not behind the stream", stored)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None and self.core is not None  # noqa: S101 - run() checked
        consumer, m = self.consumer, self.ctx.metrics
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}  # revoked meanwhile: the new owner redoes them
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            # dead letters included: a rewind need not read them again (recorded with the store's next write)
            self.ctx.features.handled(self.ctx.settings.topics.invoices,
                                      {tp.partition: o for tp, o in offsets.items()})
        except CommitFailedError as exc:  # a rebalance took the partitions: the new owner redoes them
            log.warning("offset commit failed (%r) for %s; the batch will be redelivered (idempotent)", exc,
                        {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})
        except KafkaError as exc:  # the broker is away: the next batch's commit covers these offsets
            self.core.degrade("kafka", f"offset commit failed: {exc!r}")
        for tp, next_offset in offsets.items():
            hw = consumer.highwater(tp)
            if hw is not None:
                m.lag.labels(partition=str(tp.partition)).set(max(0, hw - next_offset))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On any rebalance, forget cached features: another worker may have written those enterprises."""

    def __init__(self, ingest: IngestLoop) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._invalidate("revoked", revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._invalidate("assigned", assigned)
        self.ingest._recheck = True  # noqa: SLF001 - the loop checks where to resume before its next batch

    def _invalidate(self, what: str, tps: Any) -> None:
        self.ingest.ctx.features.invalidate()
        log.info("partitions %s: %s", what, sorted(f"{tp.topic}/{tp.partition}" for tp in tps))


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
    from streams.adapters.redis_store import (RedisAlertStateStore, RedisCreditLineStore, RedisFeatureStore,
                                              RedisRegistry, RedisScoreStore, connect, encoding_advice)

    client = connect(settings.redis)
    if (advice := encoding_advice(client)) is not None:
        log.warning("%s", advice)
    prefix = settings.redis.prefix
    registry = RedisRegistry(client, prefix)
    source = InMemoryRegistry.from_data_dir(settings.data_dir)
    registry.put_many([info for e in sorted(source.enterprise_ids()) if (info := source.get(e)) is not None])
    scorer = load_bundle(settings.bundle_dir, public_key=settings.bundle_public_key,
                         accept_unsigned=settings.accept_unsigned_bundles)
    churn = ChurnCurves.from_csv(settings.data_dir / "churn.csv")
    from streams.adapters.cached import CachedFeatureStore

    features = RedisFeatureStore(client, prefix, dedup_window_months=settings.redis.dedup_window_months,
                                 guard_restarts=True)
    return WorkerContext(settings=settings, features=CachedFeatureStore(features),
                         scores=RedisScoreStore(client, prefix), lines=RedisCreditLineStore(client, prefix),
                         registry=registry, scorer=scorer, allocate=make_allocate(churn),
                         alert_states=RedisAlertStateStore(client, prefix))


def create_app(settings: Settings, ctx: WorkerContext) -> Any:
    """The faust app of one worker: the ingest loop as a service, the leader-only allocator timer, /health.

    Raises
    ------
    SettingsConflict
        See :func:`check_worker_settings`.
    """
    check_worker_settings(settings)
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

    async def health() -> dict[str, Any]:
        core = ingest.core
        watermark = None
        degraded: dict[str, str] = {}
        try:
            watermark = await asyncio.get_running_loop().run_in_executor(None, ctx.features.watermark)
        except StreamError as exc:
            degraded["store"] = str(exc).splitlines()[0][:300]
        answers = await _broker_answers(ingest.producer)
        if core is not None:  # an idle worker learns of an outage (and of its end) only here
            unreachable = f"{BROKER_UNREACHABLE} ({settings.kafka.bootstrap})"
            if not answers and "kafka" not in core.degraded:
                core.degrade("kafka", unreachable)
            elif answers and core.degraded.get("kafka") == unreachable:
                core.recover("kafka")
            degraded.update(core.degraded)
        elif not answers:
            degraded["kafka"] = BROKER_UNREACHABLE
        assigned = sorted(tp.partition for tp in ingest.consumer.assignment()) if ingest.consumer else []
        last = core.last_summary if core is not None else None
        return {"status": "degraded" if degraded else "ok", "degraded": degraded, "leader": app.is_leader(),
                "partitions": assigned, "processed": ingest.processed, "batches": ingest.batches,
                "watermark": watermark, "bundle_version": ctx.scorer.version,
                "last_allocation": last.allocation_id if last else None,
                "freshness": ctx.metrics.quantiles(),
                "drift_alarms": {key: len(mon.alarms) for key, mon in sorted(ctx.drift.monitors.items()) if mon.alarms}}

    async def allocate_now() -> dict[str, Any]:
        if not app.is_leader() or ingest.core is None:
            return {"ran": False, "why": "not the leader"}
        summary = await ingest.core.allocate(force=True)
        return {"ran": summary is not None, "summary": summary.model_dump(mode="json") if summary else None}

    token = settings.worker.http_token.get_secret_value() if settings.worker.http_token else None
    server = HealthServer(settings.worker.metrics_port, ctx.metrics, health, allocate_now, token=token) \
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

    deferred = 0

    @app.timer(settings.allocator.interval_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def allocate_timer() -> None:
        nonlocal deferred
        # while this worker reads a backlog (a replay, a catch-up after an outage) every score is about to be
        # replaced and the watermark runs ahead: deciding on each half-read month would rescore every quiet
        # enterprise per tick; wait, but never more than max_deferrals ticks in a row
        if ingest.catching_up and deferred < settings.allocator.max_deferrals:
            deferred += 1
            ctx.metrics.allocations_deferred.inc()
            return
        deferred = 0
        if ingest.core is not None:
            try:
                await ingest.core.allocate()
            except Stopped:
                pass
            except Exception:  # the next tick tries again; the worker keeps ingesting
                log.exception("allocator run failed")

    app.riskmon = {"ingest": ingest, "server": server}  # type: ignore[attr-defined]
    return app


async def _broker_answers(handle: ProducerHandle | None, timeout_s: float = 3.0) -> bool:
    """Whether a broker answers a metadata request now (an idle worker notices an outage only this way)."""
    if handle is None:
        return True
    try:
        producer = await asyncio.wait_for(handle.ready(), timeout_s)  # a replaced producer starts here
        return bool(await asyncio.wait_for(producer.client.force_metadata_update(), timeout_s))
    except (KafkaError, StreamError, OSError, TimeoutError):
        return False


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
