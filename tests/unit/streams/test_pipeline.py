"""The pure pipeline over the in-memory adapters (test doubles only for the scorer and allocator)."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from collections.abc import Sequence

import numpy as np
import pytest

from models.schema import NUMERIC_FEATURES, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from models.scoring import Score, ScoringBatch
from streams.adapters.memory import InMemoryFeatureStore, InMemoryRegistry, InMemoryScoreStore
from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
from streams.events import DeadLetter, EnterpriseScore, InvoiceEvent
from streams.features.fold import fold_all
from streams.pipeline import (
    REASON_UNKNOWN_ENTERPRISE,
    AllocationDecision,
    LineDecision,
    Source,
    apply_events,
    ingest,
    process_batch,
    rescore,
    run_allocation,
)
from streams.ports import EnterpriseInfo

NOW = dt.datetime(2020, 3, 1, tzinfo=dt.UTC)
VALID = {
    "event_id": "E1-out-1-0", "enterprise_id": "E1", "direction": "out", "invoice_no": "1",
    "issue_date": "2019-05-01", "counterparty_id": "B1", "amount": "100.00", "tax": "13.00",
    "total": "113.00", "status": "valid", "produced_at": "2019-05-01T10:00:00Z",
}


def _raw(**changes: object) -> bytes:
    payload = {**VALID, **changes}
    return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n",
    "bad_json": b'{"event_id": ',
    "not_utf8": b"\xff\xfe\x00garbage",
    "array": b"[1,2,3]",
    "string": b'"hello"',
    "unknown_field": _raw(colour="red"),
    "wrong_type_amount": _raw(amount="lots"),
    "wrong_type_date": _raw(issue_date=20190501),
    "inconsistent_total": _raw(total="200.00"),
    "unknown_direction": _raw(direction="sideways"),
    "unknown_status": _raw(status="pending"),
    "date_too_old": _raw(issue_date="1999-12-31"),
    "date_in_future": _raw(issue_date="2019-06-01"),
    "missing_field": _raw(counterparty_id=...),
    "naive_timestamp": _raw(produced_at="2019-05-01T10:00:00"),
    "three_decimals": _raw(amount="100.001", total="113.001"),
    "brace_in_id": _raw(enterprise_id="E{1}"),
    "nan_amount": b'{"amount": NaN}',
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_every_malformed_message_becomes_a_dead_letter_with_a_reason(name: str) -> None:
    raw = MALFORMED[name]
    out = ingest(raw, Source("invoices", 3, 42, "E1"), NOW)
    assert isinstance(out, DeadLetter), out
    assert out.reason and out.error
    assert (out.source_topic, out.source_partition, out.source_offset, out.key) == ("invoices", 3, 42, "E1")
    assert base64.b64decode(out.raw_base64) == raw


def test_dead_letter_reasons_are_specific() -> None:
    reason = {name: ingest(raw, Source("t"), NOW).reason for name, raw in MALFORMED.items()}  # type: ignore[union-attr]
    assert reason["empty"] == reason["whitespace"] == "empty"
    assert reason["bad_json"] == reason["not_utf8"] == "json_invalid"
    assert reason["array"] == reason["string"] == "not_object"
    assert reason["unknown_field"] == "unknown_field"
    assert reason["inconsistent_total"] == "total_mismatch"
    assert reason["unknown_direction"] == reason["unknown_status"] == "invalid_value"
    assert reason["missing_field"] == "missing_field"
    assert reason["wrong_type_amount"] == reason["wrong_type_date"] == "invalid_type"
    assert reason["date_too_old"] == "date_too_old" and reason["date_in_future"] == "issue_after_produced"
    assert reason["naive_timestamp"] == "naive_timestamp" and reason["three_decimals"] == "invalid_amount"
    assert reason["brace_in_id"] == "invalid_id"


def test_valid_message_and_mapping_payload() -> None:
    ev = ingest(_raw(), Source("invoices"), NOW)
    assert isinstance(ev, InvoiceEvent) and ev.amount_cents == 10000
    assert ingest(dict(VALID), Source("invoices"), NOW) == ev


def _real_events(n: int) -> list[InvoiceEvent]:
    items = itertools.islice(iter_events(DEFAULT_DATA_DIR), n)
    return [e for e in items if not isinstance(e, RejectedRow)]


def test_apply_events_in_shuffled_batches_with_redelivery_equals_batch_fold() -> None:
    events = _real_events(4000)
    rng = np.random.default_rng(0)
    shuffled = [events[i] for i in rng.permutation(len(events))]
    redelivered = shuffled + shuffled[: len(shuffled) // 3]
    store = InMemoryFeatureStore(dedup_window_months=600)  # any order: a window wider than the data
    applied = duplicates = 0
    for start in range(0, len(redelivered), 500):
        r = apply_events(store, redelivered[start : start + 500])
        applied += r.applied
        duplicates += r.duplicates
    assert applied == len(events) and duplicates == len(shuffled) // 3
    expected = fold_all(events)
    assert store.enterprise_ids() == set(expected)
    for eid, state in expected.items():
        assert store.load(eid).counters == state.counters
    assert store.watermark() == max(e.issue_date for e in events)


class RuleScorer:
    """A test double: known rating kept, otherwise C; default probability from the void rate."""

    version = "double-1"

    def __init__(self) -> None:
        self.batches: list[ScoringBatch] = []
        self.reasons_asked: list[object] = []

    def score_many(self, batch: ScoringBatch, *, reasons: object = True) -> list[Score]:
        self.batches.append(batch)
        self.reasons_asked.append(reasons)
        out = []
        void_rate = batch.numeric[:, NUMERIC_FEATURES.index("void_rate")]
        for eid, known, vr in zip(batch.enterprise_ids, batch.known_ratings, void_rate, strict=True):
            rating = known or "C"
            why = (f"void_rate: {float(vr):.2f}",) if reasons is True else None
            out.append(Score(eid, rating, known is not None, {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
                             0.9 if rating == "D" else float(np.nan_to_num(vr, nan=0.5)) * 0.5, "mid-end",
                             reasons=why))
        return out


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry([
        EnterpriseInfo("E1", "***电器销售有限公司", "A"),
        EnterpriseInfo("E2", "***建筑劳务有限责任公司", None),
        EnterpriseInfo("E3", "个体经营E3", "D"),
    ])


def _ev(eid: str, n: int, day: dt.date, name: str | None = None) -> InvoiceEvent:
    return InvoiceEvent(event_id=f"{eid}-out-{n}-0", enterprise_id=eid, direction="out", invoice_no=str(n),
                        issue_date=day, counterparty_id="B1", amount="10.00", tax="1.30", total="11.30",
                        status="void" if n % 4 == 0 else "valid", produced_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                        enterprise_name=name)


def test_rescore_builds_batches_from_the_fold_in_micro_batches() -> None:
    store = InMemoryFeatureStore()
    events = [_ev(e, n, dt.date(2019, 1 + n % 12, 1)) for e in ("E1", "E2", "E3") for n in range(1, 9)]
    events.append(_ev("X9", 1, dt.date(2019, 2, 1), name="***科技有限公司"))
    apply_events(store, events)
    scorer = RuleScorer()
    scores = rescore(["E3", "E1", "E2", "X9", "E1"], store, _registry(), scorer, as_of=dt.date(2019, 12, 31),
                     now=NOW, batch_size=2)
    assert [s.enterprise_id for s in scores] == ["E1", "E2", "E3", "X9"]
    assert [len(b.enterprise_ids) for b in scorer.batches] == [2, 2]
    b0 = scorer.batches[0]
    assert b0.numeric.shape == (2, len(NUMERIC_FEATURES))
    assert b0.sequences.shape == (2, len(SEQUENCE_CHANNELS), SEQUENCE_MONTHS)
    assert b0.known_ratings == ["A", None]
    by_id = {s.enterprise_id: s for s in scores}
    assert by_id["E1"].industry == "wholesale_retail" and by_id["E1"].rating_known
    assert (by_id["X9"].industry, by_id["X9"].rating_known) == ("information_software_it", False)
    assert by_id["E2"].n_invoices == 8 and by_id["E2"].bundle_version == "double-1"
    assert by_id["E2"].as_of == dt.date(2019, 12, 31) and by_id["E2"].scored_at == NOW


def test_process_batch_routes_bad_messages_and_scores_as_of_the_watermark() -> None:
    features, scores = InMemoryFeatureStore(), InMemoryScoreStore()
    good = [_ev("E1", 1, dt.date(2019, 3, 5)), _ev("E2", 2, dt.date(2019, 4, 9))]
    messages = [(e.model_dump_json().encode(), Source("invoices", 0, i)) for i, e in enumerate(good)]
    messages.insert(1, (b"garbage", Source("invoices", 0, 99)))
    out = process_batch(messages, features, scores, _registry(), RuleScorer(), now=NOW)
    assert [d.source_offset for d in out.dead_letters] == [99]
    assert out.applied.applied == 2
    assert {s.enterprise_id for s in out.scores} == {"E1", "E2"}
    # two clients so far: the watermark needs both (quorum min(3, 2)), so it is the older latest date
    assert all(s.as_of == out.applied.watermark == dt.date(2019, 3, 5) for s in out.scores)
    assert set(scores.all()) == {"E1", "E2"}
    # redelivery: nothing applied, but the touched enterprises are rescored (a crash may have hit before publishing)
    again = process_batch(messages, features, scores, _registry(), RuleScorer(), now=NOW)
    assert again.applied.applied == 0 and again.applied.duplicates == 2
    assert {s.enterprise_id for s in again.scores} == {"E1", "E2"}


def test_conflicting_redelivery_and_a_late_invoice_become_dead_letters_with_their_bytes() -> None:
    features, scores = InMemoryFeatureStore(), InMemoryScoreStore()
    first = _raw(event_id="E1-out-1-0")
    changed = _raw(event_id="E1-out-1-0", amount="90.00", total="103.00")  # same id, other amount
    resent = _raw(event_id="E1-out-1-0", produced_at="2019-05-02T10:00:00Z")  # same invoice, new producer stamp
    newer = _raw(event_id="E1-out-2-0", issue_date="2020-06-01", produced_at="2020-06-01T10:00:00Z")
    late = _raw(event_id="E1-out-3-0", issue_date="2019-06-01", produced_at="2020-06-01T10:00:00Z")
    messages = [(first, Source("invoices", 0, 0)), (changed, Source("invoices", 0, 1)),
                (resent, Source("invoices", 0, 2)), (newer, Source("invoices", 0, 3)), (late, Source("invoices", 0, 4))]
    later = dt.datetime(2020, 7, 1, tzinfo=dt.UTC)  # the worker's clock after the 2020-06 invoices were produced
    out = process_batch(messages, features, scores, _registry(), RuleScorer(), now=later)
    assert [(d.reason, d.source_offset) for d in out.dead_letters] == [("conflicting_redelivery", 1),
                                                                       ("outside_dedup_window", 4)]
    assert base64.b64decode(out.dead_letters[0].raw_base64) == changed
    assert (out.applied.applied, out.applied.duplicates) == (2, 1)
    assert features.load("E1").counters["m:201905:amt_out"] == 10_000  # the first amount stands
    assert out.applied.watermark == dt.date(2020, 6, 1)  # the late invoice moved nothing
    # Kafka redelivers the whole batch: the fence stopped below the first dead letter, so they are judged again;
    # 2019-05 is now older than the window (2020-06 moved it on): offsets 1 and 2 too are dead letters, never counted
    again = process_batch(messages, features, scores, _registry(), RuleScorer(), now=later)
    assert [(d.reason, d.source_offset) for d in again.dead_letters] == [
        ("outside_dedup_window", 1), ("outside_dedup_window", 2), ("outside_dedup_window", 4)]
    assert again.applied.applied == 0 and features.load("E1").counters["m:201905:amt_out"] == 10_000


class GreedyAllocate:
    """A test double allocator: 100 000 yuan at 6% to every non-D enterprise until the budget runs out."""

    def __call__(self, scores: Sequence[EnterpriseScore], *, budget_yuan: float, solver: str,
                 seed: int) -> AllocationDecision:
        lines, left = {}, budget_yuan
        for s in scores:
            amount = 100_000.0 if s.rating != "D" and left >= 100_000 else 0.0
            left -= amount
            lines[s.enterprise_id] = LineDecision(s.enterprise_id, amount, 0.06 if amount else 0.0, amount * 0.01,
                                                  ("rating_D",) if s.rating == "D" else ("granted",))
        total = budget_yuan - left
        return AllocationDecision(lines, total, total * 0.01, solver, 0.001, optimum_yuan=total * 0.01, gap=0.0)


def _scores(registry: InMemoryRegistry) -> dict[str, EnterpriseScore]:
    store = InMemoryFeatureStore()
    apply_events(store, [_ev(e, 1, dt.date(2019, 5, 1)) for e in ("E1", "E2", "E3", "X9")])
    return {s.enterprise_id: s for s in rescore(store.enterprise_ids(), store, registry, RuleScorer(),
                                                as_of=dt.date(2019, 5, 31), now=NOW)}


def test_run_allocation_publishes_only_changes_and_keeps_unknowns_out() -> None:
    registry = _registry()
    scores = _scores(registry)
    kw = dict(solver="exact", as_of=dt.date(2019, 5, 31), now=NOW, bundle_version="double-1")
    first = run_allocation(scores, {}, GreedyAllocate(), registry, budget_yuan=150_000, allocation_id="a1", **kw)
    assert {line.enterprise_id for line in first.changed} == {"E1", "E2", "E3", "X9"}
    lines = first.lines
    assert lines["X9"].amount_yuan == 0 and lines["X9"].reasons == [REASON_UNKNOWN_ENTERPRISE]
    assert lines["E3"].amount_yuan == 0 and lines["E3"].rating == "D"
    assert sum(line.amount_yuan for line in lines.values()) <= 150_000
    assert all(line.change_reasons == ["new"] and line.previous_amount_yuan is None for line in first.changed)
    assert first.summary.n_lines == 1 and first.summary.n_changed == 4 and first.n_unknown == 1
    assert first.summary.n_enterprises == 4 and first.summary.allocation_id == "a1"

    same = run_allocation(scores, lines, GreedyAllocate(), registry, budget_yuan=150_000, allocation_id="a2", **kw)
    assert same.changed == [] and same.summary.n_changed == 0 and same.lines["E1"].allocation_id == "a1"

    more = run_allocation(scores, lines, GreedyAllocate(), registry, budget_yuan=250_000, allocation_id="a3", **kw)
    assert [line.enterprise_id for line in more.changed] == ["E2"]
    e2 = more.changed[0]
    assert (e2.previous_amount_yuan, e2.amount_yuan, e2.allocation_id) == (0.0, 100_000.0, "a3")
    assert e2.change_reasons[:2] == ["amount_increased", "rate_increased"]


def test_score_events_and_credit_lines_carry_the_model_reasons_and_the_challenger() -> None:
    from streams.events import CreditLine
    from streams.pipeline import to_event

    score = Score("E1", "C", True, {"A": 0.1, "B": 0.2, "C": 0.6, "D": 0.1}, 0.31, "mid-end",
                  default_probability_invoice_only=0.27, challenger_default_probability=0.06,
                  reasons=("sales_growth: sales fell 43% in the last 12 months",))
    event = to_event(score, 12, "manufacturing", "limited_company", as_of=dt.date(2019, 5, 31),
                     bundle_version="b", now=NOW)
    assert event.schema_version == 2
    assert event.risk_factors == ["sales_growth: sales fell 43% in the last 12 months"]
    assert (event.default_probability_invoice_only, event.challenger_default_probability) == (0.27, 0.06)
    # a version-1 message (no new fields) still validates
    old = json.loads(event.model_dump_json())
    for key in ("risk_factors", "default_probability_invoice_only", "challenger_default_probability"):
        old.pop(key)
    assert EnterpriseScore.model_validate({**old, "schema_version": 1}).risk_factors == []
    # a declined line names the enterprise's own risk factors beside the allocator's reasons
    registry = _registry()
    scores = {"E3": event.model_copy(update={"enterprise_id": "E3", "rating": "D", "default_probability": 0.9})}
    result = run_allocation(scores, {}, GreedyAllocate(), registry, budget_yuan=150_000, allocation_id="a1",
                            solver="exact", as_of=dt.date(2019, 5, 31), now=NOW, bundle_version="b")
    line = result.lines["E3"]
    assert isinstance(line, CreditLine) and line.amount_yuan == 0 and line.schema_version == 2
    assert line.risk_factors == ["sales_growth: sales fell 43% in the last 12 months"]


def test_the_worker_explains_every_score_it_publishes_once_per_enterprise_per_batch() -> None:
    """Issue 8: every published score (and so every line) carries reasons; the worker scores each
    touched enterprise once per micro-batch, however many of its invoices the batch holds."""
    features, scores = InMemoryFeatureStore(), InMemoryScoreStore()
    events = [_ev(e, n, dt.date(2019, 3, n)) for e in ("E1", "E2") for n in range(1, 6)]
    messages = [(e.model_dump_json().encode(), Source("invoices", 0, i)) for i, e in enumerate(events)]
    scorer = RuleScorer()
    out = process_batch(messages, features, scores, _registry(), scorer, now=NOW)
    assert scorer.reasons_asked == [True]
    assert sorted(e for b in scorer.batches for e in b.enterprise_ids) == ["E1", "E2"]
    assert [s.enterprise_id for s in out.scores] == ["E1", "E2"]
    assert all(s.risk_factors for s in out.scores)
