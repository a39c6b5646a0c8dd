"""Validation at the edge: what an InvoiceEvent accepts and what it refuses, with reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from streams.dataset import validation_reason
from streams.events import InvoiceEvent, reason_of

GOOD: dict[str, Any] = {
    "event_id": "E1-out-0001-0",
    "enterprise_id": "E1",
    "direction": "out",
    "invoice_no": "0001",
    "issue_date": "2019-05-01",
    "counterparty_id": "B00001",
    "amount": "100.00",
    "tax": "13.00",
    "total": "113.00",
    "status": "valid",
    "produced_at": "2019-05-01T10:00:00+08:00",
}


def test_good_event_round_trips_through_json() -> None:
    ev = InvoiceEvent.model_validate(GOOD)
    assert InvoiceEvent.model_validate_json(ev.model_dump_json()) == ev
    assert ev.invoice_no == "0001"  # leading zeros kept: invoice numbers are strings


def test_dirty_but_valid_values_are_normalised() -> None:
    ev = InvoiceEvent.model_validate({**GOOD, "status": " Void", "direction": "OUT ", "enterprise_id": " E1"})
    assert (ev.status, ev.direction, ev.enterprise_id) == ("void", "out", "E1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"direction": "sideways"}, "invalid_value"),
        ({"status": "cancelled"}, "invalid_value"),
        ({"extra_field": 1}, "unknown_field"),
        ({"amount": "abc"}, "invalid_type"),
        ({"amount": "100.001", "total": "113.001"}, "invalid_amount"),
        ({"amount": "2e12", "total": "2e12", "tax": "0"}, "amount_ceiling"),
        ({"total": "200.00"}, "total_mismatch"),
        ({"amount": "100.00", "tax": "-13.00", "total": "87.00"}, "sign_mismatch"),
        ({"issue_date": "1999-12-31"}, "date_too_old"),
        ({"issue_date": "2019-05-09"}, "issue_after_produced"),
        ({"produced_at": "2019-05-01T10:00:00"}, "naive_timestamp"),
        ({"enterprise_id": "E{1}"}, "invalid_id"),
        ({"enterprise_id": "E1\x00"}, "invalid_id"),
        ({"enterprise_id": "\uff25\uff11"}, "invalid_id"),  # full-width E1
        ({"enterprise_id": "E1\u200b"}, "invalid_id"),  # zero-width space
        ({"counterparty_id": "B\u00a01"}, "invalid_id"),  # no-break space
        ({"event_id": "x\u2028y"}, "invalid_id"),  # line separator
        ({"amount": "NaN"}, "invalid_amount"),
        ({"schema_version": 7}, "schema_version"),
    ],
)
def test_bad_events_are_refused_with_a_closed_set_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        InvoiceEvent.model_validate({**GOOD, **change})
    assert reason_of(info.value) == reason
    assert validation_reason(info.value).startswith(f"{reason}: ")


def test_missing_field_is_named() -> None:
    payload = {k: v for k, v in GOOD.items() if k != "counterparty_id"}
    with pytest.raises(ValidationError) as info:
        InvoiceEvent.model_validate_json(json.dumps(payload))
    assert validation_reason(info.value) == "missing_field: counterparty_id: missing: Field required"


def test_non_ascii_ids_in_nfkc_are_accepted() -> None:
    ev = InvoiceEvent.model_validate({**GOOD, "counterparty_id": "供应商7"})
    assert ev.counterparty_id == "供应商7"


def test_content_hash_ignores_spelling_and_sees_content() -> None:
    a = InvoiceEvent.model_validate(GOOD)
    b = InvoiceEvent.model_validate_json(json.dumps({**GOOD, "amount": 100, "produced_at": "2019-05-01T02:00:00Z"},
                                                    indent=2))
    assert a.content_hash() == b.content_hash()
    c = InvoiceEvent.model_validate({**GOOD, "amount": "100.01", "total": "113.01"})
    assert c.content_hash() != a.content_hash()
