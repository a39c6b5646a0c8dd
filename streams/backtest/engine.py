"""The in-process backtest: replay invoices in event-time order through the live pipeline's functions.

The replay feeds :func:`streams.pipeline.apply_events` (the worker's fold into a
:class:`~streams.ports.FeatureStore`, here the in-memory adapter) in micro-batches that
never straddle an as-of date. When the next event is dated after an as-of date, every
enterprise seen so far is rescored as of that date with :func:`streams.pipeline.rescore`
(a :class:`Snapshot`); then :func:`allocate_snapshots` runs
:func:`streams.pipeline.decide_allocation` on each snapshot's scores, chaining the previous
lines exactly like the live allocator timer. Point-in-time correctness is structural: a
snapshot is taken before any event dated after its as-of date is applied.

Two deliberate differences from the live worker, neither changing a decision:

- scores are computed at the as-of dates only, for every enterprise seen so far, as of
  that date (the worker rescores each micro-batch's enterprises as of its watermark; an
  enterprise with no invoice since is left with its older score there);
- ``now`` (the ``scored_at`` / ``decided_at`` stamps and the allocation ids) is the end
  of the as-of day, so a backtest is deterministic.

Examples
--------
>>> import datetime as dt
>>> from streams.backtest.engine import chunk_by_as_of
>>> days = [dt.date(2019, 1, d) for d in (1, 2, 5, 9)]
>>> [(a, len(c)) for a, c in chunk_by_as_of(days, [dt.date(2019, 1, 2), dt.date(2019, 1, 7)], key=lambda d: d)]
[(None, 2), (datetime.date(2019, 1, 2), 0), (None, 1), (datetime.date(2019, 1, 7), 0), (None, 1)]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import numpy as np

from models.schema import NUMERIC_FEATURES
from models.scoring import ReasonsWanted, Score, Scorer, ScoringBatch
from streams.adapters.memory import InMemoryCreditLineStore, InMemoryFeatureStore
from streams.events import AllocationSummary, CreditLine, EnterpriseScore, InvoiceEvent
from streams.features.vector import month_index
from streams.pipeline import Allocate, AllocationPolicy, apply_events, decide_allocation, rescore
from streams.ports import EnterpriseInfo, EnterpriseRegistry, FeatureStore

T = TypeVar("T")

#: Events per ``apply_events`` call (the worker's micro-batch plays the same role).
DEFAULT_CHUNK = 5_000


def end_of_day(day: dt.date) -> dt.datetime:
    """The decision time stamped on a backtest snapshot: 23:59:59 UTC of the as-of day.

    Examples
    --------
    >>> end_of_day(dt.date(2019, 12, 31)).isoformat()
    '2019-12-31T23:59:59+00:00'
    """
    return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)


def chunk_by_as_of(
    items: Iterable[T], as_of_dates: Sequence[dt.date], *, key: Callable[[T], dt.date], chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[dt.date | None, list[T]]]:
    """Split an event-time-ordered stream into micro-batches and as-of marks.

    Yields ``(None, batch)`` for a batch to apply and ``(as_of, [])`` when every item dated
    on or before ``as_of`` has been yielded and none after it: the moment to snapshot.
    Every as-of date is marked exactly once, in order, including those after the last item.

    Raises
    ------
    ValueError
        If the items are not in event-time order (a replay must be).
    """
    pending = sorted(as_of_dates)
    k = 0
    batch: list[T] = []
    previous: dt.date | None = None
    for item in items:
        day = key(item)
        if previous is not None and day < previous:
            raise ValueError(f"events out of event-time order: {day} after {previous}")
        previous = day
        while k < len(pending) and day > pending[k]:
            if batch:
                yield None, batch
                batch = []
            yield pending[k], []
            k += 1
        batch.append(item)
        if len(batch) >= chunk:
            yield None, batch
            batch = []
    if batch:
        yield None, batch
    for as_of in pending[k:]:
        yield as_of, []


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every enterprise seen by ``as_of``: its features and its score as of that date.

    ``numeric`` is (len(enterprise_ids), len(NUMERIC_FEATURES)): the raw feature values
    the scorer was given. ``blind_scores`` are the scores of the ``blind_ids`` enterprises
    with their known ratings hidden from the scorer (the model must rate them itself, as
    for an unrated client): the honest view of the default model on labeled enterprises.
    ``inputs`` is the scoring batch of ``enterprise_ids`` (same order) as the scorer saw it,
    kept so that reasons can be computed later for the rows that need them (:func:`explainer`).
    """

    as_of: dt.date
    enterprise_ids: tuple[str, ...]
    numeric: np.ndarray
    scores: Mapping[str, EnterpriseScore]
    n_events: int
    blind_scores: Mapping[str, EnterpriseScore] = field(default_factory=dict)
    inputs: ScoringBatch | None = None


#: Which backtest rows get reasons (``risk_factors``): ``lines`` those of every credit line lent
#: or published (changed) as of each date, ``all`` every scored enterprise-date, ``none`` none.
ReasonsMode = Literal["lines", "all", "none"]
REASONS_MODES: tuple[str, ...] = ("lines", "all", "none")

#: ``explain([(snapshot, ids), ...]) -> [{id: reasons}, ...]``: reasons of some enterprises of some snapshots.
Explain = Callable[[Sequence[tuple["Snapshot", Sequence[str]]]], list[dict[str, tuple[str, ...]]]]

#: Rows per ``score_many`` call when explaining.
EXPLAIN_BATCH = 4_096


def explainer(scorer: Scorer, batch_size: int = EXPLAIN_BATCH) -> Explain:
    """Reasons for some enterprises of some snapshots, from the inputs the scorer saw (``Snapshot.inputs``).

    One ``score_many(batch, reasons=True)`` over all the wanted rows of all the snapshots (in
    batches of ``batch_size``): a row's reasons depend only on its own inputs, so they are the
    ones a full scoring with reasons gives.
    """

    def explain(wanted: Sequence[tuple[Snapshot, Sequence[str]]]) -> list[dict[str, tuple[str, ...]]]:
        rows: list[tuple[int, str, np.ndarray, np.ndarray, tuple[str, str], str | None]] = []
        for k, (snap, ids) in enumerate(wanted):
            if not ids:
                continue
            if snap.inputs is None:
                raise ValueError(f"snapshot as of {snap.as_of} kept no scoring inputs: cannot compute reasons")
            where = {e: i for i, e in enumerate(snap.enterprise_ids)}
            b = snap.inputs
            for e in ids:
                i = where[e]
                rows.append((k, e, b.numeric[i], b.sequences[i], b.categorical[i], b.known_ratings[i]))
        out: list[dict[str, tuple[str, ...]]] = [{} for _ in wanted]
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            batch = ScoringBatch([r[1] for r in part], np.stack([r[2] for r in part]), [r[4] for r in part],
                                 np.stack([r[3] for r in part]), [r[5] for r in part])
            for r, score in zip(part, scorer.score_many(batch, reasons=True), strict=True):
                out[r[0]][r[1]] = tuple(score.reasons or ())
        return out

    return explain


def batch_of(rows: Mapping[str, tuple[np.ndarray, np.ndarray, tuple[str, str], str | None]],
             ids: Sequence[str]) -> ScoringBatch:
    """A scoring batch of ``ids`` from per-enterprise (numeric, sequence, categorical, known rating) rows."""
    if not ids:
        return ScoringBatch([], np.zeros((0, len(NUMERIC_FEATURES))), [], np.zeros((0, 0, 0), dtype=np.float32), [])
    return ScoringBatch(list(ids), np.stack([rows[e][0] for e in ids]), [rows[e][2] for e in ids],
                        np.stack([rows[e][1] for e in ids]), [rows[e][3] for e in ids])


class _RecordingScorer:
    """Passes batches to the scorer and keeps their inputs per enterprise (what the model saw)."""

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self.rows: dict[str, tuple[np.ndarray, np.ndarray, tuple[str, str], str | None]] = {}

    @property
    def version(self) -> str:
        return self._scorer.version

    def score_many(self, batch: ScoringBatch, *, reasons: ReasonsWanted = True) -> list[Score]:
        for i, eid in enumerate(batch.enterprise_ids):
            self.rows[eid] = (batch.numeric[i], batch.sequences[i], batch.categorical[i], batch.known_ratings[i])
        return self._scorer.score_many(batch, reasons=reasons)


class HiddenRatings:
    """A registry that knows the enterprises but hides their ratings (see ``Snapshot.blind_scores``).

    Examples
    --------
    >>> from streams.adapters.memory import InMemoryRegistry
    >>> HiddenRatings(InMemoryRegistry([EnterpriseInfo("E1", "n", "A")])).get("E1").rating is None
    True
    """

    def __init__(self, registry: EnterpriseRegistry) -> None:
        self._registry = registry

    def get(self, enterprise_id: str) -> EnterpriseInfo | None:
        info = self._registry.get(enterprise_id)
        return None if info is None else EnterpriseInfo(info.enterprise_id, info.name, None)

    def enterprise_ids(self) -> set[str]:
        return self._registry.enterprise_ids()


def take_snapshot(
    store: FeatureStore, registry: EnterpriseRegistry, scorer: Scorer, as_of: dt.date, n_events: int,
    *, score_transform: Callable[[list[EnterpriseScore], dt.date], list[EnterpriseScore]] | None = None,
    blind_ids: Collection[str] = (), reasons: bool = True,
) -> Snapshot:
    """Rescore every enterprise in ``store`` as of ``as_of`` (the pipeline's :func:`rescore`).

    ``reasons`` asks for the scores' reasons now; blind scores never get them (no report shows them).
    """
    ids = tuple(sorted(store.enterprise_ids()))
    recorder = _RecordingScorer(scorer)
    now = end_of_day(as_of)
    scores = rescore(ids, store, registry, recorder, as_of=as_of, now=now, reasons=reasons)
    if score_transform is not None:
        scores = score_transform(scores, as_of)
    inputs = batch_of(recorder.rows, ids)
    blind: list[EnterpriseScore] = []
    wanted = sorted(set(blind_ids) & set(ids))
    if wanted:
        blind = rescore(wanted, store, HiddenRatings(registry), scorer, as_of=as_of, now=now, reasons=False)
        if score_transform is not None:
            blind = score_transform(blind, as_of)
    return Snapshot(as_of, ids, inputs.numeric, {s.enterprise_id: s for s in scores}, n_events,
                    {s.enterprise_id: s for s in blind}, inputs)


def sales_by_month(store: FeatureStore, enterprise_ids: Sequence[str], last: dt.date) -> dict[str, dict[int, float]]:
    """Valid sales (yuan, net of tax) per enterprise and month index, months up to ``last``."""
    end = month_index(last)
    out: dict[str, dict[int, float]] = {}
    for state in store.load_many(list(enterprise_ids)):
        months: dict[int, float] = {}
        for key, value in state.counters.items():
            if key.startswith("m:") and key.endswith(":amt_out"):
                m = int(key[2:6]) * 12 + int(key[6:8]) - 1
                if m <= end:
                    months[m] = months.get(m, 0.0) + value / 100.0
        out[state.enterprise_id] = months
    return out


@dataclass(slots=True)
class ReplayResult:
    """The snapshots, in as-of order, and the feature store after the whole replay."""

    snapshots: list[Snapshot]
    store: InMemoryFeatureStore
    n_events: int
    n_duplicates: int

    def monthly_sales(self, last: dt.date) -> dict[str, dict[int, float]]:
        """Valid sales per enterprise and month up to ``last``'s month (every event replayed counts)."""
        return sales_by_month(self.store, sorted(self.store.enterprise_ids()), last)


def replay(
    events: Iterable[InvoiceEvent],
    as_of_dates: Sequence[dt.date],
    registry: EnterpriseRegistry,
    scorer: Scorer,
    *,
    event_transform: Callable[[InvoiceEvent], InvoiceEvent] | None = None,
    score_transform: Callable[[list[EnterpriseScore], dt.date], list[EnterpriseScore]] | None = None,
    chunk: int = DEFAULT_CHUNK,
    on_progress: Callable[[int], None] | None = None,
    blind_ids: Collection[str] = (),
    reasons: bool = True,
) -> ReplayResult:
    """Fold ``events`` (event-time order) into an in-memory store and snapshot at each as-of date.

    Parameters
    ----------
    events : valid invoice events sorted by issue date (``streams.dataset.load_events``).
    as_of_dates : snapshot dates; an event dated after one never reaches its snapshot.
    registry, scorer : the bank's enterprises and the model bundle, as in the worker.
    event_transform : a scenario's change to each event before it is folded (e.g. lower sales).
    score_transform : a scenario's change to each snapshot's scores (e.g. a higher default risk).
    on_progress : called with the number of events of each applied batch.
    blind_ids : enterprises also scored with their ratings hidden (``Snapshot.blind_scores``).
    reasons : compute every score's reasons while scoring (else later, where needed: :func:`explainer`).
    """
    store = InMemoryFeatureStore()
    snapshots: list[Snapshot] = []
    n_events = n_dup = 0
    stream: Iterable[InvoiceEvent] = events if event_transform is None else map(event_transform, events)
    for as_of, batch in chunk_by_as_of(stream, as_of_dates, key=lambda e: e.issue_date, chunk=chunk):
        if as_of is None:
            result = apply_events(store, batch)
            n_events += result.applied
            n_dup += result.duplicates
            if on_progress is not None:
                on_progress(len(batch))
        else:
            snapshots.append(take_snapshot(store, registry, scorer, as_of, n_events,
                                           score_transform=score_transform, blind_ids=blind_ids,
                                           reasons=reasons))
    return ReplayResult(snapshots, store, n_events, n_dup)


@dataclass(frozen=True, slots=True)
class DateDecision:
    """The allocation as of one date: every current line and the run's summary."""

    as_of: dt.date
    lines: Mapping[str, CreditLine]
    changed: tuple[CreditLine, ...]
    summary: AllocationSummary
    scores: Mapping[str, EnterpriseScore] = field(default_factory=dict)
    blind_scores: Mapping[str, EnterpriseScore] = field(default_factory=dict)


def allocate_snapshots(
    snapshots: Sequence[Snapshot],
    allocate: Allocate,
    registry: EnterpriseRegistry,
    *,
    budget_yuan: float,
    solver: str,
    bundle_version: str,
    seed: int = 0,
) -> list[DateDecision]:
    """Run the live allocator step (:func:`streams.pipeline.decide_allocation`) on each snapshot in turn.

    The lines of one date are the ``previous`` of the next, as the worker's
    :class:`~streams.ports.CreditLineStore` makes them, so change reasons match the stream's.
    """
    published = InMemoryCreditLineStore()
    out: list[DateDecision] = []
    for snap in snapshots:
        if not snap.scores:
            continue  # nothing known yet: the live allocator has nothing to allocate either
        step = decide_allocation(snap.scores, published.all(), allocate, registry,
                                 AllocationPolicy(budget_yuan=budget_yuan, solver=solver, seed=seed),
                                 now=end_of_day(snap.as_of), bundle_version=bundle_version, as_of=snap.as_of,
                                 force=True)
        if step is None:  # pragma: no cover - scores are non-empty and force is set
            continue
        outcome = step.outcome
        published.put_many(outcome.changed)
        out.append(DateDecision(snap.as_of, dict(outcome.lines), tuple(outcome.changed), outcome.summary,
                                snap.scores, snap.blind_scores))
    return out


def lines_needing_reasons(lines: Mapping[str, CreditLine], changed: Sequence[CreditLine]) -> list[str]:
    """The enterprises whose line is published now (changed) or lent, sorted: the rows a report explains.

    Examples
    --------
    >>> class L:
    ...     def __init__(self, e, a): self.enterprise_id, self.amount_yuan = e, a
    >>> lines_needing_reasons({"E1": L("E1", 0.0), "E2": L("E2", 5e5), "E3": L("E3", 0.0)}, [L("E3", 0.0)])
    ['E2', 'E3']
    """
    return sorted({ln.enterprise_id for ln in changed} | {e for e, ln in lines.items() if ln.amount_yuan > 0})


def explain_decisions(decisions: Sequence[DateDecision], snapshots: Sequence[Snapshot],
                      explain: Explain) -> list[DateDecision]:
    """The decisions with reasons on the scores and lines that need them (:func:`lines_needing_reasons`).

    As of each date: every line published then (new or changed, as the worker publishes it) and
    every line lent, and those enterprises' scores. Reasons never change a decision (the
    allocator reads none), so they are computed after all of them, in one :func:`explainer` call.
    An unchanged line is the object published at an earlier date, explained then.
    """
    by_date = {s.as_of: s for s in snapshots}
    wanted = [(by_date[d.as_of], [e for e in lines_needing_reasons(d.lines, d.changed) if e in d.scores])
              for d in decisions]
    got = explain(wanted)
    published: dict[tuple[str, str], CreditLine] = {}
    out: list[DateDecision] = []
    for d, why in zip(decisions, got, strict=True):
        scores = {**d.scores, **{e: d.scores[e].model_copy(update={"risk_factors": list(r)}) for e, r in why.items()}}
        changed = tuple(ln.model_copy(update={"risk_factors": list(why[ln.enterprise_id])})
                        if ln.enterprise_id in why else ln for ln in d.changed)
        published.update({(ln.enterprise_id, ln.allocation_id): ln for ln in changed})
        lines = {e: published.get((e, ln.allocation_id), ln) for e, ln in d.lines.items()}
        out.append(replace(d, lines=lines, changed=changed, scores=scores))
    return out
