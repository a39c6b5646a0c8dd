"""The columnar point-in-time backtest: fold once into tables, derive every as-of state by cumulative sums.

The default engine of ``riskmon backtest``. Instead of replaying events one by one, the
invoices are folded once (:mod:`streams.backtest.foldsql`, run by DuckDB here or by Spark in
:mod:`streams.backtest.spark`) into two small tables of integer sums:

- per (enterprise, as-of bin, month, direction): the fold's ``m:`` counters;
- per (enterprise, direction, as-of bin): counterparties first seen, largest counterparty total.

Walking the bins in order and adding each bin's sums gives every enterprise's counters as
of every as-of date (an invoice dated after a date sits in a later bin, so it never reaches
that date). The counters go into :class:`streams.features.vector.MonthlyArrays` and through
the one feature implementation (:func:`~streams.features.vector.features_from_arrays`) for
thousands of enterprises at once; scores come from the bundle's ``score_many`` in large
batches, and :func:`streams.backtest.engine.allocate_snapshots` allocates per date through the
live allocator step, exactly as for the event replay.

Examples
--------
>>> import datetime as dt
>>> bins_of([dt.date(2019, 1, 5), dt.date(2019, 3, 1), dt.date(2019, 9, 1)], [dt.date(2019, 2, 28), dt.date(2019, 6, 30)])
[0, 1, 2]
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from models.schema import NUMERIC_FEATURES
from models.scoring import Score, Scorer, ScoringBatch
from streams.backtest.engine import Snapshot, batch_of, end_of_day
from streams.backtest.foldsql import MONTHLY_METRICS
from streams.backtest.foldsql import FoldTables as FoldTables  # re-exported: the fold lives beside its SQL
from streams.backtest.foldsql import fold_duckdb as fold_duckdb
from streams.events import EnterpriseScore
from streams.features.names import classify_name
from streams.features.vector import (
    DIRECTIONS,
    METRIC_NAMES,
    WINDOW_MONTHS,
    MonthlyArrays,
    features_from_arrays,
    month_index,
    sequences_from_window,
)
from streams.pipeline import to_event
from streams.ports import EnterpriseRegistry

#: Enterprises whose states are derived together (memory ~ chunk x months x 16 x 8 bytes).
DEFAULT_ENTERPRISE_CHUNK = 20_000
#: Rows per ``score_many`` call.
DEFAULT_SCORE_BATCH = 4_096
_N_COLS = [METRIC_NAMES.index(f"n_{d}") for d in DIRECTIONS]
_AMT_OUT = METRIC_NAMES.index("amt_out")

ScoreTransform = Callable[[list[EnterpriseScore], dt.date], list[EnterpriseScore]]


def bins_of(days: Sequence[dt.date], dates: Sequence[dt.date]) -> list[int]:
    """The as-of bin of each day: the index of the first as-of date on or after it (the SQL's ``bin_case``)."""
    return [bisect.bisect_left(dates, d) for d in days]


# --------------------------------------------------------------------------- the as-of walk


@dataclass(frozen=True, slots=True)
class AsOfStates:
    """The enterprises of one chunk that have an invoice by ``dates[k]``, and their arrays."""

    k: int
    as_of: dt.date
    enterprise_ids: tuple[str, ...]
    arrays: MonthlyArrays
    names: tuple[str | None, ...]
    n_events: int


def _np(table: pa.Table, name: str, dtype: type = np.int64) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


class _Indexed:
    """The fold tables with enterprise ids as integer codes (ids sorted)."""

    def __init__(self, fold: FoldTables) -> None:
        ids = sorted(set(fold.monthly.column("enterprise_id").to_pylist()))
        self.ids = ids
        code = {e: i for i, e in enumerate(ids)}
        m = fold.monthly
        self.m_ent = np.array([code[e] for e in m.column("enterprise_id").to_pylist()], dtype=np.int64)
        self.m_bin = _np(m, "bin")
        self.m_month = _np(m, "month")
        d_out = np.array([d == "out" for d in m.column("direction").to_pylist()], dtype=bool)
        # (rows, 16) values in METRIC_NAMES order: the 8 metrics of "in", then of "out"
        vals = np.stack([_np(m, metric) for metric in MONTHLY_METRICS], axis=1)
        self.m_vals = np.zeros((m.num_rows, len(METRIC_NAMES)), dtype=np.int64)
        n = len(MONTHLY_METRICS)
        self.m_vals[~d_out, :n] = vals[~d_out]
        self.m_vals[d_out, n:] = vals[d_out]
        c = fold.counterparties
        self.c_ent = np.array([code.get(e, -1) for e in c.column("enterprise_id").to_pylist()], dtype=np.int64)
        self.c_dir = np.array([DIRECTIONS.index(d) for d in c.column("direction").to_pylist()], dtype=np.int64)
        self.c_bin = _np(c, "bin")
        self.c_new = _np(c, "new_cp")
        self.c_max = _np(c, "max_cpa")
        self.names: dict[str, tuple[str, int]] = {
            e: (n_, int(b)) for e, n_, b in zip(fold.names.column("enterprise_id").to_pylist(),
                                               fold.names.column("enterprise_name").to_pylist(),
                                               fold.names.column("bin").to_pylist(), strict=True)}


def walk_states(fold: FoldTables, *, enterprise_chunk: int = DEFAULT_ENTERPRISE_CHUNK,
                enterprise_ids: Collection[str] | None = None) -> Iterator[AsOfStates]:
    """Every chunk's states as of every as-of date, chunk by chunk, dates in order within a chunk.

    ``enterprise_ids`` restricts the walk (default: every enterprise with an invoice).
    """
    ix = _Indexed(fold)
    dates = fold.dates
    if not dates:
        return
    wanted = np.arange(len(ix.ids)) if enterprise_ids is None else np.array(
        [i for i, e in enumerate(ix.ids) if e in set(enterprise_ids)], dtype=np.int64)
    # event counts per bin over every wanted enterprise, for Snapshot.n_events (the events folded so far)
    month_lo = int(ix.m_month.min()) if len(ix.m_month) else month_index(dates[0])
    month_hi = max(month_index(dates[-1]), month_lo)
    base = month_lo - WINDOW_MONTHS + 1  # column 0 of the state; the window of the first month fits
    n_months = month_hi - base + 1
    in_wanted = np.zeros(len(ix.ids), dtype=bool)
    in_wanted[wanted] = True
    ev_per_bin = np.bincount(ix.m_bin[in_wanted[ix.m_ent]], weights=ix.m_vals[in_wanted[ix.m_ent]][:, _N_COLS].sum(axis=1),
                             minlength=len(dates) + 1)
    events_by = np.cumsum(ev_per_bin).astype(np.int64)
    for start in range(0, len(wanted), enterprise_chunk):
        chunk = wanted[start:start + enterprise_chunk]
        local = np.full(len(ix.ids), -1, dtype=np.int64)
        local[chunk] = np.arange(len(chunk))
        rows = np.flatnonzero(local[ix.m_ent] >= 0)
        rows = rows[np.argsort(ix.m_bin[rows], kind="stable")]
        row_bins = ix.m_bin[rows]
        crow = np.flatnonzero((ix.c_ent >= 0) & (local[np.maximum(ix.c_ent, 0)] >= 0) & (ix.c_ent >= 0))
        crow = crow[np.argsort(ix.c_bin[crow], kind="stable")]
        crow_bins = ix.c_bin[crow]
        state = np.zeros((len(chunk), n_months, len(METRIC_NAMES)), dtype=np.int64)
        cp_count = np.zeros((len(chunk), 2), dtype=np.int64)
        cpa_max = np.zeros((len(chunk), 2), dtype=np.int64)
        for k, as_of in enumerate(dates):
            lo, hi = np.searchsorted(row_bins, [k, k + 1])
            r = rows[lo:hi]
            np.add.at(state, (local[ix.m_ent[r]], ix.m_month[r] - base), ix.m_vals[r])
            lo, hi = np.searchsorted(crow_bins, [k, k + 1])
            c = crow[lo:hi]
            np.add.at(cp_count, (local[ix.c_ent[c]], ix.c_dir[c]), ix.c_new[c])
            np.maximum.at(cpa_max, (local[ix.c_ent[c]], ix.c_dir[c]), ix.c_max[c])
            end = month_index(as_of) - base
            active = state[:, : end + 1, _N_COLS].sum(axis=2) > 0  # (chunk, months)
            seen = active.any(axis=1)
            if not seen.any():
                continue
            sel = np.flatnonzero(seen)
            window = state[sel, end - WINDOW_MONTHS + 1: end + 1, :].transpose(0, 2, 1).astype(np.float64)
            totals = state[sel, : end + 1, :].sum(axis=1).astype(np.float64)
            act = active[sel]
            first = act.argmax(axis=1).astype(np.float64) + base
            last = (end - act[:, ::-1].argmax(axis=1)).astype(np.float64) + base
            gross = totals[:, [METRIC_NAMES.index(f"gross_{d}") for d in DIRECTIONS]]
            arrays = MonthlyArrays(window=np.ascontiguousarray(window), totals=totals, first=first, last=last,
                                   cp_count=cp_count[sel].astype(np.float64), cpa_max=cpa_max[sel].astype(np.float64),
                                   cpa_sum=gross, end=month_index(as_of))
            ids = tuple(ix.ids[i] for i in chunk[sel])
            names = tuple((nb[0] if (nb := ix.names.get(e)) is not None and nb[1] <= k else None) for e in ids)
            yield AsOfStates(k, as_of, ids, arrays, names, int(events_by[k]))


def counters_of(states: AsOfStates, i: int) -> dict[str, int]:
    """The ``m:`` counters of the i-th enterprise (nonzero ones, keyed as the fold keys them), for tests.

    Only the window's months are readable here; states older than 36 months are in ``totals``.
    """
    a = states.arrays
    out: dict[str, int] = {}
    for j in range(WINDOW_MONTHS):
        month = a.end - WINDOW_MONTHS + 1 + j
        ym = f"{month // 12:04d}{month % 12 + 1:02d}"
        for r, name in enumerate(METRIC_NAMES):
            v = int(a.window[i, r, j])
            if v:
                out[f"m:{ym}:{name}"] = v
    return out


# --------------------------------------------------------------------------- scoring


@dataclass(slots=True)
class ColumnarReplay:
    """What the columnar engine hands to the allocation and the report (the event replay's shape)."""

    snapshots: list[Snapshot]
    n_events: int
    n_duplicates: int
    fold: FoldTables
    sales: dict[str, dict[int, float]] = field(default_factory=dict)

    def monthly_sales(self, last: dt.date) -> dict[str, dict[int, float]]:
        """Valid sales (yuan) per enterprise and month index, months up to ``last``'s month."""
        end = month_index(last)
        return {e: {m: v for m, v in months.items() if m <= end} for e, months in self.sales.items()}


def _sales_table(fold: FoldTables, enterprise_ids: Collection[str] | None) -> dict[str, dict[int, float]]:
    """Valid sales per enterprise and month, months holding a valid sales invoice with a nonzero amount
    (those the fold keeps an ``amt_out`` counter for), every bin included (the event replay's final store)."""
    m = fold.monthly
    out: dict[str, dict[int, int]] = {}
    cols = [m.column(c).to_pylist() for c in ("enterprise_id", "month", "direction", "amt", "gross", "ret")]
    for e, month, d, amt, gross, ret in zip(*cols, strict=True):
        if d != "out" or (enterprise_ids is not None and e not in enterprise_ids):
            continue
        months = out.setdefault(e, {})
        if gross > 0 or ret > 0:
            months[month] = months.get(month, 0) + amt
    return {e: {mo: v / 100.0 for mo, v in sorted(ms.items())} for e, ms in out.items()}


def score_columnar(
    fold: FoldTables,
    registry: EnterpriseRegistry,
    scorer: Scorer,
    *,
    score_transform: ScoreTransform | None = None,
    blind_ids: Collection[str] = (),
    enterprise_ids: Collection[str] | None = None,
    enterprise_chunk: int = DEFAULT_ENTERPRISE_CHUNK,
    score_batch: int = DEFAULT_SCORE_BATCH,
    on_progress: Callable[[int, int], None] | None = None,
    reasons: bool = True,
) -> ColumnarReplay:
    """Score every enterprise with an invoice as of every as-of date and return the snapshots.

    ``on_progress(done, total)`` is called after each scoring batch (rows = enterprise-dates).
    ``reasons`` computes every score's reasons while scoring (blind scores never get them); without
    it, :func:`streams.backtest.engine.explainer` computes them later from ``Snapshot.inputs``.
    """
    dates = fold.dates
    n_col = NUMERIC_FEATURES.index("n_invoices")
    blind = set(blind_ids)
    per_date: dict[int, dict[str, object]] = {k: {"ids": [], "rows": {}, "scores": {}, "blind": {}, "n": 0}
                                             for k in range(len(dates))}
    total = _rows_to_score(fold, enterprise_ids)
    done = 0
    pending: list[tuple[int, str, np.ndarray, np.ndarray, tuple[str, str], str | None, bool]] = []

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        batch = ScoringBatch([p[1] for p in pending], np.stack([p[2] for p in pending]), [p[4] for p in pending],
                             np.stack([p[3] for p in pending]), [p[5] for p in pending])
        scores: list[Score] = scorer.score_many(batch, reasons=[reasons and not p[6] for p in pending])
        if len(scores) != len(pending):
            raise ValueError(f"scorer returned {len(scores)} scores for {len(pending)} enterprises")
        for (k, eid, numeric, _, (industry, legal), _, is_blind), score in zip(pending, scores, strict=True):
            as_of = dates[k]
            event = to_event(score, int(numeric[n_col]), industry, legal, as_of=as_of,
                             bundle_version=scorer.version, now=end_of_day(as_of))
            slot = per_date[k]["blind" if is_blind else "scores"]
            slot[eid] = event  # type: ignore[index]
        done += sum(1 for p in pending if not p[6])
        pending.clear()
        if on_progress is not None:
            on_progress(done, total)

    for st in walk_states(fold, enterprise_chunk=enterprise_chunk, enterprise_ids=enterprise_ids):
        numeric = features_from_arrays(st.arrays)  # (n, features)
        seqs = sequences_from_window(st.arrays.window)  # (n, channels, months)
        slot = per_date[st.k]
        slot["n"] = st.n_events
        for i, eid in enumerate(st.enterprise_ids):
            info = registry.get(eid)
            cat = classify_name(info.name if info is not None else st.names[i])
            known = info.rating if info is not None else None
            slot["ids"].append(eid)  # type: ignore[attr-defined]
            slot["rows"][eid] = (numeric[i], seqs[i], cat, known)  # type: ignore[index]
            pending.append((st.k, eid, numeric[i], seqs[i], cat, known, False))
            if eid in blind:
                pending.append((st.k, eid, numeric[i], seqs[i], cat, None, True))
            if len(pending) >= score_batch:
                flush()
    flush()
    snapshots: list[Snapshot] = []
    for k, as_of in enumerate(dates):
        slot = per_date[k]
        ids: list[str] = slot["ids"]  # type: ignore[assignment]
        order = np.argsort(np.array(ids, dtype=object), kind="stable") if ids else np.zeros(0, dtype=np.int64)
        sorted_ids = tuple(ids[i] for i in order)
        inputs = batch_of(slot["rows"], sorted_ids)  # type: ignore[arg-type]
        scores: dict[str, EnterpriseScore] = slot["scores"]  # type: ignore[assignment]
        blind_scores: dict[str, EnterpriseScore] = slot["blind"]  # type: ignore[assignment]
        score_list = [scores[e] for e in sorted_ids]
        blind_list = [blind_scores[e] for e in sorted_ids if e in blind_scores]
        if score_transform is not None:
            score_list = score_transform(score_list, as_of)
            blind_list = score_transform(blind_list, as_of)
        snapshots.append(Snapshot(as_of, sorted_ids, inputs.numeric, {s.enterprise_id: s for s in score_list},
                                  int(slot["n"]) if ids else _events_by(fold, k, enterprise_ids),  # type: ignore[call-overload]
                                  {s.enterprise_id: s for s in blind_list}, inputs))
    n_total = _events_by(fold, len(dates), enterprise_ids)
    return ColumnarReplay(snapshots, n_total, fold.n_duplicates, fold, _sales_table(fold, enterprise_ids))


def _events_by(fold: FoldTables, k: int, enterprise_ids: Collection[str] | None) -> int:
    """Events folded in bins 0..k (k = len(dates): all of them)."""
    m = fold.monthly
    total = 0
    for e, b, n in zip(m.column("enterprise_id").to_pylist(), m.column("bin").to_pylist(), m.column("n").to_pylist(),
                       strict=True):
        if b <= k and (enterprise_ids is None or e in enterprise_ids):
            total += n
    return total


def _rows_to_score(fold: FoldTables, enterprise_ids: Collection[str] | None) -> int:
    """Enterprise-dates to score: each enterprise from the bin of its first invoice on."""
    first: dict[str, int] = {}
    for e, b in zip(fold.monthly.column("enterprise_id").to_pylist(), fold.monthly.column("bin").to_pylist(),
                    strict=True):
        if enterprise_ids is None or e in enterprise_ids:
            first[e] = min(b, first.get(e, b))
    n = len(fold.dates)
    return sum(max(0, n - b) for b in first.values())


def nan_equal(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Two feature vectors are the same, NaN equal to NaN.

    Examples
    --------
    >>> nan_equal({"x": math.nan, "y": 1.0}, {"x": math.nan, "y": 1.0})
    True
    """
    return a.keys() == b.keys() and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)
