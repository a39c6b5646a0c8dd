"""The columnar hot path against the published schema: same verdicts, same values, same state.

``streams.columns.decode_batch`` takes the canonical messages as columns and hands every other one
to ``streams.pipeline.ingest`` (pydantic). Accepted by the vectorised rules must imply accepted by
pydantic with equal values; and a whole batch folded through ``fold_records`` must give the very
dead letters (reason and text, in message order) and the very feature state of the message-by-message
path (``fast_decode=False``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.adapters import redis_store
from streams.adapters.memory import InMemoryFeatureStore, InMemoryRegistry
from streams.columns import RecordBatch, columns_from_events, decode_batch
from streams.dataset import DEFAULT_DATA_DIR, iter_invoice_rows
from streams.events import InvoiceEvent
from streams.features.fold import fold_columns, invoice_delta
from streams.pipeline import Source, fold_records, ingest
from streams.policy import IngestPolicy
from streams.replay import _payload
from tests.unit.streams.test_pipeline import MALFORMED, VALID
from tests.unit.streams.test_wire import _messages

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FAST, SLOW = IngestPolicy(fast_decode=True), IngestPolicy(fast_decode=False)
_FIELDS = ("row", "enterprise_id", "counterparty_id", "out", "void", "day", "month", "amount_cents", "total_cents",
           "id_hash", "content_hash", "name", "partition", "offset")


def _batch(values: list[bytes], keys: list[bytes | None] | None = None, timestamps: list[int] | None = None) -> RecordBatch:
    n = len(values)
    return RecordBatch("invoices", values, keys if keys is not None else [b"E1"] * n, [0] * n, list(range(n)),
                       timestamps if timestamps is not None else [0] * n)


def _accepted_equal_pydantic(batch: RecordBatch, policy: IngestPolicy = FAST) -> int:
    """Every row decode_batch accepts is an event ingest accepts, with equal columns; returns how many it took."""
    cols, slow = decode_batch(batch, NOW, policy)
    assert sorted(set(cols.row.tolist()) | set(slow)) == list(range(len(batch)))
    assert not set(cols.row.tolist()) & set(slow)
    events, rows = [], []
    for i in cols.row.tolist():
        src = Source(batch.topic, batch.partitions[i], batch.offsets[i],
                     batch.keys[i].decode() if batch.keys[i] is not None else None, batch.timestamps_ms[i] or None)
        event = ingest(batch.values[i], src, NOW, SLOW)
        assert isinstance(event, InvoiceEvent), (batch.values[i], event)
        events.append(event)
        rows.append(i)
    ref = columns_from_events(events, rows, batch.topic, [batch.partitions[i] for i in rows],
                              [batch.offsets[i] for i in rows])
    for name in _FIELDS:
        assert getattr(cols, name).tolist() == getattr(ref, name).tolist(), name
    return len(cols)


def _same_outcome(batch: RecordBatch) -> None:
    """fold_records, columnar and message by message: the same dead letters and the same store state."""
    stores = []
    letters = []
    for policy in (FAST, SLOW):
        store = InMemoryFeatureStore()
        out = fold_records(batch, store, InMemoryRegistry(), now=NOW, policy=policy)
        stores.append(store)
        letters.append([(d.source_offset, d.reason, d.error) for d in out.dead_letters])
        assert out.messages == len(batch)
        assert out.valid + len(out.dead_letters) - len(out.applied.rejected) == len(batch)
    assert letters[0] == letters[1]
    ids = sorted(stores[1].enterprise_ids())
    assert sorted(stores[0].enterprise_ids()) == ids
    for a, b in zip(stores[0].load_many(ids, with_counterparties=True),
                    stores[1].load_many(ids, with_counterparties=True), strict=True):
        assert (a.counters, a.counterparties, a.name) == (b.counters, b.counterparties, b.name)


def test_the_real_invoices_are_taken_whole_with_pydantic_values() -> None:
    values, keys = [], []
    for line, row in itertools.islice(iter_invoice_rows(DEFAULT_DATA_DIR), 5000):
        values.append(_payload(row, f"r{line}"))
        keys.append(row["enterprise_id"].encode())
    batch = _batch(values, keys)
    assert _accepted_equal_pydantic(batch) == 5000  # the replay's canonical JSON never needs the general path
    _same_outcome(batch)


def test_the_malformed_corpus_goes_to_the_general_path_with_the_same_letters() -> None:
    good = json.dumps(VALID, separators=(",", ":")).encode()
    values = [good, *MALFORMED.values(), good.replace(b'"E1-out-1-0"', b'"E1-out-2-0"')]
    batch = _batch(values)
    assert _accepted_equal_pydantic(batch) == 2  # the two canonical messages; every malformed one is left
    _same_outcome(batch)
    for raw in MALFORMED.values():  # alone, too (a block of one that the reader refuses)
        assert _accepted_equal_pydantic(_batch([raw])) == 0


def test_keys_timestamps_and_tombstones_follow_the_policy() -> None:
    good = json.dumps(VALID, separators=(",", ":")).encode()
    future_ms = int((NOW + dt.timedelta(days=1)).timestamp() * 1000)
    batch = RecordBatch("invoices", [good, good, good, None, good.replace(b'"E1-out-1-0"', b'"x"')],
                        [b"E1", b"E2", None, b"E1", b"E1"], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4],
                        [0, 0, 0, 0, future_ms])
    cols, slow = decode_batch(batch, NOW, FAST)
    assert cols.row.tolist() == [0, 2] and slow == [1, 3, 4]  # key mismatch, tombstone, record from the future
    _same_outcome(batch)


def test_dates_that_do_not_exist_and_odd_spellings_take_the_general_path() -> None:
    base = json.dumps(VALID, separators=(",", ":"))
    odd = [base.replace('"2019-05-01"', '"2019-02-30"'), base.replace('"2019-05-01"', '"2019-13-01"'),
           base.replace('"2019-05-01T10:00:00Z"', '"2019-02-30T10:00:00Z"'),
           base.replace('"2019-05-01T10:00:00Z"', '"2019-05-01T10:00:00+08:00"'),
           base.replace('"2019-05-01"', '"2020-02-29"').replace('"2019-05-01T10:00:00Z"', '"2020-02-29T23:00:00-05:00"'),
           base.replace('"2019-05-01"', '"2019-05-03"'), base.replace('"100.00"', '"-0.00"').replace('"13.00"', '"0.00"')
           .replace('"113.00"', '"0.00"'), base[:-1] + ',"schema_version":null}', base[:-1] + ',"schema_version":1}',
           base[:-1] + ',"enterprise_name":" padded "}', base[:-1] + ',"enterprise_name":""}']
    batch = _batch([text.replace("E1-out-1-0", f"e{i}").encode() for i, text in enumerate(odd)])
    _accepted_equal_pydantic(batch)
    _same_outcome(batch)


def test_a_producer_with_another_valid_spelling_costs_a_bounded_number_of_reads(monkeypatch) -> None:
    import streams.columns as columns

    calls = []
    real = columns._read
    monkeypatch.setattr(columns, "_read", lambda lines, joined=None: calls.append(len(lines)) or real(lines, joined))
    base = json.dumps(VALID, separators=(",", ":"))
    values = [base.replace("E1-out-1-0", f"n{i}").replace('"100.00"', "100").encode() for i in range(400)]  # numbers
    batch = _batch(values)
    cols, slow = decode_batch(batch, NOW, FAST)
    assert len(cols) == 0 and slow == list(range(400))
    assert len(calls) <= 1 + columns.MAX_SPLIT_READS + 2  # not one bisection per message
    _same_outcome(batch)  # pydantic takes them all: valid, with the same state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_messages(), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_hypothesis_batches_get_the_same_verdicts_and_state(messages: list[bytes], rnd: object) -> None:
    good = [json.dumps({**VALID, "event_id": f"g{i}", "invoice_no": str(i)}, separators=(",", ":")).encode()
            for i in range(5)]
    values = messages + good + messages[:3]  # re-sends of the first messages too
    rnd.shuffle(values)  # type: ignore[attr-defined]
    batch = _batch(values)
    _accepted_equal_pydantic(batch)
    _same_outcome(batch)


_COLUMNS = st.lists(st.tuples(st.integers(0, 3), st.integers(201801, 201803), st.booleans(), st.booleans(),
                              st.integers(-500, 500), st.integers(-600, 600), st.sampled_from(["B1", "B2", "C:3"])),
                    max_size=60)


@settings(max_examples=200, deadline=None)
@given(_COLUMNS)
def test_the_fold_over_columns_is_the_sum_of_invoice_deltas(rows: list[tuple[int, int, bool, bool, int, int, str]]) -> None:
    expected: list[dict[str, int]] = [{} for _ in range(4)]
    for group, yyyymm, out, void, amount, total, cp in rows:
        event = InvoiceEvent.model_construct(
            event_id="x", enterprise_id="E", direction="out" if out else "in", invoice_no="1",
            issue_date=dt.date(yyyymm // 100, yyyymm % 100, 1), counterparty_id=cp, status="void" if void else "valid",
            amount=Decimal(amount) / 100, tax=Decimal(0), total=Decimal(total) / 100)
        for key, inc in invoice_delta(event).items():
            expected[group][key] = expected[group].get(key, 0) + inc
    a = np.array(rows, dtype=object).reshape(-1, 7) if rows else np.empty((0, 7), dtype=object)
    folded = fold_columns(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(bool), a[:, 3].astype(bool),
                          a[:, 4].astype(np.int64), a[:, 5].astype(np.int64), a[:, 6].astype(object))
    assert folded.dicts(4) == expected
    payloads = folded.payloads(4)
    for group in range(4):
        assert _expand(payloads[group]) == expected[group]
        assert _expand(redis_store._payload(expected[group])) == expected[group]  # noqa: SLF001 - the per-item path's encoder


def _expand(payload: tuple[bytes, bytes, bytes]) -> dict[str, int]:
    """The delta the apply script's three payloads carry; their ``s:cpasum_{d}`` must be the sum of its ``cpa``."""
    text = payload[0].decode().split()
    delta = dict(zip(text[0::2], map(int, text[1::2]), strict=True))
    sums = {d: delta.pop(f"s:cpasum_{d}", None) for d in ("in", "out")}
    for direction, part in zip(("in", "out"), payload[1:], strict=True):
        words = part.decode().split()
        assert len(words) % 3 == 0
        added = []
        for cid, count, amount in zip(words[0::3], words[1::3], words[2::3], strict=True):
            if count != "-":
                delta[f"cp:{direction}:{cid}"] = int(count)
            if amount != "-":
                delta[f"cpa:{direction}:{cid}"] = int(amount)
                added.append(int(amount))
        assert sums[direction] == (sum(added) if added else None)
    return delta
