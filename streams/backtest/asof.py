"""As-of dates: the dates a backtest takes its snapshots at.

A spec is a comma-separated list of ISO dates (``2019-06-30,2019-12-31``), or
``quarterly`` / ``monthly``: every quarter or month end between the first and the last
invoice date, plus the last invoice date itself (the live stream's final state).

Examples
--------
>>> import datetime as dt
>>> parse_as_of("2019-06-30, 2019-12-31", dt.date(2017, 1, 1), dt.date(2020, 2, 21))
(datetime.date(2019, 6, 30), datetime.date(2019, 12, 31))
>>> [d.isoformat() for d in parse_as_of("quarterly", dt.date(2019, 5, 3), dt.date(2020, 2, 21))]
['2019-06-30', '2019-09-30', '2019-12-31', '2020-02-21']
"""

from __future__ import annotations

import datetime as dt
from typing import Final

SPECS: Final = ("quarterly", "monthly")


def month_end(year: int, month: int) -> dt.date:
    """The last day of a month.

    Examples
    --------
    >>> month_end(2020, 2), month_end(2019, 12)
    (datetime.date(2020, 2, 29), datetime.date(2019, 12, 31))
    """
    first_next = dt.date(year + month // 12, month % 12 + 1, 1)
    return first_next - dt.timedelta(days=1)


def period_ends(first: dt.date, last: dt.date, months: int) -> list[dt.date]:
    """Month ends (``months=1``) or quarter ends (``months=3``) in ``[first, last]``, then ``last``.

    Examples
    --------
    >>> period_ends(dt.date(2019, 11, 15), dt.date(2020, 1, 31), 1)
    [datetime.date(2019, 11, 30), datetime.date(2019, 12, 31), datetime.date(2020, 1, 31)]
    """
    if first > last:
        raise ValueError(f"first date {first} is after last date {last}")
    out: list[dt.date] = []
    year, month = first.year, first.month
    while True:
        end = month_end(year, month)
        if end > last:
            break
        if month % months == 0 and end >= first:
            out.append(end)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    if not out or out[-1] != last:
        out.append(last)
    return out


def parse_as_of(spec: str, first: dt.date, last: dt.date) -> tuple[dt.date, ...]:
    """The sorted, distinct as-of dates of ``spec`` (see the module docstring).

    Raises
    ------
    ValueError
        On a malformed date or an empty list. Explicit dates outside ``[first, last]``
        are allowed (before ``first`` nothing is known yet).

    Examples
    --------
    >>> parse_as_of("monthly", dt.date(2020, 1, 5), dt.date(2020, 2, 21))
    (datetime.date(2020, 1, 31), datetime.date(2020, 2, 21))
    >>> parse_as_of("2019-13-01", dt.date(2017, 1, 1), dt.date(2020, 1, 1))
    Traceback (most recent call last):
    ...
    ValueError: bad as-of date '2019-13-01': use YYYY-MM-DD, 'quarterly' or 'monthly'
    """
    text = spec.strip().lower()
    if text == "quarterly":
        return tuple(period_ends(first, last, 3))
    if text == "monthly":
        return tuple(period_ends(first, last, 1))
    dates: set[dt.date] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            dates.add(dt.date.fromisoformat(part))
        except ValueError:
            raise ValueError(f"bad as-of date {part!r}: use YYYY-MM-DD, 'quarterly' or 'monthly'") from None
    if not dates:
        raise ValueError("no as-of date given: use YYYY-MM-DD[,YYYY-MM-DD...], 'quarterly' or 'monthly'")
    return tuple(sorted(dates))
