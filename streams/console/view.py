"""The console's read model, pure: a fold of the wire events into what the pages show, and the queries.

:class:`ConsoleView` is fed the events the console reads from Kafka (credit lines, scores,
allocation summaries, alerts, dead letters) with :meth:`ConsoleView.apply`; applying the
same event twice changes nothing except the dead-letter counts (the console rebuilds the
view from the start of the topics whenever it reconnects). Queries validate their
parameters and raise :class:`BadQuery` (a 400 page) with a one-line message.

Examples
--------
>>> import datetime as dt
>>> from streams.events import CreditLine
>>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
>>> v = ConsoleView()
>>> v.apply_line(CreditLine(enterprise_id="E1", allocation_id="a", as_of=dt.date(2019, 12, 31), amount_yuan=2e5,
...     rate=0.05, expected_profit_yuan=900.0, default_probability=0.1, rating="B", segment="s", reasons=["optimal"],
...     bundle_version="v", solver="exact", decided_at=now))
>>> page = v.lines_page(parse_lines_query({"sort": "amount", "order": "desc"}))
>>> page.total, page.rows[0].enterprise_id
(1, 'E1')
>>> parse_lines_query({"sort": "nope"})
Traceback (most recent call last):
...
streams.console.view.BadQuery: sort must be one of amount, enterprise, expected_profit, pd, rate, rating, segment (got 'nope')
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore, RiskAlert

RATINGS: Final = ("A", "B", "C", "D")
#: What an enterprise id in a URL may look like (the wire's Identifier, without hash-tag braces).
ENTERPRISE_ID: Final = re.compile(r"^[^{}\s/]{1,64}$")
MAX_PAGE_SIZE: Final = 500
HISTORY_POINTS: Final = 240  # per enterprise: score points kept (one per as-of date)
ALERTS_KEPT: Final = 20_000
ALLOCATIONS_KEPT: Final = 500


class BadQuery(ValueError):
    """A query parameter the console cannot use (rendered as a 400 page)."""


@dataclass(frozen=True, slots=True)
class LinesQuery:
    """A validated credit-lines table query."""

    q: str = ""
    rating: str = ""
    segment: str = ""
    status: str = "all"  # all | lent | declined
    sort: str = "amount"
    order: str = "desc"
    page: int = 1
    size: int = 50

    def params(self, **change: Any) -> dict[str, str]:
        """The query string parameters of this query with ``change`` applied (for links)."""
        values = {"q": self.q, "rating": self.rating, "segment": self.segment, "status": self.status,
                  "sort": self.sort, "order": self.order, "page": str(self.page), "size": str(self.size)}
        values.update({k: str(v) for k, v in change.items()})
        return {k: v for k, v in values.items() if v not in ("", None)}




def _natural(eid: str) -> tuple[str, int, str]:
    """E2 before E10."""
    m = re.match(r"^(\D*)(\d+)(.*)$", eid)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (eid, -1, "")


def _one(params: Mapping[str, str], name: str, default: str) -> str:
    value = params.get(name, default)
    if len(value) > 100:
        raise BadQuery(f"{name} is too long ({len(value)} characters, at most 100)")
    return value.strip()


def _int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _one(params, name, str(default)) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number (got {raw!r})") from None
    if not lo <= value <= hi:
        raise BadQuery(f"{name} must be between {lo} and {hi} (got {value})")
    return value


def parse_lines_query(params: Mapping[str, str], default_size: int = 50) -> LinesQuery:
    """Validate the credit-lines table's query string; unknown parameters are refused too."""
    allowed = {"q", "rating", "segment", "status", "sort", "order", "page", "size"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadQuery(f"unknown query parameter {unknown[0]!r}; use {', '.join(sorted(allowed))}")
    rating = _one(params, "rating", "").upper()
    if rating and rating not in RATINGS:
        raise BadQuery(f"rating must be one of A, B, C, D (got {rating!r})")
    status = _one(params, "status", "all") or "all"
    if status not in ("all", "lent", "declined"):
        raise BadQuery(f"status must be all, lent or declined (got {status!r})")
    sort = _one(params, "sort", "amount") or "amount"
    if sort not in _SORT_COLUMNS:
        raise BadQuery(f"sort must be one of {', '.join(sorted(_SORT_COLUMNS))} (got {sort!r})")
    order = _one(params, "order", "desc") or "desc"
    if order not in ("asc", "desc"):
        raise BadQuery(f"order must be asc or desc (got {order!r})")
    return LinesQuery(q=_one(params, "q", ""), rating=rating, segment=_one(params, "segment", ""), status=status,
                      sort=sort, order=order, page=_int(params, "page", 1, 1, 10_000_000),
                      size=_int(params, "size", default_size, 1, MAX_PAGE_SIZE))


def parse_enterprise_id(raw: str) -> str:
    """An enterprise id from a URL, or :class:`BadQuery`.

    Examples
    --------
    >>> parse_enterprise_id("E12")
    'E12'
    >>> parse_enterprise_id("E{1}")
    Traceback (most recent call last):
    ...
    streams.console.view.BadQuery: not an enterprise id: 'E{1}' (1-64 characters, no spaces, braces or slashes)
    """
    if not ENTERPRISE_ID.match(raw):
        raise BadQuery(f"not an enterprise id: {raw[:80]!r} (1-64 characters, no spaces, braces or slashes)")
    return raw


@dataclass(frozen=True, slots=True)
class LinesPage:
    rows: list[CreditLine]
    total: int  # rows matching the filters
    query: LinesQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.size))


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Lines of one group (rating or segment): how many enterprises, how many lent to, how much."""

    key: str
    n: int
    n_lent: int
    amount_yuan: float
    expected_profit_yuan: float


@dataclass(frozen=True, slots=True)
class Portfolio:
    """The portfolio page's figures, all computed from the current credit lines."""

    n_enterprises: int
    n_lines: int
    total_lent_yuan: float
    expected_profit_yuan: float
    budget_yuan: float | None
    by_rating: list[Breakdown]
    by_segment: list[Breakdown]
    last_allocation: AllocationSummary | None
    allocations: list[AllocationSummary]
    dlq_by_reason: dict[str, int]
    alerts_by_rule: dict[str, int]
    drift_alerts: int


_SORT_COLUMNS: Final = {"amount": "amount", "expected_profit": "profit", "pd": "pd", "rate": "rate",
                        "rating": "rating", "segment": "segment", "enterprise": None}


@dataclass(slots=True)
class Columns:
    """The credit lines as columns (one row per enterprise), and their sort orders, cached per version."""

    version: int
    lines: list[CreditLine]
    ids: list[str]
    amount: np.ndarray
    rate: np.ndarray
    pd: np.ndarray
    profit: np.ndarray
    rating: np.ndarray
    segment: np.ndarray
    _orders: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _id_rank: np.ndarray | None = None

    @classmethod
    def of(cls, lines: list[CreditLine], version: int) -> Columns:
        def floats(name: str) -> np.ndarray:
            return np.fromiter((getattr(x, name) for x in lines), dtype=np.float64, count=len(lines))

        return cls(version, lines, [x.enterprise_id for x in lines], floats("amount_yuan"), floats("rate"),
                   floats("default_probability"), floats("expected_profit_yuan"),
                   np.array([x.rating for x in lines], dtype=object), np.array([x.segment for x in lines], dtype=object))

    def id_rank(self) -> np.ndarray:
        """Each row's rank in natural id order (E2 before E10): the tie-breaker of every sort."""
        if self._id_rank is None:
            rank = np.empty(len(self.ids), dtype=np.int64)
            rank[np.array(sorted(range(len(self.ids)), key=lambda i: _natural(self.ids[i])), dtype=np.int64)] = \
                np.arange(len(self.ids))
            self._id_rank = rank
        return self._id_rank

    def order(self, sort: str, direction: str) -> np.ndarray:
        """Row indices sorted by ``sort`` (ties by natural id, ascending either way), cached."""
        key = (sort, direction)
        cached = self._orders.get(key)
        if cached is None:
            rank = self.id_rank()
            column = _SORT_COLUMNS[sort]
            if column is None:
                cached = np.argsort(rank if direction == "asc" else -rank, kind="stable")
            else:
                values = getattr(self, column)
                if values.dtype == object:  # ratings, segments: rank the labels first
                    _, values = np.unique(values, return_inverse=True)
                values = values if direction == "asc" else -values
                cached = np.lexsort((rank, values))
            self._orders[key] = cached
        return cached


@dataclass(slots=True)
class ConsoleView:
    """Everything the console shows that comes from Kafka, folded from the events."""

    lines: dict[str, CreditLine] = field(default_factory=dict)
    scores: dict[str, EnterpriseScore] = field(default_factory=dict)
    history: dict[str, dict[dt.date, tuple[str, float]]] = field(default_factory=dict)  # eid -> as_of -> (rating, pd)
    allocations: dict[str, AllocationSummary] = field(default_factory=dict)
    alerts: dict[str, RiskAlert] = field(default_factory=dict)
    alert_order: deque[str] = field(default_factory=deque)
    dlq_by_reason: dict[str, int] = field(default_factory=dict)
    lines_version: int = 0
    _columns: Columns | None = None

    # ----------------------------------------------------------------- folding

    def apply_line(self, line: CreditLine) -> None:
        self.lines[line.enterprise_id] = line
        self.lines_version += 1

    def apply_score(self, score: EnterpriseScore) -> None:
        current = self.scores.get(score.enterprise_id)
        if current is None or (score.as_of, score.scored_at) >= (current.as_of, current.scored_at):
            self.scores[score.enterprise_id] = score
        points = self.history.setdefault(score.enterprise_id, {})
        points[score.as_of] = (score.rating, score.default_probability)
        if len(points) > HISTORY_POINTS:
            del points[min(points)]

    def apply_allocation(self, summary: AllocationSummary) -> None:
        self.allocations[summary.allocation_id] = summary
        if len(self.allocations) > ALLOCATIONS_KEPT:
            oldest = min(self.allocations.values(), key=lambda s: s.decided_at)
            del self.allocations[oldest.allocation_id]

    def apply_alert(self, alert: RiskAlert) -> bool:
        """Keep an alert; False if it was known already (a redelivery)."""
        if alert.alert_id in self.alerts:
            return False
        self.alerts[alert.alert_id] = alert
        self.alert_order.append(alert.alert_id)
        while len(self.alert_order) > ALERTS_KEPT:
            self.alerts.pop(self.alert_order.popleft(), None)
        return True

    def apply_dead_letter(self, dead: DeadLetter) -> None:
        self.dlq_by_reason[dead.reason] = self.dlq_by_reason.get(dead.reason, 0) + 1

    # ----------------------------------------------------------------- queries

    def columns(self) -> Columns:
        """The current lines as numpy columns, rebuilt once per change of the lines (queries read these)."""
        cols = self._columns
        if cols is None or cols.version != self.lines_version:
            cols = self._columns = Columns.of(list(self.lines.values()), self.lines_version)
        return cols

    def portfolio(self) -> Portfolio:
        c = self.columns()
        allocations = sorted(self.allocations.values(), key=lambda s: s.decided_at)
        last = allocations[-1] if allocations else None
        lent = c.amount > 0

        def breakdown(labels: np.ndarray, order: Iterable[str] = ()) -> list[Breakdown]:
            if labels.size == 0:
                return [Breakdown(k, 0, 0, 0.0, 0.0) for k in order]
            keys, inverse = np.unique(labels, return_inverse=True)
            n = np.bincount(inverse, minlength=keys.size)
            n_lent = np.bincount(inverse, weights=lent, minlength=keys.size)
            amount = np.bincount(inverse, weights=c.amount, minlength=keys.size)
            profit = np.bincount(inverse, weights=np.where(lent, c.profit, 0.0), minlength=keys.size)
            found = {str(k): Breakdown(str(k), int(n[i]), int(n_lent[i]), float(amount[i]), float(profit[i]))
                     for i, k in enumerate(keys)}
            rows = [found.pop(k, Breakdown(k, 0, 0, 0.0, 0.0)) for k in order]
            return rows + sorted(found.values(), key=lambda b: -b.amount_yuan)

        alerts_by_rule: dict[str, int] = {}
        for a in self.alerts.values():
            alerts_by_rule[a.rule] = alerts_by_rule.get(a.rule, 0) + 1
        return Portfolio(
            n_enterprises=len(c.lines),
            n_lines=int(lent.sum()),
            total_lent_yuan=float(c.amount.sum()),
            expected_profit_yuan=float(c.profit[lent].sum()),
            budget_yuan=last.budget_yuan if last else None,
            by_rating=breakdown(c.rating, RATINGS),
            by_segment=breakdown(c.segment),
            last_allocation=last,
            allocations=allocations,
            dlq_by_reason=dict(sorted(self.dlq_by_reason.items(), key=lambda kv: -kv[1])),
            alerts_by_rule=dict(sorted(alerts_by_rule.items())),
            drift_alerts=alerts_by_rule.get("drift", 0),
        )

    def lines_page(self, query: LinesQuery, names: Mapping[str, str] | None = None) -> LinesPage:
        """One page of the credit-lines table: filtered, sorted, paginated on the server (numpy over the columns)."""
        c = self.columns()
        order = c.order(query.sort, query.order)
        mask = np.ones(len(c.lines), dtype=bool)
        if query.rating:
            mask &= c.rating == query.rating
        if query.segment:
            mask &= c.segment == query.segment
        if query.status == "lent":
            mask &= c.amount > 0
        elif query.status == "declined":
            mask &= c.amount <= 0
        q = query.q.lower()
        if q:
            lookup = names or {}
            mask &= np.fromiter((q in eid.lower() or q in lookup.get(eid, "").lower() for eid in c.ids),
                                dtype=bool, count=len(c.ids))
        chosen = order[mask[order]] if len(order) else order
        start = (query.page - 1) * query.size
        return LinesPage([c.lines[i] for i in chosen[start : start + query.size]], int(chosen.size), query)

    def segments(self) -> list[str]:
        return sorted(str(x) for x in np.unique(self.columns().segment))

    def recent_alerts(self, n: int = 100, *, enterprise_id: str | None = None, rule: str | None = None) -> list[RiskAlert]:
        out: list[RiskAlert] = []
        for alert_id in reversed(self.alert_order):
            a = self.alerts.get(alert_id)
            if a is None or (enterprise_id and a.enterprise_id != enterprise_id) or (rule and a.rule != rule):
                continue
            out.append(a)
            if len(out) >= n:
                break
        return out

    def knows(self, enterprise_id: str) -> bool:
        return enterprise_id in self.lines or enterprise_id in self.scores
