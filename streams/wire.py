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
compact object has exactly one ``":`` per key, so the count decides cheaply; a message with a
backslash or with whitespace after a quote (where a key could hide), or whose count is off, is
parsed again with the stdlib (:func:`find_duplicate_key`), on both paths.

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

from streams.events import InvoiceEvent, _two_decimals, check_identifier, check_invoice

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
_REQUIRED: Final = ("event_id", "enterprise_id", "direction", "invoice_no", "issue_date", "counterparty_id",
                    "amount", "tax", "total", "status", "produced_at")
#: fields set, by (schema_version present, enterprise_name present), as pydantic records them
_FIELDS_SET: Final = {
    (False, False): set(_REQUIRED), (True, False): {*_REQUIRED, "schema_version"},
    (False, True): {*_REQUIRED, "enterprise_name"}, (True, True): {*_REQUIRED, "schema_version", "enterprise_name"},
}


def decode_invoice(raw: bytes) -> InvoiceEvent | None:
    """The event when the fast path accepts ``raw``; None hands the message to pydantic."""
    try:
        w = _DECODER.decode(raw)
    except (msgspec.DecodeError, ValueError):
        return None
    has_version = w.schema_version is not msgspec.UNSET
    has_name = w.enterprise_name is not msgspec.UNSET
    if _maybe_duplicate(raw, 11 + has_version + has_name):  # a duplicate key, or a key msgspec did not see
        return None
    name = w.enterprise_name if isinstance(w.enterprise_name, str) else None
    if name is not None and name != name.strip():
        return None
    try:  # the schema's own rules (one home): pydantic runs the very same functions
        for text in (w.event_id, w.enterprise_id, w.invoice_no, w.counterparty_id):
            check_identifier(text)  # no whitespace either, so pydantic's strip would change nothing
        _two_decimals(w.amount)
        _two_decimals(w.tax)
        _two_decimals(w.total)
        check_invoice(w.amount, w.tax, w.total, w.issue_date, w.produced_at)
    except ValueError:
        return None
    # what model_construct does, without its per-field default handling (every field is known here)
    event = _new(InvoiceEvent)
    _set(event, "__dict__", {
        "schema_version": 1, "event_id": w.event_id, "enterprise_id": w.enterprise_id, "direction": w.direction,
        "invoice_no": w.invoice_no, "issue_date": w.issue_date, "counterparty_id": w.counterparty_id,
        "amount": w.amount, "tax": w.tax, "total": w.total, "status": w.status, "produced_at": w.produced_at,
        "enterprise_name": name})
    _set(event, "__pydantic_fields_set__", set(_FIELDS_SET[has_version, has_name]))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


_new = object.__new__
_set = object.__setattr__


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


def _maybe_duplicate(raw: bytes, n_keys: int) -> bool:
    """False when ``raw`` surely names no key twice: a compact object with one ``":`` per key it has."""
    return (b"\\" in raw or b'" ' in raw or b'"\n' in raw or b'"\t' in raw or b'"\r' in raw
            or raw.count(b'":') != n_keys)


def decode_slow(raw: bytes) -> InvoiceEvent:
    """The published schema's decoder: pydantic-core on the bytes, then duplicate keys (raises when invalid).

    The stdlib parse that finds a duplicate key runs only for an invalid message or when the cheap
    count cannot rule one out, so a duplicate key is the reason whatever else is wrong.
    """
    try:
        event = InvoiceEvent.model_validate_json(raw)
    except ValidationError:
        key = find_duplicate_key(raw)  # a duplicate is the reason, whatever else is wrong (rare: no cost to speak of)
        if key is not None:
            raise DuplicateKey(key) from None
        raise
    if _maybe_duplicate(raw, len(event.model_fields_set)):
        key = find_duplicate_key(raw)
        if key is not None:
            raise DuplicateKey(key)
    return event


__all__ = ["DuplicateKey", "ValidationError", "WireInvoice", "decode_invoice", "decode_slow", "find_duplicate_key"]
