"""Hostile input at the edge (issue 11): each case is a dead letter with a closed-set reason, and nothing stops.

The table these tests back is docs/faults.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from decimal import Decimal

import pytest

from streams.adapters.memory import InMemoryFeatureStore, InMemoryRegistry, InMemoryScoreStore
from streams.events import DLQ_REASONS, DeadLetter, InvoiceEvent
from streams.metrics import Metrics
from streams.pipeline import Source, ingest, ingest_many, process_batch, run_allocation
from streams.policy import IngestPolicy, dead_letter
from streams.ports import EnterpriseInfo
from tests.unit.streams.test_pipeline import VALID, GreedyAllocate, RuleScorer

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KAFKA_TS = int(dt.datetime(2025, 12, 31, 23, 59, tzinfo=dt.UTC).timestamp() * 1000)


def _raw(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}, separators=(",", ":")).encode()


def _reason(raw: bytes, source: Source | None = None, policy: IngestPolicy = IngestPolicy()) -> str:
    out = ingest(raw, source or Source("invoices", 0, 9, "E1", KAFKA_TS), NOW, policy)
    assert isinstance(out, DeadLetter), out
    assert out.error and out.source_offset == (source.offset if source else 9)
    assert base64.b64decode(out.raw_base64) == raw and out.raw_length == len(raw) and not out.raw_truncated
    return out.reason


@pytest.mark.parametrize(("raw", "reason"), [
    (_raw(enterprise_id="E1\x00"), "invalid_id"),
    (_raw(enterprise_id="Ｅ１"), "invalid_id"),
    (_raw(enterprise_id="E1\u200b"), "invalid_id"),
    (_raw(counterparty_id="B1\u200d"), "invalid_id"),
    (_raw(event_id="e\x1b[31m"), "invalid_id"),
    (_raw(tax="-13.00", total="87.00"), "sign_mismatch"),
    (_raw(amount="-100.00", tax="13.00", total="-87.00"), "sign_mismatch"),
    (_raw(amount="1000000000000.00", tax="0.00", total="1000000000000.00"), "amount_ceiling"),
    (_raw(amount="2000000000.00", tax="0.00", total="2000000000.00"), "amount_ceiling"),  # the 1e9 default
    (_raw()[:-1] + b',"amount":"999.00"}', "duplicate_key"),
    (_raw(issue_date="2030-01-01", produced_at="2030-01-01T00:00:00Z"), "event_time_future"),
    (_raw(produced_at="2026-01-01T01:00:00Z", issue_date="2026-01-01"), "event_time_future"),
])
def test_hostile_inputs_are_dead_letters_with_their_reason(raw: bytes, reason: str) -> None:
    assert _reason(raw) == reason


def test_the_kafka_key_must_be_the_enterprise_id() -> None:
    assert _reason(_raw(), Source("invoices", 1, 3, "E2", KAFKA_TS)) == "key_mismatch"
    assert isinstance(ingest(_raw(), Source("invoices", 1, 3, "E1", KAFKA_TS), NOW), InvoiceEvent)
    assert isinstance(ingest(_raw(), Source("invoices", 1, 3, "E2"), NOW, IngestPolicy(require_key_match=False)),
                      InvoiceEvent)


def test_produced_at_may_not_run_ahead_of_its_kafka_record() -> None:
    ts = int(dt.datetime(2019, 5, 1, 9, 0, tzinfo=dt.UTC).timestamp() * 1000)  # written at 09:00, claims 10:00
    assert _reason(_raw(), Source("invoices", 0, 9, "E1", ts)) == "event_time_future"
    ok = int(dt.datetime(2019, 5, 1, 9, 56, tzinfo=dt.UTC).timestamp() * 1000)  # within the 5-minute skew
    assert isinstance(ingest(_raw(), Source("invoices", 0, 9, "E1", ok), NOW), InvoiceEvent)
    future_record = int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert _reason(_raw(), Source("invoices", 0, 9, "E1", future_record)) == "event_time_future"
    late = IngestPolicy(max_clock_skew=dt.timedelta(days=3650))
    assert isinstance(ingest(_raw(issue_date="2030-01-01", produced_at="2030-01-01T00:00:00Z"),
                             Source("invoices", 0, 9, "E1"), NOW, late), InvoiceEvent)


def test_the_amount_ceiling_is_a_setting() -> None:
    raw = _raw(amount="5000.00", tax="0.00", total="5000.00")
    assert isinstance(ingest(raw, Source("invoices"), NOW), InvoiceEvent)
    assert _reason(raw, Source("invoices", 0, 9), IngestPolicy(max_amount_yuan=Decimal(1000))) == "amount_ceiling"


def test_a_huge_message_becomes_a_dead_letter_under_the_limit_with_its_length_and_hash() -> None:
    raw = b'{"event_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    out = ingest(raw, Source("invoices", 2, 77, "E1"), NOW)
    assert isinstance(out, DeadLetter) and out.reason == "invalid_value"  # event_id longer than 128
    encoded = out.model_dump_json().encode()
    assert len(encoded) <= IngestPolicy().max_dead_letter_bytes
    assert out.raw_truncated and out.raw_length == len(raw) and out.raw_sha256 == hashlib.sha256(raw).hexdigest()
    head = base64.b64decode(out.raw_base64)
    assert raw.startswith(head) and len(head) > 700_000  # base64: 4 bytes per 3
    assert (out.source_partition, out.source_offset) == (2, 77)


@pytest.mark.parametrize("limit", [4096, 10_000, 100_000])
def test_dead_letters_always_fit(limit: int) -> None:
    for size in (0, 1, limit // 2, limit, 3 * limit):
        raw = bytes(range(256)) * (size // 256 + 1)
        dl = dead_letter("invalid", "é" * 5000, raw[:size], "invoices", 0, 1, "k" * 10_000, NOW, max_bytes=limit)
        assert len(dl.model_dump_json().encode()) <= limit
        assert dl.raw_truncated == (base64.b64decode(dl.raw_base64) != raw[:size])


def test_a_thousand_distinct_bad_dates_make_one_metric_series() -> None:
    m = Metrics()
    future = [dt.date(2030, 1, 1) + dt.timedelta(days=i) for i in range(1000)]
    raws = [(_raw(issue_date=str(d), produced_at=f"{d}T00:00:00Z", event_id=f"e{i}"),
             Source("invoices", 0, i, "E1", KAFKA_TS)) for i, d in enumerate(future)]
    raws += [(_raw(issue_date=str(dt.date(2019, 1, 3) + dt.timedelta(days=i)), produced_at="2019-01-01T00:00:00Z"),
              Source("invoices", 0, i, "E1", KAFKA_TS)) for i in range(1000)]
    events, dead = ingest_many(raws, NOW)
    assert len(dead) == 2000 and not events
    for d in dead:
        m.dead_letter(d.reason)
    series = [line for line in m.exposition().decode().splitlines() if line.startswith("riskmon_dlq_total{")]
    assert {d.reason for d in dead} <= DLQ_REASONS
    assert len(series) == len({d.reason for d in dead}) == 2, series
    assert len({d.error for d in dead}) == 2000  # the detail is kept, in the record


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry([EnterpriseInfo(f"E{i}", f"***{i}有限公司", "B") for i in range(1, 6)])


def _invoice(eid: str, n: int, day: str, *, amount: str = "100.00") -> bytes:
    tax = (Decimal(amount) * Decimal("0.13")).quantize(Decimal("0.01"))
    return json.dumps({**VALID, "event_id": f"{eid}-{n}", "enterprise_id": eid, "invoice_no": str(n),
                       "issue_date": day, "amount": amount, "tax": str(tax), "total": str(Decimal(amount) + tax),
                       "produced_at": f"{day}T10:00:00Z"}).encode()


def test_a_non_client_dated_2030_moves_no_line() -> None:
    """Issue 11's case: a 1-yuan invoice of a non-client dated 2030-01-01 moves neither the watermark nor a line."""
    registry, features, scores, scorer = _registry(), InMemoryFeatureStore(), InMemoryScoreStore(), RuleScorer()
    history = [(_invoice(f"E{i}", n, f"2019-{m:02d}-15"), Source("invoices", 0, -1, f"E{i}"))
               for i in range(1, 6) for n, m in enumerate(range(1, 13))]
    before = process_batch(history, features, scores, registry, scorer, now=NOW)
    assert not before.dead_letters and before.applied.watermark == dt.date(2019, 12, 15)
    kw = dict(budget_yuan=300_000, solver="exact", seed=0, bundle_version="double-1")
    first = run_allocation(scores.all(), {}, GreedyAllocate(), registry, as_of=before.applied.watermark, now=NOW,
                           allocation_id="a1", **kw)

    hostile = _invoice("X999", 1, "2030-01-01", amount="1.00")
    # with the real clock it never gets in
    out = process_batch([(hostile, Source("invoices", 0, 100, "X999", KAFKA_TS))], features, scores, registry,
                        scorer, now=NOW)
    assert [d.reason for d in out.dead_letters] == ["event_time_future"]
    # and with a clock that lets it in (a host whose clock is wrong), it still moves nothing
    clock_2030 = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    out = process_batch([(hostile, Source("invoices", 0, 101, "X999"))], features, scores, registry, scorer,
                        now=clock_2030)
    assert out.applied.applied == 1 and out.applied.watermark == dt.date(2019, 12, 15) == features.watermark()
    # one client far ahead cannot move it either (quorum 3)
    out = process_batch([(_invoice("E1", 99, "2030-01-01"), Source("invoices", 0, 102, "E1"))], features, scores,
                        registry, scorer, now=clock_2030)
    assert out.applied.watermark == dt.date(2019, 12, 15)
    second = run_allocation(scores.all(), first.lines, GreedyAllocate(), registry, as_of=features.watermark(),
                            now=clock_2030, allocation_id="a2", **kw)
    assert [line.enterprise_id for line in second.changed if line.amount_yuan > 0] == []
    assert all(second.lines[e].amount_yuan == first.lines[e].amount_yuan for e in first.lines)
