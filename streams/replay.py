"""Historical invoices as Kafka messages, in event-time order, with the stable event ids of the data set.

Every source row becomes one message, valid or not: the rows that fail validation are
published as they are, so they land in the dead-letter topic with a reason instead of
being dropped here. The JSON is built straight from the row (no pydantic on this side):
the worker validates, exactly as it would for any producer.

Examples
--------
>>> row = {"enterprise_id": "E1", "direction": "out", "invoice_no": "7", "date": "2019-05-02",
...        "counterparty_id": "B9", "amount": "10.00", "tax": "1.30", "total": "11.30", "status": "valid"}
>>> from streams.events import InvoiceEvent
>>> InvoiceEvent.model_validate_json(_payload(row, "E1-out-7-0")).produced_at.isoformat()
'2019-05-02T18:00:00+08:00'
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from streams.dataset import DEFAULT_DATA_DIR, iter_invoice_rows, produced_at_for


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One message to publish: its event date (for ordering and pacing), key and JSON value."""

    issue_date: dt.date | None  # None when the row's date does not parse (it goes to the DLQ)
    key: str
    value: bytes


def _payload(row: dict[str, str], event_id: str) -> bytes:
    try:
        issue = dt.date.fromisoformat(row["date"])
        issue_text, produced = issue.isoformat(), produced_at_for(issue).isoformat()
    except ValueError:
        issue_text, produced = row["date"], dt.datetime(1970, 1, 1, tzinfo=dt.UTC).isoformat()
    payload = {
        "event_id": event_id, "enterprise_id": row["enterprise_id"], "direction": row["direction"],
        "invoice_no": row["invoice_no"], "issue_date": issue_text, "counterparty_id": row["counterparty_id"],
        "amount": row["amount"], "tax": row["tax"], "total": row["total"], "status": row["status"],
        "produced_at": produced,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def replay_records(
    data_dir: Path = DEFAULT_DATA_DIR,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    enterprises: Collection[str] | None = None,
) -> list[ReplayRecord]:
    """The rows issued in ``[start, end]`` (inclusive; rows with a bad date always kept), in event-time order.

    Event ids are those of :func:`streams.dataset.iter_events` (``{ent}-{dir}-{no}-{k}``,
    ``k`` counted over the whole file), so a slice replays the same ids as a full run.
    """
    occurrences: dict[tuple[str, str, str], int] = {}
    records: list[ReplayRecord] = []
    for _line, row in iter_invoice_rows(data_dir):
        triple = (row["enterprise_id"], row["direction"], row["invoice_no"])
        k = occurrences.get(triple, 0)
        occurrences[triple] = k + 1
        if enterprises is not None and row["enterprise_id"] not in enterprises:
            continue
        try:
            issue: dt.date | None = dt.date.fromisoformat(row["date"])
        except ValueError:
            issue = None
        if issue is not None and ((start is not None and issue < start) or (end is not None and issue > end)):
            continue
        records.append(ReplayRecord(issue, row["enterprise_id"], _payload(row, f"{triple[0]}-{triple[1]}-{triple[2]}-{k}")))
    records.sort(key=lambda r: r.issue_date or dt.date.min)  # stable: same-day rows keep file order
    return records
