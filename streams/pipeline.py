"""The pure orchestration of the stream, over the ports: the live worker and the backtest run these.

One micro-batch goes ``ingest`` (bytes -> InvoiceEvent | DeadLetter) -> ``apply_events``
(fold deltas into the FeatureStore, idempotent on event id, advance the event-time
watermark) -> ``rescore`` (the touched enterprises, as of the watermark, in micro-batches
through the Scorer). The allocator step, ``run_allocation``, turns the current scores into
credit lines and an AllocationSummary, and keeps only the lines that changed.

Nothing here reads a clock or opens a connection: ``now`` and ``as_of`` are arguments,
and every side effect goes through a port.

Examples
--------
>>> import datetime as dt
>>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
>>> dl = ingest(b"{not json", Source("invoices", 0, 7), now)
>>> dl.reason, dl.source_offset
('json_invalid', 7)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

import numpy as np
import pandas as pd
from pydantic import ValidationError

from allocator.reasons import line_changes
from models.scoring import Score, Scorer, ScoringBatch
from models.schema import NUMERIC_FEATURES
from streams.events import (AllocationSummary, CreditLine, DeadLetter, DlqReason, EnterpriseScore, InvoiceEvent,
                            error_detail, reason_of)
from streams.eventtime import latest_client_dates
from streams.features.fold import EnterpriseState, invoice_delta
from streams.features.names import classify_name
from streams.features.vector import arrays_of_many, features_from_arrays, month_index, sequences_from_window
from streams.policy import DEFAULT_POLICY, IngestPolicy, check_policy
from streams.policy import dead_letter as build_dead_letter
from streams.ports import (DEAD_LETTER_VERDICTS, VERDICT_LETTERS, DeltaItem, EnterpriseRegistry, FeatureStore, ScoreStore,
                           Verdict)
from streams.codecs import decode_key
from streams.columns import InvoiceColumns, RecordBatch, columns_from_events, day_date, decode_batch, empty_columns
from streams.wire import DuplicateKey, decode_invoice, decode_slow

REASON_UNKNOWN_ENTERPRISE: Final = "unknown_enterprise"
REASON_NOT_ALLOCATED: Final = "not_allocated"
REASON_PROCESSING_FAILED: Final[DlqReason] = "processing_failed"  # a message that alone makes its batch fail (poison pill)
_RATINGS: Final = ("A", "B", "C", "D")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a raw message came from (Kafka coordinates; -1 where not applicable)."""

    topic: str
    partition: int = -1
    offset: int = -1
    key: str | None = None
    timestamp_ms: int | None = None  # the Kafka record timestamp (None: unknown)


_NO_SOURCE: Final = Source("")


# --------------------------------------------------------------------------- ingest


def _raw_bytes(raw: bytes | str | Mapping[str, object]) -> bytes:
    if type(raw) is bytes:  # the hot path (Kafka values): no ABC check
        return raw
    if isinstance(raw, Mapping):
        return json.dumps(raw, default=str, ensure_ascii=False).encode()
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def dead_letter(raw: bytes | str | Mapping[str, object], source: Source, reason: DlqReason, error: str,
                now: dt.datetime, *, max_bytes: int = DEFAULT_POLICY.max_dead_letter_bytes) -> DeadLetter:
    """A :class:`DeadLetter` for one raw message (:func:`streams.policy.dead_letter`: it always fits)."""
    return build_dead_letter(reason, error, _raw_bytes(raw), source.topic, source.partition, source.offset,
                             source.key, now, max_bytes=max_bytes)


def ingest(raw: bytes | str | Mapping[str, object], source: Source, now: dt.datetime,
           policy: IngestPolicy = DEFAULT_POLICY) -> InvoiceEvent | DeadLetter:
    """Decode and validate one message; anything invalid becomes a :class:`DeadLetter` with a reason.

    Never raises on bad input. The reason is one of the closed set
    :data:`streams.events.DlqReason` (the table is in ``docs/faults.md``); the detail goes to
    ``DeadLetter.error``. Valid events must also pass the deployment's ``policy`` (key =
    ``enterprise_id``, amount ceiling, event-time bounds against ``source.timestamp_ms`` and ``now``).

    Examples
    --------
    >>> import datetime as dt
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> ingest(b"", Source("invoices"), now).reason
    'empty'
    >>> ingest(b"[1, 2]", Source("invoices"), now).reason
    'not_object'
    >>> ingest(b'{"event_id": "x"}', Source("invoices"), now).reason
    'missing_field'
    """
    raw_bytes = _raw_bytes(raw)

    def dead(reason: DlqReason, error: str) -> DeadLetter:
        return dead_letter(raw_bytes, source, reason, error, now, max_bytes=policy.max_dead_letter_bytes)

    from_bytes = raw is raw_bytes or not isinstance(raw, Mapping)
    event = decode_invoice(raw_bytes) if policy.fast_decode and from_bytes else None
    if event is None:
        if not raw_bytes.strip():
            return dead("empty", "empty message")
        try:
            if not from_bytes:
                event = InvoiceEvent.model_validate(raw)
            else:
                event = decode_slow(raw_bytes)
        except DuplicateKey as exc:
            return dead("duplicate_key", str(exc))
        except ValidationError as exc:
            return dead(reason_of(exc), f"{error_detail(exc)} ({exc.error_count()} error(s))")
        except (ValueError, TypeError, ArithmeticError) as exc:  # e.g. a Decimal context error deep in a validator
            return dead("invalid", f"{type(exc).__name__}: {exc}")
    why = check_policy(event, source.key, source.timestamp_ms, now, policy)
    if why is not None:
        return dead(*why)
    return event


def ingest_many(messages: Iterable[tuple[bytes | str | Mapping[str, object], Source]], now: dt.datetime,
                policy: IngestPolicy = DEFAULT_POLICY) -> tuple[list[InvoiceEvent], list[DeadLetter]]:
    """:func:`ingest` over a micro-batch: the valid events and the dead letters, each in message order."""
    events: list[InvoiceEvent] = []
    dead: list[DeadLetter] = []
    for raw, source in messages:
        item = ingest(raw, source, now, policy)
        if isinstance(item, InvoiceEvent):
            events.append(item)
        else:
            dead.append(item)
    return events, dead


# --------------------------------------------------------------------------- features


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a micro-batch did to the feature store.

    ``touched`` is every enterprise in the batch, ``changed`` those with a newly applied
    event. The worker rescores ``touched``: after a crash between the store write and the
    score publication, the redelivered events are duplicates but the score must still go out.
    ``duplicates`` counts Kafka redeliveries and producer re-sends (nothing changed);
    ``rejected`` lists ``(index into events, reason)`` of the events that must become dead
    letters (:data:`streams.ports.DEAD_LETTER_VERDICTS`: ``conflicting_redelivery``,
    ``outside_dedup_window``); :func:`apply_decoded` makes their dead letters.
    """

    touched: frozenset[str]
    changed: frozenset[str]
    applied: int
    duplicates: int
    watermark: dt.date | None
    rejected: tuple[tuple[int, str], ...] = ()


def delta_item(event: InvoiceEvent, source: Source | None = None) -> DeltaItem:
    """What the feature store needs of one event: its delta, dedup keys and Kafka coordinates."""
    src = source or _NO_SOURCE
    return DeltaItem(event.enterprise_id, event.event_id, invoice_delta(event), event.enterprise_name,
                     month=month_index(event.issue_date), content_hash=event.content_hash(),
                     topic=src.topic, partition=src.partition, offset=src.offset)


def apply_events(store: FeatureStore, events: Sequence[InvoiceEvent],
                 sources: Sequence[Source] | None = None, *, registry: EnterpriseRegistry | None = None,
                 quorum: int | None = None) -> ApplyResult:
    """Fold the events into the store (one ``apply_many``) and advance the event-time watermark.

    With ``quorum`` (the live worker), the watermark moves by :mod:`streams.eventtime`'s rule: to the
    ``quorum``-th most recent latest date among the clients of ``registry`` (every enterprise when
    ``registry`` is None), so neither a non-client nor fewer than ``quorum`` clients can push it.
    Without it (an in-process replay of trusted history), to the latest issue date applied.

    ``sources`` (one per event, the Kafka coordinates) let the store fence redelivery by offset;
    without them (the in-process backtest) only the dedup window recognises a repeated event.
    The watermark moves with the events that were not dead-lettered.

    Examples
    --------
    >>> import datetime as dt
    >>> from streams.adapters.memory import InMemoryFeatureStore
    >>> ev = InvoiceEvent(event_id="a", enterprise_id="E1", direction="in", invoice_no="1",
    ...     issue_date=dt.date(2019, 3, 1), counterparty_id="A9", amount="1.00", tax="0.13",
    ...     total="1.13", status="valid", produced_at=dt.datetime(2019, 3, 1, tzinfo=dt.UTC))
    >>> store = InMemoryFeatureStore()
    >>> r = apply_events(store, [ev, ev])
    >>> sorted(r.changed), r.applied, r.duplicates, r.watermark
    (['E1'], 1, 1, datetime.date(2019, 3, 1))
    >>> other = ev.model_copy(update={"counterparty_id": "A8"})  # same id, other content
    >>> apply_events(store, [other]).rejected
    ((0, 'conflicting_redelivery'),)
    """
    if not events:
        return ApplyResult(frozenset(), frozenset(), 0, 0, store.watermark())
    if sources is not None and len(sources) != len(events):
        raise ValueError(f"{len(sources)} sources for {len(events)} events")
    items = [delta_item(e, sources[i] if sources is not None else None) for i, e in enumerate(events)]
    verdicts = store.apply_many(items).verdicts
    rejected = tuple((i, v.value) for i, v in enumerate(verdicts) if v in DEAD_LETTER_VERDICTS)
    applied = sum(1 for v in verdicts if v is Verdict.APPLIED)
    changed = frozenset(item.enterprise_id for item, v in zip(items, verdicts, strict=True) if v is Verdict.APPLIED)
    kept = [e for e, v in zip(events, verdicts, strict=True) if v not in DEAD_LETTER_VERDICTS]
    watermark: dt.date | None
    if quorum is None:
        watermark = store.advance_watermark(max(e.issue_date for e in kept)) if kept else store.watermark()
    else:
        latest = latest_client_dates(kept, registry)
        watermark = store.advance_watermark_quorum(latest, quorum) if latest else store.watermark()
    return ApplyResult(
        touched=frozenset(item.enterprise_id for item in items),
        changed=changed,
        applied=applied,
        duplicates=len(items) - applied - len(rejected),
        watermark=watermark,
        rejected=rejected,
    )


# --------------------------------------------------------------------------- scoring


def build_batch(states: Sequence[EnterpriseState], registry: EnterpriseRegistry, as_of: dt.date) -> ScoringBatch:
    """The model inputs of these enterprises as of ``as_of`` (registry name first, else the event's)."""
    arrays = arrays_of_many(states, as_of)  # one batch: the same arithmetic as to_vector / to_sequence
    numeric = features_from_arrays(arrays)
    seq = sequences_from_window(arrays.window) if states else np.zeros((0, 0, 0), dtype=np.float32)
    categorical: list[tuple[str, str]] = []
    known: list[str | None] = []
    for state in states:
        info = registry.get(state.enterprise_id)
        categorical.append(classify_name(info.name if info is not None else state.name))
        known.append(info.rating if info is not None else None)
    return ScoringBatch([s.enterprise_id for s in states], numeric, categorical, seq, known)


def _probability_or_none(p: float | None) -> float | None:
    """A model probability for the wire: clipped to [0, 1]; None when absent or not finite."""
    return None if p is None or not math.isfinite(p) else min(1.0, max(0.0, float(p)))


def to_event(score: Score, n_invoices: int, industry: str, legal_form: str, *, as_of: dt.date,
             bundle_version: str, now: dt.datetime) -> EnterpriseScore:
    """The wire form of a model score."""
    probs = {r: float(score.rating_probabilities.get(r, 0.0)) for r in _RATINGS}
    pd_ = float(score.default_probability)
    return EnterpriseScore(
        enterprise_id=score.enterprise_id,
        as_of=as_of,
        rating=score.rating,  # type: ignore[arg-type]  # validated by pydantic
        rating_known=score.rating_known,
        rating_probabilities=probs,  # type: ignore[arg-type]
        default_probability=min(1.0, max(0.0, pd_)) if math.isfinite(pd_) else 1.0,
        segment=score.segment,
        industry=industry,
        legal_form=legal_form,
        n_invoices=n_invoices,
        bundle_version=bundle_version,
        scored_at=now,
        default_probability_invoice_only=_probability_or_none(score.default_probability_invoice_only),
        risk_factors=list(score.reasons or ()),
        challenger_default_probability=_probability_or_none(score.challenger_default_probability),
    )


def rescore(
    enterprise_ids: Iterable[str],
    store: FeatureStore,
    registry: EnterpriseRegistry,
    scorer: Scorer,
    *,
    as_of: dt.date,
    now: dt.datetime,
    batch_size: int = 256,
    reasons: bool = True,
) -> list[EnterpriseScore]:
    """Score the enterprises as of ``as_of`` in micro-batches of ``batch_size``, sorted by id.

    Enterprises unknown to the registry are scored too (industry/legal form from the
    event's name, else ``unknown``/``other``; no known rating). ``reasons=False`` leaves
    ``risk_factors`` empty (the backtest adds them where it reports them); the worker
    publishes every score, so it always asks for them.
    """
    ids = sorted(set(enterprise_ids))
    out: list[EnterpriseScore] = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        states = store.load_many(chunk)
        batch = build_batch(states, registry, as_of)
        scores = scorer.score_many(batch, reasons=reasons)
        if len(scores) != len(chunk):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(chunk)} enterprises")
        n_col = NUMERIC_FEATURES.index("n_invoices")
        for i, (score, (industry, legal_form)) in enumerate(zip(scores, batch.categorical, strict=True)):
            out.append(to_event(score, int(batch.numeric[i, n_col]), industry, legal_form, as_of=as_of,
                                bundle_version=scorer.version, now=now))
    return out


def stale_score_ids(scores: Iterable[EnterpriseScore], as_of: dt.date) -> list[str]:
    """Ids whose score was computed as of an earlier month than ``as_of``, sorted.

    Features depend on the as-of *month* (trailing windows, months since the last invoice), so a
    score computed when the enterprise last invoiced goes stale once the watermark enters a later
    month. The allocator rescores these before deciding, so that every line rests on features as
    of the same month, as in the backtest.

    Examples
    --------
    >>> import datetime as dt
    >>> class S:  # the two fields read
    ...     def __init__(self, e, d): self.enterprise_id, self.as_of = e, d
    >>> stale_score_ids([S("E2", dt.date(2020, 1, 31)), S("E1", dt.date(2020, 2, 3))], dt.date(2020, 2, 21))
    ['E2']
    """
    month = month_index(as_of)
    return sorted(s.enterprise_id for s in scores if month_index(s.as_of) < month)


# --------------------------------------------------------------------------- one micro-batch


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Everything one micro-batch produced; the shell publishes it.

    ``valid`` counts the messages that were valid events (applied, duplicates, or refused by the
    store's exactly-once rule and dead-lettered); ``messages`` every message of the batch.
    ``applied.rejected`` holds message indices within the batch.
    """

    valid: int
    dead_letters: list[DeadLetter]
    applied: ApplyResult
    scores: list[EnterpriseScore]
    messages: int = 0


def fold_batch(
    messages: Sequence[tuple[bytes | str | Mapping[str, object], Source]],
    features: FeatureStore,
    registry: EnterpriseRegistry,
    *,
    now: dt.datetime,
    policy: IngestPolicy = DEFAULT_POLICY,
) -> BatchOutcome:
    """Ingest and fold one micro-batch, without scoring (``scores`` of the outcome is empty).

    :func:`fold_records` over the messages (one topic at a time, in order); the worker calls
    :func:`fold_records` with the polled batch as columns. It folds every polled batch at once and
    rescores what the batches touched once per window (:func:`rescore`); :func:`process_batch` does
    both for one batch.
    """
    out: BatchOutcome | None = None
    start = 0
    while start < len(messages) or out is None:
        topic = messages[start][1].topic if messages else ""
        end = start
        while end < len(messages) and messages[end][1].topic == topic:
            end += 1
        part = messages[start:end]
        batch = RecordBatch(topic, [raw for raw, _ in part],  # type: ignore[misc]
                            [src.key.encode() if src.key is not None else None for _, src in part],
                            [src.partition for _, src in part], [src.offset for _, src in part],
                            [src.timestamp_ms or 0 for _, src in part])
        folded = fold_records(batch, features, registry, now=now, policy=policy)
        out = folded if out is None else merge_outcomes(out, folded)
        start = end
        if not messages:
            break
    return out


def fold_records(batch: RecordBatch, features: FeatureStore, registry: EnterpriseRegistry, *, now: dt.datetime,
                 policy: IngestPolicy = DEFAULT_POLICY) -> BatchOutcome:
    """Ingest and fold a polled batch given as columns (the worker's hot path; no scoring).

    :func:`decode_records` (pure: no store) then :func:`apply_decoded` (the store): the vectorised decoder
    (:func:`streams.columns.decode_batch`) takes the canonical messages as columns; every other message goes
    through :func:`ingest` (the published schema, then the policy), and the valid ones join the columns in
    message order. One :meth:`FeatureStore.apply_columns` judges and folds them all; the events it refuses
    become dead letters, and the watermark moves with the rest (:func:`streams.eventtime` quorum over
    ``registry``'s clients). The worker runs the two steps on two threads, so that the store write of one
    batch overlaps the decoding of the next.
    """
    return apply_decoded(decode_records(batch, now, policy), features, registry, now=now, policy=policy)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A polled batch decoded: its valid events as columns, and the dead letters of the others (by message index)."""

    batch: RecordBatch
    cols: InvoiceColumns
    dead: list[tuple[int, DeadLetter]]
    prepared: object | None = None  # the store's column_preparer() of ``cols``, computed where it was decoded


def decode_records(batch: RecordBatch, now: dt.datetime, policy: IngestPolicy = DEFAULT_POLICY) -> DecodedBatch:
    """The first, pure half of :func:`fold_records`: decode and validate, no store."""
    n = len(batch)
    if policy.fast_decode:
        cols, slow = decode_batch(batch, now, policy)
    else:
        cols, slow = empty_columns(batch.topic), list(range(n))
    dead: list[tuple[int, DeadLetter]] = []  # (message index, letter)
    if slow:
        events: list[InvoiceEvent] = []
        rows: list[int] = []
        for i in slow:
            raw = batch.values[i]
            item = ingest(raw if raw is not None else b"", record_source(batch, i), now, policy)
            if isinstance(item, InvoiceEvent):
                events.append(item)
                rows.append(i)
            else:
                dead.append((i, item))
        if events:
            extra = columns_from_events(events, rows, batch.topic, [batch.partitions[i] for i in rows],
                                        [batch.offsets[i] for i in rows])
            cols = InvoiceColumns.concat([cols, extra], batch.topic)
    return DecodedBatch(batch, cols, dead)


def decode_parts(batch: RecordBatch, now: dt.datetime, policy: IngestPolicy = DEFAULT_POLICY,
                 prepare: Callable[[InvoiceColumns], object] | None = None,
                 ) -> tuple[InvoiceColumns, list[tuple[int, DeadLetter]], object | None]:
    """:func:`decode_records` without the batch it was given: what a decode process sends back (the caller
    keeps the raw messages; pickling them back would double the transfer), with ``prepare(cols)`` (the
    store's :meth:`~streams.ports.FeatureStore.column_preparer`) when given."""
    decoded = decode_records(batch, now, policy)
    return decoded.cols, decoded.dead, (prepare(decoded.cols) if prepare is not None and len(decoded.cols) else None)


def apply_decoded(decoded: DecodedBatch, features: FeatureStore, registry: EnterpriseRegistry, *, now: dt.datetime,
                  policy: IngestPolicy = DEFAULT_POLICY) -> BatchOutcome:
    """The second half of :func:`fold_records`: fold into the store, dead-letter what it refuses, move the watermark."""
    batch, cols, dead = decoded.batch, decoded.cols, list(decoded.dead)
    n = len(batch)
    if not len(cols):
        return BatchOutcome(0, [d for _, d in dead], ApplyResult(frozenset(), frozenset(), 0, 0, features.watermark()),
                            [], n)
    write = features.apply_columns(cols, decoded.prepared)
    letters = write.letters
    applied_mask = letters == VERDICT_LETTERS[Verdict.APPLIED]
    refused = (letters == VERDICT_LETTERS[Verdict.CONFLICT]) | (letters == VERDICT_LETTERS[Verdict.LATE])
    rejected: list[tuple[int, str]] = []
    for j in np.flatnonzero(refused).tolist():
        row = int(cols.row[j])
        reason = Verdict.CONFLICT.value if letters[j] == VERDICT_LETTERS[Verdict.CONFLICT] else Verdict.LATE.value
        rejected.append((row, reason))
        raw = batch.values[row]
        dead.append((row, dead_letter(raw if raw is not None else b"", record_source(batch, row), reason,  # type: ignore[arg-type]
                                      _REFUSED_WHY[reason], now, max_bytes=policy.max_dead_letter_bytes)))
    dead.sort(key=lambda pair: pair[0])
    kept = cols.take(~refused) if refused.any() else cols
    eids = frozenset(cols.enterprise_id.tolist())
    latest: dict[str, dt.date] = {}
    if len(kept):
        frame = pd.DataFrame({"e": kept.enterprise_id, "d": kept.day})
        for eid, day in frame.groupby("e", sort=False)["d"].max().items():
            if registry.get(str(eid)) is not None:
                latest[str(eid)] = day_date(int(day))
    watermark = features.advance_watermark_quorum(latest, policy.watermark_quorum) if latest else features.watermark()
    n_applied = int(applied_mask.sum())
    result = ApplyResult(touched=eids, changed=frozenset(cols.enterprise_id[applied_mask].tolist()),
                         applied=n_applied, duplicates=len(cols) - n_applied - len(rejected), watermark=watermark,
                         rejected=tuple(rejected))
    return BatchOutcome(len(cols), [d for _, d in dead], result, [], n)


_REFUSED_WHY: Final = {
    "conflicting_redelivery": "event_id already applied with other content (dedup window)",
    "outside_dedup_window": "issued before the enterprise's dedup window: a re-send could not be recognised; raise "
                            "redis.dedup_window_months and re-inject it",
}


def record_source(batch: RecordBatch, i: int) -> Source:
    """The :class:`Source` of message ``i`` of a polled batch."""
    ts = batch.timestamps_ms[i]
    return Source(batch.topic, batch.partitions[i], batch.offsets[i], decode_key(batch.keys[i]),
                  ts if ts and ts > 0 else None)


def process_batch(
    messages: Sequence[tuple[bytes | str | Mapping[str, object], Source]],
    features: FeatureStore,
    scores: ScoreStore,
    registry: EnterpriseRegistry,
    scorer: Scorer | None,
    *,
    now: dt.datetime,
    score_batch_size: int = 256,
    policy: IngestPolicy = DEFAULT_POLICY,
) -> BatchOutcome:
    """Ingest, fold and rescore one micro-batch; new scores are saved to ``scores``.

    ``scorer=None`` folds features only (a feature-only backfill). Scoring is as of the
    event-time watermark after the batch, which moves by the quorum of ``registry``'s clients
    (``policy.watermark_quorum``, :mod:`streams.eventtime`).
    """
    folded = fold_batch(messages, features, registry, now=now, policy=policy)
    result = folded.applied
    if scorer is None or not result.touched or result.watermark is None:
        return folded
    new_scores = rescore(result.touched, features, registry, scorer, as_of=result.watermark, now=now,
                         batch_size=score_batch_size)
    scores.put_many(new_scores)
    return BatchOutcome(folded.valid, folded.dead_letters, result, new_scores, folded.messages)


def merge_outcomes(first: BatchOutcome, second: BatchOutcome) -> BatchOutcome:
    """One outcome for two parts of a batch processed one after the other (the later score of an enterprise wins).

    Examples
    --------
    >>> empty = BatchOutcome(0, [], ApplyResult(frozenset(), frozenset(), 0, 0, None), [])
    >>> merge_outcomes(empty, empty).applied.applied
    0
    """
    a, b = first.applied, second.applied
    marks = [w for w in (a.watermark, b.watermark) if w is not None]
    shift = first.messages
    applied = ApplyResult(a.touched | b.touched, a.changed | b.changed, a.applied + b.applied,
                          a.duplicates + b.duplicates, max(marks) if marks else None,
                          a.rejected + tuple((i + shift, why) for i, why in b.rejected))
    scores = list({s.enterprise_id: s for s in first.scores + second.scores}.values())
    return BatchOutcome(first.valid + second.valid, first.dead_letters + second.dead_letters, applied, scores,
                        first.messages + second.messages)


def poison_letter(raw: bytes | str | Mapping[str, object], source: Source, now: dt.datetime,
                  error: BaseException) -> DeadLetter:
    """The dead letter of a message that alone makes its batch fail (reason ``processing_failed``).

    Examples
    --------
    >>> import datetime as dt
    >>> d = poison_letter(b"{}", Source("invoices", 1, 9), dt.datetime(2020, 1, 1, tzinfo=dt.UTC), RuntimeError("boom"))
    >>> d.reason, d.error, d.source_offset
    ('processing_failed', "RuntimeError('boom')", 9)
    """
    return dead_letter(raw, source, REASON_PROCESSING_FAILED, repr(error), now)


# --------------------------------------------------------------------------- allocation


@dataclass(frozen=True, slots=True)
class LineDecision:
    """The allocator's decision for one enterprise (amount 0 = no line)."""

    enterprise_id: str
    amount_yuan: float
    rate: float
    expected_profit_yuan: float
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllocationDecision:
    """What an allocator run decided, in the stream's terms."""

    lines: Mapping[str, LineDecision]
    total_amount_yuan: float
    expected_profit_yuan: float
    solver: str
    runtime_s: float
    optimum_yuan: float | None = None
    gap: float | None = None


class Allocate(Protocol):
    """Runs the allocator over scores (see :mod:`streams.adapters.allocation` for the real one)."""

    def __call__(self, scores: Sequence[EnterpriseScore], *, budget_yuan: float, solver: str,
                 seed: int) -> AllocationDecision: ...


@dataclass(frozen=True, slots=True)
class AllocationOutcome:
    """The lines to publish (changed ones only), every current line, and the summary."""

    changed: list[CreditLine]
    lines: dict[str, CreditLine]
    summary: AllocationSummary
    n_unknown: int = 0
    skipped: list[str] = field(default_factory=list)


class _Proposed(NamedTuple):
    """A line as the allocator now proposes it, in the shape :func:`allocator.reasons.line_changes` reads."""

    amount_yuan: float
    rate: float
    default_probability: float
    rating: str
    segment: str
    reasons: Sequence[str]


def change_reasons(previous: CreditLine | None, amount_yuan: float, rate: float, score: EnterpriseScore,
                   reasons_now: Sequence[str]) -> list[str]:
    """Why a line differs from the previous one (``["new"]`` without one, empty when unchanged).

    The rule is :func:`allocator.reasons.line_changes` (its one home): a line changes when its
    amount or rate does, or when the allocator's reasons for it do (``reasons_changed``: e.g. a
    declined enterprise re-rated from D to B is still declined, now for
    ``negative_expected_profit``), so the published reasons never go stale.
    """
    proposed = _Proposed(amount_yuan, rate, score.default_probability, score.rating, score.segment, reasons_now)
    return list(line_changes(previous, proposed))


def run_allocation(
    scores: Mapping[str, EnterpriseScore],
    previous: Mapping[str, CreditLine],
    allocate: Allocate,
    registry: EnterpriseRegistry,
    *,
    budget_yuan: float,
    solver: str,
    as_of: dt.date,
    now: dt.datetime,
    allocation_id: str,
    bundle_version: str,
    seed: int = 0,
) -> AllocationOutcome:
    """Allocate credit over the current scores of known clients; lines that changed get published.

    Enterprises unknown to the registry are not offered credit: their line is 0 with the
    reason ``unknown_enterprise`` (published once, when first seen).
    """
    eligible = [s for eid, s in sorted(scores.items()) if registry.get(eid) is not None]
    unknown = [s for eid, s in sorted(scores.items()) if registry.get(eid) is None]
    decision = allocate(eligible, budget_yuan=budget_yuan, solver=solver, seed=seed)
    lines: dict[str, CreditLine] = {}
    changed: list[CreditLine] = []
    for score in eligible + unknown:
        eid = score.enterprise_id
        if registry.get(eid) is None:
            d = LineDecision(eid, 0.0, 0.0, 0.0, (REASON_UNKNOWN_ENTERPRISE,))
        else:
            d = decision.lines.get(eid) or LineDecision(eid, 0.0, 0.0, 0.0, (REASON_NOT_ALLOCATED,))
        prev = previous.get(eid)
        why = change_reasons(prev, d.amount_yuan, d.rate, score, d.reasons)
        line = CreditLine(
            enterprise_id=eid,
            allocation_id=allocation_id,
            as_of=as_of,
            amount_yuan=float(d.amount_yuan),
            rate=float(d.rate),
            expected_profit_yuan=float(d.expected_profit_yuan),
            default_probability=score.default_probability,
            rating=score.rating,
            segment=score.segment,
            reasons=list(d.reasons),
            previous_amount_yuan=prev.amount_yuan if prev is not None else None,
            previous_rate=prev.rate if prev is not None else None,
            change_reasons=why,
            bundle_version=bundle_version,
            solver=decision.solver,
            decided_at=now,
            risk_factors=list(score.risk_factors),
        )
        if why:
            changed.append(line)
            lines[eid] = line
        else:
            lines[eid] = prev  # type: ignore[assignment]  # unchanged: keep the published line
    summary = AllocationSummary(
        allocation_id=allocation_id,
        as_of=as_of,
        budget_yuan=float(budget_yuan),
        total_amount_yuan=float(decision.total_amount_yuan),
        expected_profit_yuan=float(decision.expected_profit_yuan),
        n_enterprises=len(scores),
        n_lines=sum(1 for line in lines.values() if line.amount_yuan > 0),
        n_changed=len(changed),
        solver=decision.solver,
        optimum_yuan=decision.optimum_yuan,
        gap=decision.gap,
        runtime_s=float(decision.runtime_s),
        bundle_version=bundle_version,
        decided_at=now,
    )
    return AllocationOutcome(changed, lines, summary, n_unknown=len(unknown))


def allocation_id_for(as_of: dt.date, now: dt.datetime) -> str:
    """A readable, unique-enough id: the as-of date and the decision time.

    Examples
    --------
    >>> import datetime as dt
    >>> allocation_id_for(dt.date(2019, 12, 31), dt.datetime(2020, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC))
    'alloc-20191231-20200102T030405.600000Z'
    """
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"alloc-{as_of:%Y%m%d}-{stamp}"


Fingerprint = tuple[int, str]


def scores_fingerprint(scores: Mapping[str, EnterpriseScore]) -> Fingerprint:
    """What the allocator decides on: how many scores, and when the newest was computed.

    Examples
    --------
    >>> import datetime as dt
    >>> class S:
    ...     def __init__(self, t): self.scored_at = t
    >>> scores_fingerprint({"E1": S(dt.datetime(2020, 1, 1)), "E2": S(dt.datetime(2020, 1, 2))})
    (2, '2020-01-02T00:00:00')
    """
    return len(scores), max(x.scored_at.isoformat() for x in scores.values())


@dataclass(frozen=True, slots=True)
class AllocationPolicy:
    """How the allocator decides: the budget, the solver, its seed, and the fewest scores worth deciding on."""

    budget_yuan: float
    solver: str = "exact"
    seed: int = 0
    min_scores: int = 1


@dataclass(frozen=True, slots=True)
class AllocationStep:
    """One decision of the allocator and what the shell must publish for it.

    ``refreshed`` are the stale scores rescored as of ``as_of`` (publish them and save them to
    the ScoreStore); ``outcome.changed`` the credit lines to publish (then save them to the
    CreditLineStore); ``fingerprint`` what to pass as ``last_fingerprint`` next time.
    """

    as_of: dt.date
    outcome: AllocationOutcome
    refreshed: list[EnterpriseScore]
    fingerprint: Fingerprint


def decide_allocation(
    scores: Mapping[str, EnterpriseScore],
    previous: Mapping[str, CreditLine],
    allocate: Allocate,
    registry: EnterpriseRegistry,
    policy: AllocationPolicy,
    *,
    now: dt.datetime,
    bundle_version: str,
    as_of: dt.date | None = None,
    features: FeatureStore | None = None,
    scorer: Scorer | None = None,
    last_fingerprint: Fingerprint | None = None,
    force: bool = False,
) -> AllocationStep | None:
    """The allocator's step: when to decide, on which scores, and the decision. The worker and the backtest call it.

    Returns None when fewer than ``policy.min_scores`` enterprises are scored, or when the scores
    are those of the last decision (``last_fingerprint``) and ``force`` is not set.

    ``as_of`` is the event-time watermark (default: the newest score's as-of date). Scores
    computed as of an earlier month (enterprises that stopped invoicing) are rescored as of it
    first, from ``features`` through ``scorer`` when both are given, so that every line rests on
    features as of the same month; the cached state of those enterprises is invalidated first,
    since other workers own most of their partitions. Nothing is written: the shell publishes
    the step's results and then saves them.
    """
    if len(scores) < max(1, policy.min_scores):
        return None
    fingerprint = scores_fingerprint(scores)
    if fingerprint == last_fingerprint and not force:
        return None
    as_of = as_of or max(x.as_of for x in scores.values())
    refreshed: list[EnterpriseScore] = []
    stale = stale_score_ids(scores.values(), as_of)
    if stale and features is not None and scorer is not None:
        features.invalidate(stale)
        refreshed = rescore(stale, features, registry, scorer, as_of=as_of, now=now)
        scores = {**scores, **{x.enterprise_id: x for x in refreshed}}
        fingerprint = scores_fingerprint(scores)
    outcome = run_allocation(scores, previous, allocate, registry, budget_yuan=policy.budget_yuan, solver=policy.solver,
                             as_of=as_of, now=now, allocation_id=allocation_id_for(as_of, now),
                             bundle_version=bundle_version, seed=policy.seed)
    return AllocationStep(as_of, outcome, refreshed, fingerprint)
