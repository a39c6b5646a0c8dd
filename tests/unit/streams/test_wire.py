"""The compiled wire decoder (msgspec) against the published schema (pydantic): same verdicts, same values."""

from __future__ import annotations

import datetime as dt
import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.dataset import DEFAULT_DATA_DIR, iter_invoice_rows
from streams.events import InvoiceEvent
from streams.pipeline import Source, ingest
from streams.policy import IngestPolicy
from streams.replay import _payload
from streams.wire import DuplicateKey, decode_invoice, decode_slow, find_duplicate_key
from tests.unit.streams.test_pipeline import MALFORMED, VALID

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
FAST, SLOW = IngestPolicy(fast_decode=True), IngestPolicy(fast_decode=False)


def _pydantic(raw: bytes) -> InvoiceEvent | None:
    try:
        return decode_slow(raw)
    except (ValidationError, DuplicateKey, ValueError):
        return None


def _same_verdict(raw: bytes) -> None:
    """The fast decoder accepts only what pydantic accepts, with equal values; ingest agrees either way."""
    fast = decode_invoice(raw)
    slow = _pydantic(raw)
    if fast is not None:
        assert slow is not None, raw
        assert fast == slow and fast.model_dump() == slow.model_dump(), raw
        assert fast.content_hash() == slow.content_hash()
        assert fast.model_fields_set == slow.model_fields_set
    a, b = ingest(raw, Source("t", 0, 1), NOW, FAST), ingest(raw, Source("t", 0, 1), NOW, SLOW)
    assert type(a) is type(b), raw
    if isinstance(a, InvoiceEvent):
        assert a == b
    else:
        assert a.reason == b.reason and a.error == b.error  # type: ignore[union-attr]


def test_the_real_invoices_take_the_fast_path_with_pydantic_values() -> None:
    fast = 0
    for line, row in itertools.islice(iter_invoice_rows(DEFAULT_DATA_DIR), 3000):
        raw = _payload(row, f"r{line}")
        _same_verdict(raw)
        fast += decode_invoice(raw) is not None
    assert fast == 3000  # the replay's compact JSON never needs the slow path


def test_the_malformed_corpus_gets_the_same_verdicts() -> None:
    for raw in MALFORMED.values():
        assert decode_invoice(raw) is None
        _same_verdict(raw)


def test_spellings_the_fast_path_hands_to_pydantic_still_agree() -> None:
    base = json.dumps(VALID, separators=(",", ":"))
    variants = [
        json.dumps(VALID), json.dumps(VALID, indent=2), base.replace('"out"', '"OUT"'),
        base.replace('"valid"', '" valid"'), base.replace('"E1"', '" E1"'), base.replace('"100.00"', "100"),
        base.replace('"100.00"', "100.0").replace('"113.00"', "113"), base.replace('"E1"', '"E\\u0031"'),
        base.replace('"B1"', '"供应商1"'), base[:-1] + ',"schema_version":1}', base[:-1] + ',"enterprise_name":"甲"}',
        base[:-1] + ',"enterprise_name":null}', base[:-1] + ',"schema_version":2}',
        base.replace('"2019-05-01T10:00:00Z"', '"2019-05-01T10:00:00"'),
        base.replace('"2019-05-01T10:00:00Z"', '"2019-05-01 10:00:00+08:00"'),
        base.replace('"2019-05-01"', '"2019-05-01T00:00:00"'), base.replace('"100.00"', '"1e2"'),
        base.replace('"100.00"', "1e-400").replace('"113.00"', '"13.00"'), base.replace('"100.00"', "true"),
    ]
    for text in variants:
        _same_verdict(text.encode())


def test_duplicate_keys_are_dead_letters_on_both_paths() -> None:
    compact = json.dumps(VALID, separators=(",", ":"))
    for raw in (compact[:-1] + ',"amount":"999.00"}', compact.replace('{', '{"amount":"1.00",', 1),
                compact.replace('"tax":', '"tax" :"1.00","tax":'), compact.replace('"tax":', '"t\\u0061x":"1.00","tax":')):
        assert find_duplicate_key(raw.encode()) is not None
        for policy in (FAST, SLOW):
            out = ingest(raw.encode(), Source("t"), NOW, policy)
            assert out.reason == "duplicate_key", raw  # type: ignore[union-attr]
    assert find_duplicate_key(b'{"a": {"b": 1, "b": 2}}') == "b"
    assert find_duplicate_key(b"{not json") is None


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
_FIELD_VALUES = {
    "event_id": st.one_of(st.just("E1-out-1-0"), _TEXT),
    "enterprise_id": st.sampled_from(["E1", " E1", "E1\x00", "Ｅ１", "E1\u200b", "", "E{1}", "企业"]),
    "direction": st.sampled_from(["in", "out", "IN", " out", "sideways", 1]),
    "invoice_no": st.one_of(st.just("0001"), _TEXT, st.integers()),
    "issue_date": st.one_of(st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2031, 1, 1)).map(str),
                            st.integers(), _TEXT),
    "counterparty_id": st.sampled_from(["B1", "B 1", "B1\t", "乙7", "b"]),
    "amount": st.one_of(st.decimals(places=2, allow_nan=True, allow_infinity=True).map(str),
                        st.integers(-10**13, 10**13), st.floats(allow_nan=False, allow_infinity=False), _TEXT),
    "tax": st.one_of(st.sampled_from(["13.00", "-13.00", "0", "0.00", 13, 13.0, "13.001"])),
    "total": st.one_of(st.sampled_from(["113.00", "87.00", "100", 113, "-113.00"])),
    "status": st.sampled_from(["valid", "void", "Valid ", "pending", None]),
    "produced_at": st.one_of(st.datetimes(min_value=dt.datetime(1999, 1, 1), max_value=dt.datetime(2031, 1, 1),
                                          timezones=st.none() | st.just(dt.UTC)).map(dt.datetime.isoformat), _TEXT),
    "enterprise_name": st.one_of(st.none(), _TEXT),
    "schema_version": st.sampled_from([1, 2, "1", 1.0, True]),
}


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    payload: dict[str, object] = dict(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=4, unique=True)):
        payload[name] = draw(_FIELD_VALUES[name])
    for name in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=1)):
        del payload[name]
    text = json.dumps(payload, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.booleans()):  # a duplicate key, sometimes
        key = draw(st.sampled_from(sorted(VALID)))
        text = text[:-1] + f',"{key}":' + json.dumps(draw(_FIELD_VALUES[key])) + "}"
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_hypothesis_inputs_get_the_same_verdicts(raw: bytes) -> None:
    _same_verdict(raw)
