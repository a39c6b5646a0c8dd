"""The worker core driven with in-memory fakes: no Kafka, no Redis, no faust.

What it must do (issue 9.4, 11.2): publish through the publisher ports, wait (degraded) while a
service is down and resume by itself, never return a batch as done before its outputs are
acknowledged, and split a batch that fails for one message until that message is dead-lettered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from streams.adapters.memory import (InMemoryCreditLineStore, InMemoryFeatureStore, InMemoryScoreStore,
                                     ListPublisher)
from streams.app import Outputs, SettingsConflict, Stopped, WorkerContext, WorkerCore, check_worker_settings
from streams.errors import PublishFailed, StoreRestarted, StoreUnavailable
from streams.events import AllocationSummary, DeadLetter, InvoiceEvent
from streams.features.fold import fold_all
from models.scoring import Score, ScoringBatch
from streams.pipeline import REASON_PROCESSING_FAILED, AllocationPolicy, decide_allocation
from streams.ports import DeltaItem
from streams.settings import KafkaSettings, Settings, TopicSettings, WorkerSettings
from tests.unit.streams.test_pipeline import NOW, GreedyAllocate, RuleScorer, _ev, _registry


@dataclass(frozen=True)
class Rec:
    """A consumed record, as the core reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def _records(events: Sequence[InvoiceEvent | bytes], partition: int = 0) -> list[Rec]:
    out = []
    for i, e in enumerate(events):
        value = e if isinstance(e, bytes) else e.model_dump_json().encode()
        key = b"E1" if isinstance(e, bytes) else e.enterprise_id.encode()
        out.append(Rec("invoices", partition, i, key, value))
    return out


class FlakyStore(InMemoryFeatureStore):
    """Redis that is down for the first ``down`` writes, and chokes on one enterprise for ever."""

    def __init__(self, down: int = 0, poison: str | None = None) -> None:
        super().__init__()
        self.down, self.poison, self.calls, self.invalidated = down, poison, 0, 0

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        self.calls += 1
        if self.calls <= self.down:
            raise StoreUnavailable("Redis unavailable at redis://127.0.0.1:1/0: Connection refused")
        if self.poison is not None and any(i.enterprise_id == self.poison for i in items):
            raise RuntimeError(f"cannot fold {self.poison}")
        return super().apply_many(items)

    def invalidate(self, enterprise_ids: object = None) -> None:
        self.invalidated += 1


class RestartedStore(FlakyStore):
    """Redis that restarted since the last write: every write is refused until the worker rewinds."""

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        self.calls += 1
        raise StoreRestarted("Redis has forgotten this worker's scripts")


class FlakyPublisher(ListPublisher[object]):
    """A topic whose broker refuses the first ``down`` sends (retriable unless told otherwise)."""

    def __init__(self, down: int = 0, retriable: bool = True) -> None:
        super().__init__()
        self.down, self.retriable, self.calls = down, retriable, 0

    async def publish_many(self, items: Sequence[tuple[str, object]]) -> None:
        self.calls += 1
        if self.calls <= self.down:
            raise PublishFailed("publishing to t failed: NodeNotReadyError", retriable=self.retriable)
        await super().publish_many(items)


def _core(features: InMemoryFeatureStore | None = None, *, decode_process: bool = False,
          **publishers: ListPublisher[object]) -> WorkerCore:
    settings = Settings(_env_prefix="RISKMON_TEST_UNUSED_", app_id="core-app",
                        kafka=KafkaSettings(group_id="core-workers"),
                        worker=WorkerSettings(decode_process=decode_process))
    ctx = WorkerContext(settings=settings, features=features or InMemoryFeatureStore(), scores=InMemoryScoreStore(),
                        lines=InMemoryCreditLineStore(), registry=_registry(), scorer=RuleScorer(),
                        allocate=GreedyAllocate(), clock=lambda: NOW)
    outputs = {name: publishers.get(name, ListPublisher()) for name in
               ("dead_letters", "scores", "credit_lines", "allocations")}
    return WorkerCore(ctx, Outputs(**outputs), backoff_max_s=0.4)  # type: ignore[arg-type]


EVENTS = [_ev(e, n, dt.date(2019, 1 + n, 3)) for e in ("E1", "E2", "E3") for n in range(1, 6)]


async def test_a_batch_is_applied_scored_and_published_through_the_ports() -> None:
    dlq, scores = ListPublisher[object](), ListPublisher[object]()
    core = _core(dead_letters=dlq, scores=scores)
    out = await core.handle(_records([*EVENTS[:7], b"{not json", *EVENTS[7:]]))
    assert out.applied.applied == len(EVENTS) and core.processed == len(EVENTS) + 1
    assert [d.reason for d in dlq.values()] == ["json_invalid"]  # type: ignore[attr-defined]
    assert set(scores.latest()) == {"E1", "E2", "E3"}
    assert core.status == "ok" and core.degraded == {}


async def test_a_decode_process_that_dies_is_replaced_and_no_batch_is_lost() -> None:
    import os
    import signal

    dlq = ListPublisher[object]()
    core = _core(decode_process=True, dead_letters=dlq)
    try:
        await core.warm_up()
        first = await core.handle(_records([*EVENTS[:5], b"{not json"]))
        assert first.applied.applied == 5
        (pid,) = core._decoder._processes  # type: ignore[attr-defined]  # noqa: SLF001
        os.kill(pid, signal.SIGKILL)  # killed between batches (out of memory, an operator)
        second = await core.handle(_records(EVENTS[5:10], partition=1))  # the sequential path takes this one
        third = await core.handle(_records(EVENTS[10:], partition=2))  # a new decode process this one
        assert (second.applied.applied, third.applied.applied) == (5, len(EVENTS) - 10)
        assert pid not in core._decoder._processes  # type: ignore[attr-defined]  # noqa: SLF001
        assert [d.reason for d in dlq.values()] == ["json_invalid"]  # type: ignore[attr-defined]
    finally:
        core.close()


async def test_a_decode_process_that_cannot_start_leaves_the_worker_decoding_on_a_thread() -> None:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    core = _core(decode_process=True)
    try:
        broken = ProcessPoolExecutor(max_workers=1)
        broken.shutdown()  # submit raises, as when the process cannot be started
        core._decoder.shutdown()  # noqa: SLF001
        core._decoder = broken  # noqa: SLF001
        await core.warm_up()
        assert isinstance(core._decoder, ThreadPoolExecutor)  # noqa: SLF001
        assert (await core.handle(_records(EVENTS))).applied.applied == len(EVENTS)
    finally:
        core.close()


async def test_folded_batches_are_rescored_once_per_window_and_counted_when_their_scores_are_out() -> None:
    scores = ListPublisher[object]()
    core = _core(scores=scores)
    scorer: RuleScorer = core.ctx.scorer  # type: ignore[assignment]
    records = _records(sorted(EVENTS, key=lambda e: e.issue_date))  # E1, E2, E3 in every month
    for start in range(0, len(records), 4):  # four polled batches fold; none is scored yet
        await core.fold(records[start : start + 4])
    assert core.pending and scores.items == [] and scorer.batches == [] and core.processed == 0
    flushed = await core.flush()
    assert sorted(x.enterprise_id for x in flushed) == ["E1", "E2", "E3"]  # each once, not once per batch
    assert [sorted(b.enterprise_ids) for b in scorer.batches] == [["E1", "E2", "E3"]]
    assert {x.as_of for x in flushed} == {max(e.issue_date for e in EVENTS)}  # the window's newest watermark
    assert set(scores.latest()) == {"E1", "E2", "E3"} and core.processed == len(EVENTS) and not core.pending
    for eid, state in fold_all(EVENTS).items():
        assert core.ctx.features.load(eid).counters == state.counters
    assert await core.flush() == []  # nothing pending: nothing published
    assert len(scores.items) == 3


async def test_a_model_failure_for_one_enterprise_costs_only_its_score() -> None:
    class FailsOnE2(RuleScorer):
        def score_many(self, batch: ScoringBatch, *, reasons: object = True) -> list[Score]:
            if "E2" in batch.enterprise_ids:
                raise FloatingPointError("NaN in the rating network")
            return super().score_many(batch, reasons=reasons)

    scores = ListPublisher[object]()
    core = _core(scores=scores)
    core.ctx.scorer = FailsOnE2()
    out = await core.handle(_records(EVENTS))
    assert out.applied.applied == len(EVENTS) and sorted(scores.latest()) == ["E1", "E3"]
    assert core.ctx.features.load("E2").counters == fold_all(EVENTS)["E2"].counters  # its features stay applied
    assert core.status == "ok" and core.processed == len(EVENTS)


async def test_store_down_waits_degraded_then_resumes_with_exact_features() -> None:
    store = FlakyStore(down=3)
    core = _core(store)
    task = asyncio.create_task(core.handle(_records(EVENTS)))
    while store.calls < 2:
        await asyncio.sleep(0.02)
    assert core.status == "degraded" and "Redis unavailable" in core.degraded["store"]
    assert b'riskmon_degraded{component="store"} 1.0' in core.ctx.metrics.exposition()
    out = await asyncio.wait_for(task, 10)
    assert out.applied.applied == len(EVENTS) and core.status == "ok"
    assert store.invalidated == 3  # every failed write drops what the process had cached
    assert b'riskmon_degraded{component="store"} 0.0' in core.ctx.metrics.exposition()
    assert int(core.ctx.metrics.store_retries._value.get()) == 3  # noqa: SLF001
    expected = fold_all(EVENTS)
    for eid, state in expected.items():
        assert store.load(eid).counters == state.counters


async def test_broker_down_the_batch_is_not_done_until_its_scores_are_acknowledged() -> None:
    scores = FlakyPublisher(down=3)
    core = _core(scores=scores)
    task = asyncio.create_task(core.handle(_records(EVENTS)))
    while scores.calls < 2:
        await asyncio.sleep(0.02)
    assert not task.done() and core.status == "degraded" and "NodeNotReadyError" in core.degraded["kafka"]
    assert scores.items == []
    await asyncio.wait_for(task, 10)
    assert set(scores.latest()) == {"E1", "E2", "E3"} and core.status == "ok"


async def test_stopping_while_a_service_is_down_leaves_the_batch_unfinished() -> None:
    core = _core(FlakyStore(down=10**6))
    task = asyncio.create_task(core.handle(_records(EVENTS)))
    await asyncio.sleep(0.3)
    core.stop()
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 5)
    assert core.processed == 0


async def test_a_restarted_store_hands_the_batch_back_at_once_nothing_retried_split_or_published() -> None:
    store, dlq, scores = RestartedStore(), ListPublisher[object](), ListPublisher[object]()
    core = _core(store, dead_letters=dlq, scores=scores)
    with pytest.raises(StoreRestarted):
        await asyncio.wait_for(core.handle(_records([*EVENTS, b"{not json"])), 5)
    # one try (the shell rewinds to the store's checkpoints), not split into dead letters, nothing published
    assert store.calls == 1 and store.invalidated == 1
    assert dlq.items == [] and scores.items == [] and core.processed == 0


async def test_a_poison_message_is_found_by_splitting_and_dead_lettered_the_rest_applied() -> None:
    store, dlq = FlakyStore(poison="E9"), ListPublisher[object]()
    core = _core(store, dead_letters=dlq)
    poison = _ev("E9", 1, dt.date(2019, 4, 1))
    batch = [*EVENTS[:9], poison, *EVENTS[9:]]
    out = await core.handle(_records(batch))
    dead: list[DeadLetter] = dlq.values()  # type: ignore[assignment]
    assert [(d.reason, d.source_offset) for d in dead] == [(REASON_PROCESSING_FAILED, 9)]
    assert "cannot fold E9" in dead[0].error
    assert out.applied.applied == len(EVENTS) and "E9" not in store.enterprise_ids()
    for eid, state in fold_all(EVENTS).items():
        assert store.load(eid).counters == state.counters
    assert core.status == "ok"


async def test_a_dead_letter_the_broker_refuses_is_kept_without_its_bytes() -> None:
    dlq = FlakyPublisher(down=1, retriable=False)
    core = _core(dead_letters=dlq)
    await core.handle(_records([b"x" * 1000]))
    (dead,) = dlq.values()
    assert isinstance(dead, DeadLetter) and dead.raw_base64 == "" and "not kept" in dead.error
    assert dead.reason == "json_invalid" and dead.source_offset == 0


async def test_the_allocator_step_publishes_changes_once_and_again_when_forced() -> None:
    lines, summaries = ListPublisher[object](), ListPublisher[object]()
    core = _core(credit_lines=lines, allocations=summaries)
    await core.handle(_records(EVENTS))
    first = await core.allocate()
    assert isinstance(first, AllocationSummary) and first.n_changed == 3
    assert {k for k, _ in lines.items} == {"E1", "E2", "E3"}
    assert set(core.ctx.lines.all()) == {"E1", "E2", "E3"}  # saved once published
    assert await core.allocate() is None  # same scores: nothing to decide
    forced = await core.allocate(force=True)
    assert forced is not None and forced.n_changed == 0 and len(summaries.items) == 2


async def test_a_quiet_enterprise_rescored_by_the_allocator_goes_through_the_alert_rules() -> None:
    """E1 stops invoicing after May; only the allocator's rescoring (watermark in July) shows its sales fell to 0."""
    from streams.adapters.memory import InMemoryAlertStateStore
    from streams.settings import AlertSettings, IngestSettings

    settings = Settings(_env_prefix="RISKMON_TEST_UNUSED_", app_id="core-app", kafka=KafkaSettings(group_id="core-workers"),
                        alerts=AlertSettings(sales_min_yuan=5.0), ingest=IngestSettings(watermark_quorum=1))
    alerts = ListPublisher[object]()
    ctx = WorkerContext(settings=settings, features=InMemoryFeatureStore(), scores=InMemoryScoreStore(),
                        lines=InMemoryCreditLineStore(), registry=_registry(), scorer=RuleScorer(),
                        allocate=GreedyAllocate(), clock=lambda: NOW, alert_states=InMemoryAlertStateStore())
    outputs = Outputs(ListPublisher(), ListPublisher(), ListPublisher(), ListPublisher(), alerts)  # type: ignore[arg-type]
    core = WorkerCore(ctx, outputs, backoff_max_s=0.4)
    both = [_ev(e, n, dt.date(2019, m, 3)) for n, m in ((1, 2), (2, 3), (3, 4), (5, 5)) for e in ("E1", "E2")]
    await core.handle(_records(both))
    await core.allocate(force=True)
    await core.handle(_records([_ev("E2", n, dt.date(2019, m, 3)) for n, m in ((6, 6), (7, 7))], partition=1))  # E1 quiet
    assert not [a for a in alerts.values() if a.rule == "sales_drop"]  # type: ignore[attr-defined]
    await core.allocate(force=True)  # the watermark is in July: E1's May score is stale and rescored
    drops = [a for a in alerts.values() if a.rule == "sales_drop"]  # type: ignore[attr-defined]
    assert [(a.enterprise_id, a.value_before, a.value_after) for a in drops] == [("E1", 10.0, 0.0)]  # type: ignore[attr-defined]


def test_decide_allocation_rescores_stale_scores_from_the_store_of_record() -> None:
    store = FlakyStore()
    registry, scorer = _registry(), RuleScorer()
    from streams.pipeline import apply_events, rescore

    apply_events(store, [_ev("E1", 1, dt.date(2019, 3, 1)), _ev("E2", 2, dt.date(2019, 6, 1))])
    scores = {s.enterprise_id: s for s in rescore(["E1"], store, registry, scorer, as_of=dt.date(2019, 3, 1), now=NOW)}
    scores |= {s.enterprise_id: s for s in rescore(["E2"], store, registry, scorer, as_of=dt.date(2019, 6, 1), now=NOW)}
    step = decide_allocation(scores, {}, GreedyAllocate(), registry, AllocationPolicy(150_000), now=NOW,
                             bundle_version="double-1", as_of=dt.date(2019, 6, 1), features=store, scorer=scorer)
    assert step is not None and [s.enterprise_id for s in step.refreshed] == ["E1"]
    assert step.refreshed[0].as_of == dt.date(2019, 6, 1) and store.invalidated == 1
    assert all(line.as_of == dt.date(2019, 6, 1) for line in step.outcome.changed)
    again = decide_allocation({**scores, "E1": step.refreshed[0]}, step.outcome.lines, GreedyAllocate(), registry,
                              AllocationPolicy(150_000), now=NOW, bundle_version="double-1",
                              last_fingerprint=step.fingerprint)
    assert again is None
    assert decide_allocation(scores, {}, GreedyAllocate(), registry, AllocationPolicy(150_000, min_scores=3),
                             now=NOW, bundle_version="double-1") is None


def test_settings_whose_consumer_groups_collide_are_refused_in_one_line() -> None:
    same = Settings(_env_prefix="RISKMON_TEST_UNUSED_", app_id="riskmon", kafka=KafkaSettings(group_id="riskmon"))
    with pytest.raises(SettingsConflict) as info:
        check_worker_settings(same)
    assert "\n" not in str(info.value)
    assert "RISKMON_APP_ID" in str(info.value) and "RISKMON_KAFKA__GROUP_ID" in str(info.value)
    topics = TopicSettings(scores="credit-lines")
    with pytest.raises(SettingsConflict, match="RISKMON_TOPICS__SCORES and RISKMON_TOPICS__CREDIT_LINES"):
        check_worker_settings(Settings(_env_prefix="RISKMON_TEST_UNUSED_", topics=topics))
    check_worker_settings(Settings(_env_prefix="RISKMON_TEST_UNUSED_"))  # the defaults are fine


def test_the_worker_command_reports_colliding_groups_before_connecting(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    monkeypatch.setenv("RISKMON_APP_ID", "same")
    monkeypatch.setenv("RISKMON_KAFKA__GROUP_ID", "same")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RISKMON_APP_ID and RISKMON_KAFKA__GROUP_ID are both 'same'" in err

