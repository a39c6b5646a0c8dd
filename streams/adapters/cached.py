"""A read-through cache in front of a FeatureStore, for the worker that owns an enterprise's partition.

Kafka partitions are keyed by enterprise, so between two rebalances one worker is the only
writer of an enterprise's features. The cache keeps the counters it has loaded and, after
each write, sets the values the inner store returns for every counter the batch named
(:class:`~streams.ports.StoreWrite`: read in the same atomic step as the write), so a score
is computed from exactly what the store holds, even when an earlier attempt of the batch
was applied before a failure. A write that fails drops the whole cache (the store may have
restarted with less), and the worker calls :meth:`invalidate` on every partition
assignment or revocation. Rescoring then reads no Redis at all in the steady state.

Examples
--------
>>> from streams.adapters.memory import InMemoryFeatureStore
>>> inner = InMemoryFeatureStore()
>>> store = CachedFeatureStore(inner)
>>> store.apply("E1", "a", {"n": 1}); store.load_many(["E1"], with_seen=False)[0].counters
True
{'n': 1}
>>> store.apply("E1", "a", {"n": 1}), store.apply("E1", "b", {"n": 2}), store.load_many(["E1"])[0].counters
(False, True, {'n': 3})
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from streams.columns import InvoiceColumns
from streams.features.fold import EnterpriseState
from streams.ports import ColumnsWrite, DeltaItem, FeatureStore, StoreWrite


class CachedFeatureStore:
    """:class:`streams.ports.FeatureStore` that caches counters (LRU, ``max_entries`` enterprises)."""

    def __init__(self, inner: FeatureStore, max_entries: int = 100_000) -> None:
        self.inner = inner
        self._max = max_entries
        self._cache: OrderedDict[str, EnterpriseState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def invalidate(self, enterprise_ids: Iterable[str] | None = None) -> None:
        """Forget these enterprises (all when None): another worker, or a failed write, may have changed them."""
        if enterprise_ids is None:
            self._cache = OrderedDict()  # a batch in flight keeps the old dict; nothing is cleared under it
            return
        for eid in enterprise_ids:
            self._cache.pop(eid, None)

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        return self.apply_many([DeltaItem(enterprise_id, event_id, delta, name)]).applied[0]

    def apply_many(self, items: Sequence[DeltaItem]) -> StoreWrite:
        try:
            write = self.inner.apply_many(items)
        except Exception:
            self.invalidate()  # part of the batch may be in the store, or the store lost recent writes
            raise
        self._update([(item.enterprise_id, item.name) for item in items if item.name], write.counters)
        return write

    def apply_columns(self, cols: InvoiceColumns, prepared: object | None = None) -> ColumnsWrite:
        try:
            write = self.inner.apply_columns(cols, prepared)
        except Exception:
            self.invalidate()  # as apply_many
            raise
        named = np.flatnonzero(cols.name != None)  # noqa: E711 - elementwise
        self._update([(str(cols.enterprise_id[i]), str(cols.name[i])) for i in named.tolist()], write.counters)
        return write

    def column_preparer(self) -> Callable[[InvoiceColumns], object] | None:
        return self.inner.column_preparer()

    def _update(self, names: Sequence[tuple[str, str]], counters: Mapping[str, Mapping[str, int]]) -> None:
        """Set what the store answered after a write: the counters, and a name where the cache has none."""
        cache = self._cache
        for eid, name in names:
            state = cache.get(eid)
            if state is not None and state.name is None:
                state.name = name
        for eid, values in counters.items():
            state = cache.get(eid)
            if state is not None:
                state.counters.update(values)

    def load(self, enterprise_id: str) -> EnterpriseState:
        return self.inner.load(enterprise_id)

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = False,
                  with_counterparties: bool = False) -> list[EnterpriseState]:
        if with_counterparties:  # not cached: ask the inner store
            return self.inner.load_many(enterprise_ids, with_counterparties=True)
        cache = self._cache
        missing = [e for e in dict.fromkeys(enterprise_ids) if e not in cache]
        self.misses += len(missing)
        self.hits += len(enterprise_ids) - len(missing)
        for state in self.inner.load_many(missing) if missing else ():
            cache[state.enterprise_id] = state
        out = []
        for eid in enterprise_ids:
            state = cache[eid]
            cache.move_to_end(eid)
            out.append(EnterpriseState(eid, dict(state.counters), set(), state.name))
        while len(cache) > self._max:
            cache.popitem(last=False)
        return out

    def enterprise_ids(self) -> set[str]:
        return self.inner.enterprise_ids()

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int] | None:
        self.invalidate()  # the store restarted: what it holds now is what it kept
        return self.inner.resume_offsets(topic, partitions)

    def handled(self, topic: str, next_offsets: Mapping[int, int]) -> None:
        self.inner.handled(topic, next_offsets)

    def sync(self) -> None:
        self.inner.sync()

    def watermark(self) -> dt.date | None:
        return self.inner.watermark()

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        return self.inner.advance_watermark(issue_date)

    def advance_watermark_quorum(self, latest: Mapping[str, dt.date], quorum: int) -> dt.date | None:
        return self.inner.advance_watermark_quorum(latest, quorum)

    def set_watermark(self, day: dt.date) -> int:
        return self.inner.set_watermark(day)

    def latest_dates(self, n: int) -> list[tuple[str, dt.date]]:
        return self.inner.latest_dates(n)
