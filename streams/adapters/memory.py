"""In-memory adapters of every port: the backtest and the unit tests run on these.

Examples
--------
>>> store = InMemoryFeatureStore()
>>> store.apply("E1", "ev-1", {"m:201901:n_out": 1})
True
>>> store.apply("E1", "ev-1", {"m:201901:n_out": 1})
False
>>> store.load("E1").counters
{'m:201901:n_out': 1}
>>> store.apply_many([DeltaItem("E1", "ev-1", {"m:201901:n_out": 5})]).verdicts
[<Verdict.CONFLICT: 'conflicting_redelivery'>]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from streams.alerts import WatchState
from streams.events import CreditLine, EnterpriseScore
from streams.adapters.dedup import DedupState, commit, judge
from streams.eventtime import merge_latest, quorum_watermark
from streams.features.fold import EnterpriseState, check_delta, counter_fields, fold_delta
from streams.columns import InvoiceColumns, apply_rows
from streams.ports import DEFAULT_DEDUP_WINDOW_MONTHS, ColumnsWrite, DeltaItem, EnterpriseInfo, StoreWrite, Verdict

T = TypeVar("T")


def _copy(state: EnterpriseState, *, with_counterparties: bool = True) -> EnterpriseState:
    return EnterpriseState(state.enterprise_id, dict(state.counters), set(), state.name,
                           dict(state.counterparties) if with_counterparties else {})


class InMemoryFeatureStore:
    """Feature state in dicts, with the Redis store's exactly-once rule (:mod:`streams.adapters.dedup`).

    ``load`` returns a copy, so callers can never change the store behind its back.
    """

    def __init__(self, dedup_window_months: int = DEFAULT_DEDUP_WINDOW_MONTHS) -> None:
        self._states: dict[str, EnterpriseState] = {}
        self._dedup: dict[str, DedupState] = {}
        self._window = dedup_window_months
        self._watermark: dt.date | None = None
        self._latest: dict[str, dt.date] = {}

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        return self.apply_many([DeltaItem(enterprise_id, event_id, delta, name)]).applied[0]

    def apply_many(self, items: Sequence[DeltaItem]) -> StoreWrite:
        for item in items:
            check_delta(item.delta)
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.enterprise_id, []).append(index)
        verdicts: list[Verdict] = [Verdict.APPLIED] * len(items)
        counters: dict[str, dict[str, int]] = {}
        for eid, indices in groups.items():
            group = [items[i] for i in indices]
            dedup = self._dedup.setdefault(eid, DedupState())
            judgement = judge(dedup, group, self._window)
            state = self._states.get(eid)
            if state is None and Verdict.APPLIED in judgement.verdicts:
                state = self._states[eid] = EnterpriseState(eid)
            if state is not None:
                for item, verdict in zip(group, judgement.verdicts, strict=True):
                    if verdict is Verdict.APPLIED:
                        fold_delta(state.counters, state.counterparties, item.delta)
                        if item.name and state.name is None:
                            state.name = item.name
            commit(dedup, judgement, self._window)
            for i, verdict in zip(indices, judgement.verdicts, strict=True):
                verdicts[i] = verdict
            fields = counter_fields(key for item in group for key in item.delta)
            now = state.counters if state is not None else {}
            counters[eid] = {f: now.get(f, 0) for f in fields}
        return StoreWrite(verdicts, counters)

    def apply_columns(self, cols: InvoiceColumns, prepared: object | None = None) -> ColumnsWrite:
        return apply_rows(self, cols)

    def column_preparer(self) -> Callable[[InvoiceColumns], object] | None:
        return None

    def load(self, enterprise_id: str) -> EnterpriseState:
        return self.load_many([enterprise_id], with_counterparties=True)[0]

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = False,
                  with_counterparties: bool = False) -> list[EnterpriseState]:
        out = []
        for eid in enterprise_ids:
            state = self._states.get(eid)
            out.append(_copy(state, with_counterparties=with_counterparties) if state else EnterpriseState(eid))
        return out

    def enterprise_ids(self) -> set[str]:
        return set(self._states)

    def watermark(self) -> dt.date | None:
        return self._watermark

    def invalidate(self, enterprise_ids: Iterable[str] | None = None) -> None:
        """Nothing is cached: the dicts are the store of record."""

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int] | None:
        """Nothing acknowledged is ever lost in process: the consumer's positions stand."""
        return None

    def handled(self, topic: str, next_offsets: Mapping[int, int]) -> None:
        """Nothing to record: see :meth:`resume_offsets`."""

    def sync(self) -> None:
        """Nothing to record: see :meth:`resume_offsets`."""

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        if self._watermark is None or issue_date > self._watermark:
            self._watermark = issue_date
        return self._watermark

    def advance_watermark_quorum(self, latest: Mapping[str, dt.date], quorum: int) -> dt.date | None:
        self._latest = merge_latest(self._latest, latest)
        day = quorum_watermark(self._latest.values(), quorum)
        if day is not None and (self._watermark is None or day > self._watermark):
            self._watermark = day
        return self._watermark

    def set_watermark(self, day: dt.date) -> int:
        above = [eid for eid, d in self._latest.items() if d > day]
        for eid in above:
            self._latest[eid] = day
        self._watermark = day
        return len(above)

    def latest_dates(self, n: int) -> list[tuple[str, dt.date]]:
        return sorted(self._latest.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]


class InMemoryScoreStore:
    """Current scores in a dict."""

    def __init__(self) -> None:
        self._scores: dict[str, EnterpriseScore] = {}

    def put_many(self, scores: Sequence[EnterpriseScore]) -> None:
        for score in scores:
            self._scores[score.enterprise_id] = score

    def get(self, enterprise_id: str) -> EnterpriseScore | None:
        return self._scores.get(enterprise_id)

    def all(self) -> dict[str, EnterpriseScore]:
        return dict(self._scores)


class InMemoryCreditLineStore:
    """Last published credit lines in a dict."""

    def __init__(self) -> None:
        self._lines: dict[str, CreditLine] = {}

    def put_many(self, lines: Sequence[CreditLine]) -> None:
        for line in lines:
            self._lines[line.enterprise_id] = line

    def all(self) -> dict[str, CreditLine]:
        return dict(self._lines)


class InMemoryAlertStateStore:
    """Alert rule states in a dict (the backtest keeps its alert state here)."""

    def __init__(self) -> None:
        self._states: dict[str, WatchState] = {}

    def load_many(self, keys: Sequence[str]) -> dict[str, WatchState | None]:
        return {k: self._states.get(k) for k in keys}

    def put_many(self, states: Mapping[str, WatchState]) -> None:
        self._states.update(states)


class InMemoryRegistry:
    """A registry over a fixed set of enterprises."""

    def __init__(self, enterprises: Iterable[EnterpriseInfo] = ()) -> None:
        self._by_id = {e.enterprise_id: e for e in enterprises}

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> InMemoryRegistry:
        """The enterprises of a data set folder (``enterprises.csv``)."""
        from streams.dataset import load_enterprises, parse_rating

        frame = load_enterprises(data_dir)
        infos = []
        for row in frame.itertuples(index=False):
            rating = parse_rating(row.rating)
            infos.append(EnterpriseInfo(str(row.enterprise_id), str(row.name), rating))
        return cls(infos)

    def get(self, enterprise_id: str) -> EnterpriseInfo | None:
        return self._by_id.get(enterprise_id)

    def enterprise_ids(self) -> set[str]:
        return set(self._by_id)


@dataclass
class ListPublisher(Generic[T]):
    """Collects what is published, in order (the in-process stand-in for a Kafka topic).

    Examples
    --------
    >>> pub = ListPublisher[int]()
    >>> pub.publish("k", 1); pub.publish("k", 2)
    >>> pub.items, pub.latest()
    ([('k', 1), ('k', 2)], {'k': 2})
    """

    items: list[tuple[str, T]] = field(default_factory=list)

    def publish(self, key: str, value: T) -> None:
        self.items.append((key, value))

    async def publish_many(self, items: Sequence[tuple[str, T]]) -> None:
        """:class:`streams.ports.BatchPublisher`: append them all."""
        self.items.extend(items)

    def values(self) -> list[T]:
        return [v for _, v in self.items]

    def latest(self) -> dict[str, T]:
        """The last value per key (what a compacted topic keeps)."""
        return dict(self.items)
