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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from streams.events import CreditLine, EnterpriseScore
from streams.features.fold import EnterpriseState
from streams.ports import DeltaItem, EnterpriseInfo

T = TypeVar("T")


def _copy(state: EnterpriseState) -> EnterpriseState:
    return EnterpriseState(state.enterprise_id, dict(state.counters), set(state.seen), state.name)


class InMemoryFeatureStore:
    """Feature state in a dict of :class:`EnterpriseState` (same semantics as the Redis store).

    ``load`` returns a copy, so callers can never change the store behind its back.
    """

    def __init__(self, states: dict[str, EnterpriseState] | None = None) -> None:
        self._states: dict[str, EnterpriseState] = {} if states is None else states
        self._watermark: dt.date | None = None

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        state = self._states.get(enterprise_id)
        if state is None:
            state = self._states[enterprise_id] = EnterpriseState(enterprise_id)
        if name and state.name is None:
            state.name = name
        return state.apply_delta(event_id, delta)

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        return [self.apply(i.enterprise_id, i.event_id, i.delta, i.name) for i in items]

    def load(self, enterprise_id: str) -> EnterpriseState:
        state = self._states.get(enterprise_id)
        return _copy(state) if state is not None else EnterpriseState(enterprise_id)

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = True) -> list[EnterpriseState]:
        if with_seen:
            return [self.load(e) for e in enterprise_ids]
        out = []
        for eid in enterprise_ids:
            state = self._states.get(eid)
            out.append(EnterpriseState(eid, dict(state.counters), set(), state.name) if state else EnterpriseState(eid))
        return out

    def enterprise_ids(self) -> set[str]:
        return set(self._states)

    def watermark(self) -> dt.date | None:
        return self._watermark

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        if self._watermark is None or issue_date > self._watermark:
            self._watermark = issue_date
        return self._watermark


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


class InMemoryRegistry:
    """A registry over a fixed set of enterprises."""

    def __init__(self, enterprises: Iterable[EnterpriseInfo] = ()) -> None:
        self._by_id = {e.enterprise_id: e for e in enterprises}

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> InMemoryRegistry:
        """The enterprises of a data set folder (``enterprises.csv``)."""
        from streams.dataset import load_enterprises

        frame = load_enterprises(data_dir)
        infos = []
        for row in frame.itertuples(index=False):
            rating = row.rating if isinstance(row.rating, str) and row.rating in ("A", "B", "C", "D") else None
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

    def values(self) -> list[T]:
        return [v for _, v in self.items]

    def latest(self) -> dict[str, T]:
        """The last value per key (what a compacted topic keeps)."""
        return dict(self.items)
