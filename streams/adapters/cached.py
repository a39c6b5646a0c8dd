"""A read-through cache in front of a FeatureStore, for the worker that owns an enterprise's partition.

Kafka partitions are keyed by enterprise, so between two rebalances one worker is the only
writer of an enterprise's features. The cache keeps the counters it has loaded and adds
the deltas that the inner store reports as *applied* (duplicates are skipped by the inner
store's verdict, so the cache follows it exactly); rescoring then reads no Redis at all.
The worker calls :meth:`invalidate` on every partition assignment or revocation.

Examples
--------
>>> from streams.adapters.memory import InMemoryFeatureStore
>>> inner = InMemoryFeatureStore()
>>> store = CachedFeatureStore(inner)
>>> store.apply("E1", "a", {"n": 1}); store.load_many(["E1"], with_seen=False)[0].counters
True
{'n': 1}
>>> store.apply("E1", "a", {"n": 1}), store.apply("E1", "b", {"n": 2}), store.load_many(["E1"], with_seen=False)[0].counters
(False, True, {'n': 3})
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from streams.features.fold import EnterpriseState
from streams.ports import DeltaItem, FeatureStore


class CachedFeatureStore:
    """:class:`streams.ports.FeatureStore` that caches counters (LRU, ``max_entries`` enterprises)."""

    def __init__(self, inner: FeatureStore, max_entries: int = 100_000) -> None:
        self.inner = inner
        self._max = max_entries
        self._cache: OrderedDict[str, EnterpriseState] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def invalidate(self) -> None:
        """Forget everything (another worker may have written these enterprises)."""
        self._cache = OrderedDict()  # a batch in flight keeps the old dict; nothing is cleared under it

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        return self.apply_many([DeltaItem(enterprise_id, event_id, delta, name)])[0]

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        flags = self.inner.apply_many(items)
        cache = self._cache
        for item, applied in zip(items, flags, strict=True):
            state = cache.get(item.enterprise_id)
            if state is None:
                continue
            if item.name and state.name is None:
                state.name = item.name
            if applied:
                counters = state.counters
                for key, inc in item.delta.items():
                    counters[key] = counters.get(key, 0) + inc
        return flags

    def load(self, enterprise_id: str) -> EnterpriseState:
        return self.inner.load(enterprise_id)

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = True) -> list[EnterpriseState]:
        if with_seen:  # the seen-sets are not cached: ask the inner store
            return self.inner.load_many(enterprise_ids, with_seen=True)
        cache = self._cache
        missing = [e for e in dict.fromkeys(enterprise_ids) if e not in cache]
        self.misses += len(missing)
        self.hits += len(enterprise_ids) - len(missing)
        for state in self.inner.load_many(missing, with_seen=False) if missing else ():
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

    def watermark(self) -> dt.date | None:
        return self.inner.watermark()

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        return self.inner.advance_watermark(issue_date)
