"""The exactly-once rule of the feature stores, in Python (the Redis store runs the same rule in Lua).

Per enterprise a store keeps its last applied offset per topic partition (the fence) and a
dedup window: per issue month, ``event_id`` hash -> content hash, for the months within
``window_months`` of the enterprise's newest applied month. :func:`judge` gives each event
of one enterprise's batch its :class:`~streams.ports.Verdict`, in order, exactly as the Lua
script in :mod:`streams.adapters.redis_store` does; the port's contract tests hold the two
equal.

Examples
--------
>>> state = DedupState()
>>> items = [DeltaItem("E1", "a", {"n": 1}, month=24230, topic="t", partition=0, offset=5),
...          DeltaItem("E1", "a", {"n": 1}, month=24230, topic="t", partition=0, offset=6),
...          DeltaItem("E1", "a", {"n": 2}, month=24230, topic="t", partition=0, offset=7)]
>>> [v.value for v in judge(state, items, 12).verdicts]
['applied', 'duplicate', 'conflicting_redelivery']
>>> j = judge(state, items[:1], 12); commit(state, j, 12); state.fences
{'t/0': 5}
>>> [v.value for v in judge(state, items, 12).verdicts]
['redelivered', 'duplicate', 'conflicting_redelivery']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from streams.hashing import HASH_BYTES, content_key, id_key
from streams.ports import DEAD_LETTER_VERDICTS, DeltaItem, Verdict

def id_hash(item: DeltaItem) -> bytes:
    """The dedup window's key of an item's event id (8 bytes, :func:`streams.hashing.id_key`)."""
    return item.id_key or id_key(item.event_id)


def delta_hash(delta: Mapping[str, int]) -> bytes:
    """A content key of a delta, for items that carry no content hash."""
    return content_key("\n".join(f"{k} {v}" for k, v in sorted(delta.items())))


def content_hash(item: DeltaItem) -> bytes:
    """What the window stores for an item's content: 8 bytes (:func:`streams.hashing.content_key`)."""
    text = item.content_hash
    if not text:
        return delta_hash(item.delta)
    if len(text) == 2 * HASH_BYTES:  # InvoiceEvent.content_hash(): the key itself, in hex
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    return content_key(text)


def fence_field(item: DeltaItem) -> str | None:
    """The fence an item's offset is checked against, or None without Kafka coordinates."""
    return f"{item.topic}/{item.partition}" if item.offset >= 0 else None


@dataclass(slots=True)
class DedupState:
    """One enterprise's fence and dedup window."""

    fences: dict[str, int] = field(default_factory=dict)
    newest_month: int = 0
    window: dict[int, dict[bytes, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Judgement:
    """Verdicts for one enterprise's items, and what applying them would record."""

    verdicts: list[Verdict]
    recorded: dict[tuple[int, bytes], bytes]
    fences: dict[str, int]
    newest_month: int


def judge(state: DedupState, items: Sequence[DeltaItem], window_months: int) -> Judgement:
    """Each item's verdict, in order, without changing ``state``.

    A fence advances only over a prefix of the batch without dead letters, so a crash
    before the dead letters are published makes Kafka redeliver them, and they are judged again.
    """
    newest = state.newest_month
    pending: dict[tuple[int, bytes], bytes] = {}
    fences: dict[str, int] = {}
    blocked: set[str] = set()
    verdicts: list[Verdict] = []
    for item in items:
        fence = fence_field(item)
        if fence is not None and item.offset <= state.fences.get(fence, -1):
            verdict = Verdict.REDELIVERED
        elif item.month <= newest - window_months:
            verdict = Verdict.LATE
        else:
            key = (item.month, id_hash(item))
            content = content_hash(item)
            previous = pending.get(key)
            if previous is None:
                previous = state.window.get(item.month, {}).get(key[1])
            if previous is None:
                verdict = Verdict.APPLIED
                pending[key] = content
                newest = max(newest, item.month)
            else:
                verdict = Verdict.DUPLICATE if previous == content else Verdict.CONFLICT
        verdicts.append(verdict)
        if fence is not None:
            if verdict in DEAD_LETTER_VERDICTS:
                blocked.add(fence)
            elif fence not in blocked and item.offset > fences.get(fence, -1):
                fences[fence] = item.offset
    return Judgement(verdicts, pending, fences, newest)


def commit(state: DedupState, judgement: Judgement, window_months: int) -> None:
    """Record a judgement's applied items, advance the fences, and drop months that left the window."""
    for fence, offset in judgement.fences.items():
        if offset > state.fences.get(fence, -1):
            state.fences[fence] = offset
    old, new = state.newest_month, judgement.newest_month
    if new > old:
        for month in range(max(old - window_months + 1, 0), min(new - window_months, old) + 1):
            state.window.pop(month, None)
        state.newest_month = new
    for (month, key), content in judgement.recorded.items():
        if month > new - window_months:  # an earlier item of the batch may have left the window already
            state.window.setdefault(month, {})[key] = content
