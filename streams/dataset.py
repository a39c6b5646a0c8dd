"""Reading the CUMCM 2020 C data set (``data/cumcm2020c`` or any folder laid out the same way).

Each invoice row becomes an :class:`~streams.events.InvoiceEvent` through the same
validation the stream applies, so the batch features and a replay through Kafka see
exactly the same events; rows that fail validation are returned as :class:`RejectedRow`
(five real rows fail: their amount + tax differs from the total by up to 1.38 yuan).

What identifies an invoice event. ``invoice_no`` is not unique in the data (13,766
rows repeat an (enterprise, direction, number) triple, 11,665 are exact copies of
another row). Every row of the source is an invoice as issued, so every row is an
event: its id is ``{enterprise}-{direction}-{invoice_no}-{k}`` where ``k`` counts the
earlier rows with the same triple in the file's order. The id is stable across
replays, so redelivering a row is recognised, while two identical rows stay two events.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from models.schema import RATINGS
from streams.events import InvoiceEvent, error_detail, reason_of

#: The project's own copy of the data set (a fresh clone runs without ../shared).
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "cumcm2020c"
_CHINA = dt.timezone(dt.timedelta(hours=8))


#: The columns of an invoice file that every reader needs (others are ignored).
INVOICE_COLUMNS = ("enterprise_id", "direction", "invoice_no", "date", "counterparty_id", "amount", "tax", "total",
                   "status")


class InvoiceFileError(ValueError):
    """The invoice file cannot be read as invoices (its header lacks a column): one line saying what to fix."""


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A source row that is not a valid invoice event, and why."""

    line: int
    event_id: str
    error: str


def produced_at_for(issue_date: dt.date) -> dt.datetime:
    """The producer timestamp given to a historical invoice: 18:00 China time on its issue day."""
    return dt.datetime.combine(issue_date, dt.time(18, 0), tzinfo=_CHINA)


def validation_reason(error: ValidationError) -> str:
    """Why a row is not a valid event: the closed-set DLQ reason, then the detail.

    The reason is :func:`streams.events.reason_of`'s, the one the stream's dead letters carry,
    so a row rejected here is rejected with the same reason in the stream.
    """
    return f"{reason_of(error)}: {error_detail(error)}"


def iter_invoice_rows(data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[tuple[int, dict[str, str]]]:
    """Raw rows of ``invoices.csv.gz`` (or ``invoices.csv``) with their 1-based line numbers.

    A UTF-8 byte-order mark is read as such (spreadsheet exports write one). A header without
    one of :data:`INVOICE_COLUMNS` raises :class:`InvoiceFileError` before any row is read.
    """
    path = data_dir / "invoices.csv.gz"
    opener = gzip.open if path.exists() else open
    if not path.exists():
        path = data_dir / "invoices.csv"
    if not path.exists():
        raise FileNotFoundError(f"no invoices.csv.gz or invoices.csv in {data_dir}")
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in INVOICE_COLUMNS if c not in header]
        if missing:
            raise InvoiceFileError(f"{path}: the header has no {', '.join(missing)} column"
                                   f"{'s' if len(missing) > 1 else ''} (it reads: {','.join(header)[:200]})")
        for line, row in enumerate(reader, start=2):
            yield line, row


def row_to_payload(row: dict[str, str], event_id: str, name: str | None = None) -> dict[str, object]:
    """The InvoiceEvent fields of one source row (not yet validated)."""
    issue = dt.date.fromisoformat(row["date"])
    payload: dict[str, object] = {
        "event_id": event_id,
        "enterprise_id": row["enterprise_id"],
        "direction": row["direction"],
        "invoice_no": row["invoice_no"],
        "issue_date": issue,
        "counterparty_id": row["counterparty_id"],
        "amount": row["amount"],
        "tax": row["tax"],
        "total": row["total"],
        "status": row["status"],
        "produced_at": produced_at_for(issue),
    }
    if name:
        payload["enterprise_name"] = name
    return payload


def validate_row(line: int, row: dict[str, str], event_id: str) -> InvoiceEvent | RejectedRow:
    """One source row as a validated event, or a RejectedRow saying why not (the one row rule)."""
    try:
        return InvoiceEvent.model_validate(row_to_payload(row, event_id))
    except (ValidationError, ValueError) as exc:
        reason = validation_reason(exc) if isinstance(exc, ValidationError) else str(exc)
        return RejectedRow(line, event_id, reason)
    except TypeError as exc:  # a short row: csv gives None for its missing cells
        return RejectedRow(line, event_id, f"missing_field: {exc}")


def iter_events(data_dir: Path = DEFAULT_DATA_DIR) -> Iterator[InvoiceEvent | RejectedRow]:
    """Every row as a validated event (file order), or a RejectedRow saying why not."""
    occurrences: dict[tuple[str, str, str], int] = {}
    for line, row in iter_invoice_rows(data_dir):
        triple = (row["enterprise_id"], row["direction"], row["invoice_no"])
        k = occurrences.get(triple, 0)
        occurrences[triple] = k + 1
        yield validate_row(line, row, f"{triple[0]}-{triple[1]}-{triple[2]}-{k}")


def load_events(data_dir: Path = DEFAULT_DATA_DIR) -> tuple[list[InvoiceEvent], list[RejectedRow]]:
    """All valid events sorted by event time (issue date, then file order), and the rejected rows."""
    events: list[InvoiceEvent] = []
    rejected: list[RejectedRow] = []
    for item in iter_events(data_dir):
        (rejected if isinstance(item, RejectedRow) else events).append(item)  # type: ignore[arg-type]
    events.sort(key=lambda e: e.issue_date)  # stable: same-day events keep file order
    return events, rejected


def parse_rating(value: object) -> str | None:
    """A rating cell of ``enterprises.csv``: ``"A".."D"``, else None (empty, NA or anything else); the one rule.

    Examples
    --------
    >>> [parse_rating(v) for v in ("A", "D", "", None, float("nan"), "E", " B")]
    ['A', 'D', None, None, None, None, 'B']
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text if text in RATINGS else None


def load_enterprises(data_dir: Path = DEFAULT_DATA_DIR) -> pd.DataFrame:
    """``enterprises.csv``: id, name, rating (A-D or empty), defaulted (0/1 or empty), labeled."""
    frame = pd.read_csv(data_dir / "enterprises.csv", dtype={"rating": "string"})
    frame["name"] = frame["name"].str.strip()
    return frame.set_index("enterprise_id", drop=False)


def load_churn(data_dir: Path = DEFAULT_DATA_DIR) -> pd.DataFrame:
    """``churn.csv``: rate and the churn rate of ratings A, B and C at that rate."""
    return pd.read_csv(data_dir / "churn.csv")
