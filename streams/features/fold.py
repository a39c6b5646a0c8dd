"""The feature fold: per-enterprise state as integer counters, updated one invoice at a time.

An invoice becomes a *delta*: a small map of counter names to integer increments
(amounts in fen, so sums are exact whatever the order). The in-memory fold and the
Redis store apply the very same delta (the Redis one in a Lua script, atomically),
and both skip an ``event_id`` they have already applied, so redelivery changes nothing
and the order of events does not matter.

Counter names (``m`` = month ``YYYYMM``, ``d`` = ``in`` | ``out``):

- ``m:{YYYYMM}:n_{d}``: invoices; ``void_{d}``: void ones; ``valid_{d}``: valid ones
- ``m:{YYYYMM}:amt_{d}``: valid amount net of tax (fen, negatives included)
- ``m:{YYYYMM}:tot_{d}``: valid total with tax (fen)
- ``m:{YYYYMM}:gross_{d}``: valid positive amounts (fen)
- ``m:{YYYYMM}:ret_{d}`` / ``retamt_{d}``: valid negative invoices (returns) and their |amount|
- ``cp:{d}:{counterparty}``: invoices with that counterparty; ``cpa:{d}:{counterparty}``: its valid positive fen

The counterparty counters (``cp:``/``cpa:``) grow with the number of counterparties, so they
live apart from the others, in :attr:`EnterpriseState.counterparties`, and the fold keeps
three summaries of them in ``counters`` (what the features read, so scoring never scans
counterparties): ``s:ncp_{d}`` counterparties with a positive count, ``s:cpasum_{d}`` and
``s:cpamax_{d}`` the sum and the largest of their ``cpa`` values. ``cpa`` increments are
never negative (only positive amounts count), which keeps the largest value exact under
increments. :func:`fold_delta` is the rule; the Redis store's Lua script mirrors it and the
port's contract tests hold the two equal.

Examples
--------
>>> import datetime as dt
>>> from streams.events import InvoiceEvent
>>> ev = InvoiceEvent(event_id="x1", enterprise_id="E1", direction="out", invoice_no="7",
...     issue_date=dt.date(2019, 5, 2), counterparty_id="B9", amount="-10.00", tax="-1.30",
...     total="-11.30", status="valid", produced_at=dt.datetime(2019, 5, 2, tzinfo=dt.UTC))
>>> sorted(invoice_delta(ev).items())[:4]
[('cp:out:B9', 1), ('m:201905:amt_out', -1000), ('m:201905:n_out', 1), ('m:201905:ret_out', 1)]
>>> state = apply_invoice(None, ev)
>>> apply_invoice(state, ev) is state and state.counters["m:201905:n_out"] == 1
True
>>> state.counterparties, state.counters["s:ncp_out"]
({'cp:out:B9': 1}, 1)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from streams.events import InvoiceEvent

Delta = dict[str, int]

COUNTERPARTY_PREFIXES: Final = ("cp:", "cpa:")
_WHITESPACE: Final = re.compile(r"\s")


def summary_keys(direction: str) -> tuple[str, str, str]:
    """The counters that summarise one direction's counterparties: ``(count, sum, max)``.

    Examples
    --------
    >>> summary_keys("out")
    ('s:ncp_out', 's:cpasum_out', 's:cpamax_out')
    """
    return f"s:ncp_{direction}", f"s:cpasum_{direction}", f"s:cpamax_{direction}"


def check_delta(delta: Mapping[str, int]) -> None:
    """Raise ValueError for a delta no store may apply (names with whitespace, negative ``cpa``).

    Examples
    --------
    >>> check_delta({"cpa:out:B1": -5})
    Traceback (most recent call last):
    ...
    ValueError: cpa increments must not be negative: cpa:out:B1 -5
    """
    for key, inc in delta.items():
        if _WHITESPACE.search(key):
            raise ValueError(f"counter names must not contain whitespace: {key!r}")
        if key.startswith(COUNTERPARTY_PREFIXES) and key.split(":", 2)[1] not in ("in", "out"):
            raise ValueError(f"counterparty counters are cp:in:, cp:out:, cpa:in: or cpa:out: ...: {key}")
        if key.startswith("cpa:") and inc < 0:
            raise ValueError(f"cpa increments must not be negative: {key} {inc}")


def counter_fields(keys: Iterable[str]) -> set[str]:
    """The ``counters`` fields that deltas with these keys change (counterparty keys: their summaries).

    Examples
    --------
    >>> sorted(counter_fields(["m:201901:n_in", "cp:in:S1"]))
    ['m:201901:n_in', 's:cpamax_in', 's:cpasum_in', 's:ncp_in']
    """
    out: set[str] = set()
    for key in keys:
        if key.startswith(COUNTERPARTY_PREFIXES):
            out.update(summary_keys(key.split(":", 2)[1]))
        else:
            out.add(key)
    return out


def fold_delta(counters: dict[str, int], counterparties: dict[str, int], delta: Mapping[str, int]) -> None:
    """Add ``delta`` in place: counterparty keys into ``counterparties``, the rest and the summaries into ``counters``.

    Examples
    --------
    >>> counters, cps = {}, {}
    >>> fold_delta(counters, cps, {"m:201901:n_out": 1, "cp:out:B1": 1, "cpa:out:B1": 500})
    >>> fold_delta(counters, cps, {"m:201901:n_out": 1, "cp:out:B2": 1, "cpa:out:B2": 200})
    >>> sorted(counters.items())
    [('m:201901:n_out', 2), ('s:cpamax_out', 500), ('s:cpasum_out', 700), ('s:ncp_out', 2)]
    >>> cps["cpa:out:B2"]
    200
    """
    for key, inc in delta.items():
        if not key.startswith(COUNTERPARTY_PREFIXES):
            counters[key] = counters.get(key, 0) + inc
            continue
        old = counterparties.get(key, 0)
        new = counterparties[key] = old + inc
        n_key, sum_key, max_key = summary_keys(key.split(":", 2)[1])
        if key.startswith("cp:"):
            if old <= 0 < new:
                counters[n_key] = counters.get(n_key, 0) + 1
            elif new <= 0 < old:
                counters[n_key] = counters.get(n_key, 0) - 1
        else:
            counters[sum_key] = counters.get(sum_key, 0) + inc
            if new > counters.get(max_key, 0):
                counters[max_key] = new


@functools.lru_cache(maxsize=4096)
def _month_names(year: int, month: int, direction: str) -> tuple[str, ...]:
    """The month counters' names of one direction: n, void, valid, amt, tot, ret, retamt, gross (built once)."""
    m = f"m:{year:04d}{month:02d}:"
    return tuple(f"{m}{kind}_{direction}" for kind in ("n", "void", "valid", "amt", "tot", "ret", "retamt", "gross"))


def invoice_delta(event: InvoiceEvent) -> Delta:
    """The counter increments one invoice contributes (pure; no state; no zero increments)."""
    d = event.direction
    issue = event.issue_date
    n, void, valid, amt, tot, ret, retamt, gross = _month_names(issue.year, issue.month, d)
    delta: Delta = {n: 1, f"cp:{d}:{event.counterparty_id}": 1}
    if event.status == "void":
        delta[void] = 1
        return delta
    cents = event.amount_cents
    total = event.total_cents
    delta[valid] = 1
    if cents:
        delta[amt] = cents
    if total:
        delta[tot] = total
    if cents < 0:
        delta[ret] = 1
        delta[retamt] = -cents
    elif cents > 0:
        delta[gross] = cents
        delta[f"cpa:{d}:{event.counterparty_id}"] = cents
    return delta


@dataclass(slots=True)
class EnterpriseState:
    """Everything the features of one enterprise are computed from.

    ``counters`` are the summed deltas without the counterparty keys, plus their summaries
    (what the features read); ``counterparties`` the ``cp:``/``cpa:`` counters (see
    :func:`fold_delta`). ``seen`` holds the event ids applied by an in-process fold (the
    batch path); a feature store keeps a bounded dedup window instead and loads states
    with ``seen`` empty. The fold owns the state and updates it in place (as Bytewax's
    ``stateful_map`` does), which keeps a full replay of 1.1 M invoices linear in time.
    """

    enterprise_id: str
    counters: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    name: str | None = None
    counterparties: dict[str, int] = field(default_factory=dict)

    def apply_delta(self, event_id: str, delta: Mapping[str, int]) -> bool:
        """Add ``delta`` unless ``event_id`` was applied before; True if it changed the state."""
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        fold_delta(self.counters, self.counterparties, delta)
        return True

    @property
    def n_events(self) -> int:
        """How many invoice events were applied: the sum of the monthly invoice counts ``m:*:n_*``."""
        return sum(v for k, v in self.counters.items() if k.startswith("m:") and k[9:11] == "n_")


def apply_invoice(state: EnterpriseState | None, event: InvoiceEvent) -> EnterpriseState:
    """Fold one invoice into the enterprise's state; a redelivered ``event_id`` changes nothing.

    Raises
    ------
    ValueError
        If the event belongs to another enterprise than ``state``.
    """
    if state is None:
        state = EnterpriseState(event.enterprise_id)
    elif state.enterprise_id != event.enterprise_id:
        raise ValueError(f"event {event.event_id} is for {event.enterprise_id}, state is {state.enterprise_id}")
    if event.enterprise_name and state.name is None:
        state.name = event.enterprise_name
    state.apply_delta(event.event_id, invoice_delta(event))
    return state


def fold_all(events: Iterable[InvoiceEvent], states: dict[str, EnterpriseState] | None = None) -> dict[str, EnterpriseState]:
    """Fold many invoices into per-enterprise states (the batch path is this same fold)."""
    states = {} if states is None else states
    for event in events:
        states[event.enterprise_id] = apply_invoice(states.get(event.enterprise_id), event)
    return states


# --------------------------------------------------------------------------- the fold over columns

_MONTH_KINDS: Final = ("n", "void", "valid", "amt", "tot", "ret", "retamt", "gross")


@dataclass(frozen=True, slots=True)
class FoldedDeltas:
    """The summed deltas of groups of events (:func:`fold_columns`): entries sorted by group.

    Entry ``j`` adds ``values[j]`` to counter ``keys[j]`` of group ``group[j]`` (the month counters);
    ``cp`` holds the counterparty counters ``cp:{d}:{id}`` and ``cpa:{d}:{id}`` as a table. A counter is
    named when at least one event of the group contributes to it (as in the sum of :func:`invoice_delta`).
    """

    group: np.ndarray  # int64, ascending
    keys: pa.StringArray
    values: np.ndarray  # int64
    cp: CounterpartyDeltas

    def _bounds(self, n_groups: int) -> np.ndarray:
        return np.searchsorted(self.group, np.arange(n_groups + 1), side="left")

    def dicts(self, n_groups: int) -> list[Delta]:
        """One delta per group code ``0 .. n_groups - 1`` (empty for a group without events)."""
        keys = self.keys.to_pylist()
        values = self.values.tolist()
        bounds = self._bounds(n_groups).tolist()
        out = [dict(zip(keys[bounds[g]:bounds[g + 1]], values[bounds[g]:bounds[g + 1]], strict=True))
               for g in range(n_groups)]
        cp = self.cp
        for g, out_, cid, n, gross in zip(cp.group.tolist(), cp.out.tolist(), cp.ids.to_pylist(), cp.n.tolist(),
                                          cp.gross.tolist(), strict=True):
            direction = "out" if out_ else "in"
            out[g][f"cp:{direction}:{cid}"] = n
            if gross > 0:
                out[g][f"cpa:{direction}:{cid}"] = gross
        return out

    def payloads(self, n_groups: int) -> list[tuple[bytes, bytes, bytes]]:
        """Per group, its delta as the Redis apply script's three payloads (``streams.adapters.redis_store``):
        the counters as ``b"key value key value "`` (counter names hold no whitespace) with ``s:cpasum_{d}``,
        the sum of a direction's ``cpa`` increments, when it has any; then for ``in`` and for ``out`` its
        counterparties as ``b"id count amount "`` (``-``: no ``cpa`` increment)."""
        cp = self.cp
        texts: list[pa.Array] = [pc.binary_join_element_wise(self.keys, pc.cast(pa.array(self.values), pa.string()),
                                                             "", " ")]
        groups, kinds = [self.group], [np.zeros(len(self.group), dtype=np.int64)]
        if len(cp.group):
            pos = cp.gross > 0
            sums = pd.DataFrame({"g": cp.group[pos], "o": cp.out[pos], "a": cp.gross[pos]}).groupby(["g", "o"]).sum()
            if len(sums):
                s_out = sums.index.get_level_values(1).to_numpy(dtype=bool)
                texts.append(pc.binary_join_element_wise(
                    pa.array(np.where(s_out, "s:cpasum_out", "s:cpasum_in")),
                    pc.cast(pa.array(sums["a"].to_numpy(dtype=np.int64)), pa.string()), "", " "))
                groups.append(sums.index.get_level_values(0).to_numpy(dtype=np.int64))
                kinds.append(np.zeros(len(sums), dtype=np.int64))
            amount = pc.if_else(pa.array(pos), pc.cast(pa.array(cp.gross), pa.string()), "-")
            texts.append(pc.binary_join_element_wise(cp.ids, pc.cast(pa.array(cp.n), pa.string()), amount, "", " "))
            groups.append(cp.group)
            kinds.append(1 + cp.out.astype(np.int64))
        group, kind = np.concatenate(groups), np.concatenate(kinds)
        if not len(group):
            return [(b"", b"", b"")] * n_groups
        arr = pa.concat_arrays([t.combine_chunks() if isinstance(t, pa.ChunkedArray) else t for t in texts])
        order = np.lexsort((kind, group))  # by group, then kind; stable within
        arr = pc.take(arr, pa.array(order))
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        slot = group[order] * 3 + kind[order]
        flat = joined_runs(arr, np.searchsorted(slot, np.arange(3 * n_groups + 1), side="left"))
        return [(flat[3 * g], flat[3 * g + 1], flat[3 * g + 2]) for g in range(n_groups)]


def joined_runs(arr: pa.Array, bounds: np.ndarray) -> list[bytes]:
    """The elements of a string array ``arr`` (no nulls) from ``bounds[i]`` up to ``bounds[i + 1]``, joined, for each
    ``i``: one slice of Arrow's data buffer each, cut at the offsets, so no element becomes a Python object.

    >>> joined_runs(pa.array(["a ", "b ", "c "]), np.array([0, 2, 2, 3]))
    [b'a b ', b'', b'c ']
    """
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    data = arr.buffers()[2].to_pybytes()
    cut = offsets[bounds].tolist()
    return [data[cut[i]:cut[i + 1]] for i in range(len(cut) - 1)]


@dataclass(frozen=True, slots=True)
class CounterpartyDeltas:
    """Per (group, direction, counterparty) of a :class:`FoldedDeltas`: the ``cp`` and ``cpa`` increments."""

    group: np.ndarray  # int64
    out: np.ndarray  # bool
    ids: pa.StringArray
    n: np.ndarray  # int64: the cp:{d}:{id} increment
    gross: np.ndarray  # int64: the cpa:{d}:{id} increment (named only when > 0)


def fold_columns(group: np.ndarray, yyyymm: np.ndarray, out: np.ndarray, void: np.ndarray,
                 amount_cents: np.ndarray, total_cents: np.ndarray, counterparty: np.ndarray) -> FoldedDeltas:
    """The sum of :func:`invoice_delta` over the events of each group, for whole columns at once.

    ``group`` is any integer code per event (an enterprise, or an enterprise and its partition);
    ``yyyymm`` the issue month as ``year * 100 + month``. Equal to folding each event's
    :func:`invoice_delta` into one dict per group (``tests/unit/streams/test_fold_columns.py``).
    """
    if not len(group):
        none = np.empty(0, dtype=np.int64)
        return FoldedDeltas(none, pa.array([], type=pa.string()), none,
                            CounterpartyDeltas(none, np.empty(0, dtype=bool), pa.array([], type=pa.string()), none, none))
    valid = ~void
    pos = valid & (amount_cents > 0)
    neg = valid & (amount_cents < 0)
    frame = pd.DataFrame({
        "g": group, "m": yyyymm, "o": out,
        "n": np.ones(len(group), dtype=np.int64), "void": void.astype(np.int64), "valid": valid.astype(np.int64),
        "amt": np.where(valid, amount_cents, 0), "amt_nz": (valid & (amount_cents != 0)).astype(np.int64),
        "tot": np.where(valid, total_cents, 0), "tot_nz": (valid & (total_cents != 0)).astype(np.int64),
        "ret": neg.astype(np.int64), "retamt": np.where(neg, -amount_cents, 0),
        "gross": np.where(pos, amount_cents, 0), "pos": pos.astype(np.int64), "cp": counterparty,
    })
    month = frame.drop(columns="cp").groupby(["g", "m", "o"], sort=False).sum()
    cps = frame.groupby(["g", "o", "cp"], sort=False)[["n", "gross"]].sum()
    groups: list[np.ndarray] = []
    keys: list[pa.Array] = []
    values: list[np.ndarray] = []
    mg = month.index.get_level_values(0).to_numpy(dtype=np.int64)
    m_text = pa.array(month.index.get_level_values(1).to_numpy(dtype=np.int64)).cast(pa.string())
    m_dir = pa.array(np.where(month.index.get_level_values(2).to_numpy(dtype=bool), "out", "in"))
    present = {"n": None, "void": "void", "valid": "valid", "amt": "amt_nz", "tot": "tot_nz", "ret": "ret",
               "retamt": "ret", "gross": "pos"}
    for kind in _MONTH_KINDS:
        flag = present[kind]
        mask = np.ones(len(month), dtype=bool) if flag is None else month[flag].to_numpy() > 0
        if not mask.any():
            continue
        where = pa.array(np.flatnonzero(mask))
        groups.append(mg[mask])
        keys.append(pc.binary_join_element_wise("m:", pc.take(m_text, where), f":{kind}_", pc.take(m_dir, where), ""))
        values.append(month[kind].to_numpy(dtype=np.int64)[mask])
    group_all = np.concatenate(groups)
    order = np.argsort(group_all, kind="stable")
    key_all = pa.concat_arrays([k.combine_chunks() if isinstance(k, pa.ChunkedArray) else k for k in keys])
    table = CounterpartyDeltas(cps.index.get_level_values(0).to_numpy(dtype=np.int64),
                               cps.index.get_level_values(1).to_numpy(dtype=bool),
                               pa.array(cps.index.get_level_values(2).to_numpy(dtype=object), type=pa.string()),
                               cps["n"].to_numpy(dtype=np.int64), cps["gross"].to_numpy(dtype=np.int64))
    return FoldedDeltas(group_all[order], pc.take(key_all, pa.array(order)), np.concatenate(values)[order], table)
