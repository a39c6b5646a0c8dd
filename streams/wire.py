"""The compiled wire decoder: JSON bytes -> :class:`~streams.events.InvoiceEvent` with msgspec.

The pydantic models in :mod:`streams.events` stay the published schema (``riskmon schema``)
and the judge of every message: this decoder only takes the common, clean case fast. A
msgspec ``Struct`` mirrors ``InvoiceEvent`` at least as strictly (exact types, the same
lengths, ``Literal`` values without the case and whitespace pydantic forgives), the same
cross-field rules run on the result (:func:`streams.events.check_invoice`, one home), and
the event is built with ``model_construct``. Whatever the fast decoder does not accept, it
hands back (``None``) and pydantic decides, so the two cannot disagree about a message they
both see: accepted here implies accepted there with equal values, which
``tests/unit/streams/test_wire.py`` checks on the malformed corpus and on hypothesis inputs.

Duplicate keys: msgspec, like pydantic, keeps the last of two equal keys. A duplicate-free
compact object has exactly one ``":`` per key, so the count decides cheaply; any message with a
backslash or with whitespace after a quote (where a key could hide) goes to the slow path,
which checks keys with :func:`find_duplicate_key`.

Examples
--------
>>> raw = (b'{"event_id":"E1-out-7-0","enterprise_id":"E1","direction":"out","invoice_no":"7",'
...        b'"issue_date":"2019-05-02","counterparty_id":"B9","amount":"10.00","tax":"1.30",'
...        b'"total":"11.30","status":"valid","produced_at":"2019-05-02T18:00:00+08:00"}')
>>> ev = decode_invoice(raw)
>>> ev.amount_cents, ev == InvoiceEvent.model_validate_json(raw)
(1000, True)
>>> decode_invoice(raw.replace(b'"tax"', b'"total":"1","tax"')) is None  # a duplicate key: the slow path
True
>>> find_duplicate_key(b'{"a": 1, "a": 2}')
'a'
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Annotated, Final, Literal

import msgspec
from pydantic import ValidationError

from streams.events import InvoiceEvent, check_identifier, check_invoice

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Name = Annotated[str, msgspec.Meta(max_length=200)]


class WireInvoice(msgspec.Struct, forbid_unknown_fields=True):
    """``InvoiceEvent`` on the wire, as msgspec decodes it (kept in step with the pydantic model)."""

    event_id: _EventId
    enterprise_id: _Id
    direction: Literal["in", "out"]
    invoice_no: _Id
    issue_date: dt.date
    counterparty_id: _Id
    amount: Decimal
    tax: Decimal
    total: Decimal
    status: Literal["valid", "void"]
    produced_at: dt.datetime
    schema_version: Literal[1] | msgspec.UnsetType = msgspec.UNSET
    enterprise_name: _Name | None | msgspec.UnsetType = msgspec.UNSET


_DECODER: Final = msgspec.json.Decoder(WireInvoice)
_REQUIRED_KEYS: Final = 11
_CENT: Final = Decimal("0.01")
_MAX_ABS: Final = Decimal("1e12")
_QUOTE_SPACE: Final = (b'" ', b'"\n', b'"\t', b'"\r')


def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def decode_invoice(raw: bytes) -> InvoiceEvent | None:
    """The event when the fast path accepts ``raw``; None hands the message to pydantic."""
    if b"\\" in raw or any(q in raw for q in _QUOTE_SPACE):
        return None
    try:
        w = _DECODER.decode(raw)
    except (msgspec.DecodeError, ValueError):
        return None
    keys = _REQUIRED_KEYS + (w.schema_version is not msgspec.UNSET) + (w.enterprise_name is not msgspec.UNSET)
    if raw.count(b'":') != keys:
        return None
    name = None if w.enterprise_name is msgspec.UNSET else w.enterprise_name
    # pydantic strips whitespace and checks the id alphabet: take only what needs neither
    for text in (w.event_id, w.enterprise_id, w.invoice_no, w.counterparty_id):
        if not _plain(text) or "{" in text or "}" in text:
            return None
    if name is not None and name != name.strip():
        return None
    for value in (w.amount, w.tax, w.total):
        if not value.is_finite() or abs(value) > _MAX_ABS or value != value.quantize(_CENT):
            return None
    try:
        check_invoice(w.amount, w.tax, w.total, w.issue_date, w.produced_at)
        for text in (w.event_id, w.enterprise_id, w.invoice_no, w.counterparty_id):
            check_identifier(text)
    except ValueError:
        return None
    fields = {
        "event_id": w.event_id, "enterprise_id": w.enterprise_id, "direction": w.direction,
        "invoice_no": w.invoice_no, "issue_date": w.issue_date, "counterparty_id": w.counterparty_id,
        "amount": w.amount, "tax": w.tax, "total": w.total, "status": w.status, "produced_at": w.produced_at,
    }
    present = set(fields)
    if w.schema_version is not msgspec.UNSET:
        present.add("schema_version")
    if w.enterprise_name is not msgspec.UNSET:
        present.add("enterprise_name")
    return InvoiceEvent.model_construct(present, **fields, schema_version=1, enterprise_name=name)


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate JSON key {key!r}")
        self.key = key


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def find_duplicate_key(raw: bytes) -> str | None:
    """The first key named twice in any object of ``raw`` (None when none, or when it is not JSON at all)."""
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except DuplicateKey as exc:
        return exc.key
    except (ValueError, RecursionError):  # not JSON (or too deep): pydantic says what is wrong
        return None
    return None


def decode_slow(raw: bytes) -> InvoiceEvent:
    """The published schema's decoder: duplicate keys first, then pydantic (raises on invalid input)."""
    key = find_duplicate_key(raw)
    if key is not None:
        raise DuplicateKey(key)
    return InvoiceEvent.model_validate_json(raw)


__all__ = ["DuplicateKey", "ValidationError", "WireInvoice", "decode_invoice", "decode_slow", "find_duplicate_key"]
