"""Validation at the edge: what an InvoiceEvent accepts and what it refuses, with reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from streams.dataset import validation_reason
from streams.events import InvoiceEvent

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
        ({"direction": "sideways"}, "direction:literal_error"),
        ({"status": "cancelled"}, "status:literal_error"),
        ({"extra_field": 1}, "extra_field:extra_forbidden"),
        ({"amount": "abc"}, "amount:decimal_parsing"),
        ({"amount": "100.001", "total": "113.001"}, "amount:value_error"),
        ({"total": "200.00"}, "event:amount + tax != total"),
        ({"issue_date": "1999-12-31"}, "event:issue_date 1999-12-31 is before 2000-01-01"),
        ({"issue_date": "2019-05-09"}, "event:issue_date 2019-05-09 is after the producer timestamp 2019-05-01T10:00:00+08:00"),
        ({"produced_at": "2019-05-01T10:00:00"}, "event:produced_at must carry a timezone"),
        ({"enterprise_id": "E{1}"}, "enterprise_id:string_pattern_mismatch"),
        ({"amount": "NaN"}, "amount:finite_number"),
    ],
)
def test_bad_events_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        InvoiceEvent.model_validate({**GOOD, **change})
    assert validation_reason(info.value).startswith(reason)


def test_missing_field_is_named() -> None:
    payload = {k: v for k, v in GOOD.items() if k != "counterparty_id"}
    with pytest.raises(ValidationError) as info:
        InvoiceEvent.model_validate_json(json.dumps(payload))
    assert validation_reason(info.value) == "counterparty_id:missing"
