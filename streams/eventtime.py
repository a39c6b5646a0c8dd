"""Event time you can trust: bounds on a message's timestamps, and a watermark no single producer can push.

Two rules (docs/faults.md):

1. **Bounds.** ``produced_at`` may not be later than the Kafka record timestamp, nor than the
   worker's clock, by more than the configured skew; the record timestamp itself may not be in
   the future of the worker's clock. Earlier is fine: a replay of history is produced long after
   its invoices were issued. ``issue_date`` may not be later than ``produced_at`` (plus one day,
   the schema's rule), so an invoice dated in the future of the clock is rejected too.
2. **Watermark by quorum.** The portfolio's event-time watermark (the as-of date of every score
   and every allocation) is the k-th most recent *latest issue date* among registered clients,
   with ``k = min(quorum, clients seen)``. A non-client never moves it, and fewer than ``k``
   clients cannot either. A quantile (e.g. the median) would resist more but lags whenever many
   clients go quiet (in the real data many enterprises stop invoicing long before 2020-02); the
   k-th most recent equals the newest date as soon as k clients are current. An operator sees and
   corrects it with ``riskmon watermark show|set``.

Examples
--------
>>> import datetime as dt
>>> quorum_watermark([dt.date(2030, 1, 1), dt.date(2020, 2, 1), dt.date(2020, 1, 31), dt.date(2019, 5, 1)], 3)
datetime.date(2020, 1, 31)
>>> quorum_watermark([dt.date(2019, 5, 1)], 3)  # one client so far: its date
datetime.date(2019, 5, 1)
>>> quorum_watermark([], 3) is None
True
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.events import DlqReason, InvoiceEvent
    from streams.ports import EnterpriseRegistry


def check_event_time(produced_at: dt.datetime, record_ms: int | None, now: dt.datetime,
                     max_skew: dt.timedelta) -> tuple[DlqReason, str] | None:
    """None when the timestamps are within bounds, else the DLQ reason and why.

    ``record_ms`` is the Kafka record timestamp (milliseconds since the epoch; None, 0 or negative
    when unknown: a message not read from Kafka, or a record without a timestamp). A producer that
    leaves it out is still bounded by the worker's clock.

    Examples
    --------
    >>> import datetime as dt
    >>> now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> skew = dt.timedelta(minutes=5)
    >>> check_event_time(dt.datetime(2019, 5, 1, tzinfo=dt.UTC), 1_767_225_600_000, now, skew) is None
    True
    >>> check_event_time(dt.datetime(2030, 1, 1, tzinfo=dt.UTC), None, now, skew)[0]
    'event_time_future'
    """
    if produced_at > now + max_skew:
        return "event_time_future", (f"produced_at {produced_at.isoformat()} is later than the worker's clock "
                                     f"{now.isoformat()} by more than {max_skew.total_seconds():g} s")
    if record_ms is not None and record_ms > 0:
        record = dt.datetime.fromtimestamp(record_ms / 1000, dt.UTC)
        if record > now + max_skew:
            return "event_time_future", (f"the Kafka record timestamp {record.isoformat()} is later than the "
                                         f"worker's clock {now.isoformat()} by more than {max_skew.total_seconds():g} s")
        if produced_at > record + max_skew:
            return "event_time_future", (f"produced_at {produced_at.isoformat()} is later than its Kafka record "
                                         f"timestamp {record.isoformat()} by more than {max_skew.total_seconds():g} s")
    return None


def quorum_watermark(latest_dates: Iterable[dt.date], quorum: int) -> dt.date | None:
    """The k-th most recent of the clients' latest dates, ``k = min(quorum, len(dates))`` (None if empty)."""
    dates = list(latest_dates)
    if not dates:
        return None
    top = heapq.nlargest(min(quorum, len(dates)), dates)
    return top[-1]


def latest_client_dates(events: Sequence[InvoiceEvent], registry: EnterpriseRegistry | None) -> dict[str, dt.date]:
    """Each enterprise's latest issue date in ``events``, registered clients only (all when no registry).

    Examples
    --------
    >>> import datetime as dt
    >>> class E:
    ...     def __init__(self, e, d): self.enterprise_id, self.issue_date = e, d
    >>> class R:
    ...     def get(self, e): return e if e != "X9" else None
    >>> latest_client_dates([E("E1", dt.date(2019, 1, 2)), E("E1", dt.date(2019, 1, 5)),
    ...                      E("X9", dt.date(2030, 1, 1))], R())  # type: ignore[arg-type]
    {'E1': datetime.date(2019, 1, 5)}
    """
    out: dict[str, dt.date] = {}
    for e in events:
        if registry is not None and registry.get(e.enterprise_id) is None:
            continue
        if e.enterprise_id not in out or e.issue_date > out[e.enterprise_id]:
            out[e.enterprise_id] = e.issue_date
    return out


def merge_latest(current: Mapping[str, dt.date], new: Mapping[str, dt.date]) -> dict[str, dt.date]:
    """``current`` with each of ``new``'s dates where later (the max per enterprise)."""
    out = dict(current)
    for eid, day in new.items():
        if eid not in out or day > out[eid]:
            out[eid] = day
    return out
