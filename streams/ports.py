"""Ports: the small roles the pipeline talks to, each with an in-memory and a real adapter.

The pure orchestration in :mod:`streams.pipeline` depends only on these Protocols;
:mod:`streams.adapters.memory` implements all of them in process (tests, backtest),
:mod:`streams.adapters.redis_store` the stores on Redis, :mod:`streams.adapters.kafka`
the publishers on Kafka. The ports are synchronous: the live worker runs a batch's
store work in one executor thread (one Redis round trip per batch), which keeps the
very same functions usable in the in-process backtest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import numpy as np

from streams.alerts import WatchState
from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore, RiskAlert
from streams.features.fold import EnterpriseState

if TYPE_CHECKING:
    from streams.columns import InvoiceColumns

T_contra = TypeVar("T_contra", contravariant=True)


class Verdict(StrEnum):
    """What a feature store did with one event (:meth:`FeatureStore.apply_many`).

    ``applied`` changed the state. ``redelivered`` (at or below the last offset applied for
    the enterprise on that topic partition: a Kafka redelivery) and ``duplicate`` (the same
    ``event_id`` with the same content inside the dedup window: a producer re-send) changed
    nothing. ``conflicting_redelivery`` (the same ``event_id`` with other content inside the
    window) and ``outside_dedup_window`` (issued more than the window's months before the
    enterprise's newest applied invoice, so a re-send could not be recognised) changed nothing
    and are dead letters: :data:`DEAD_LETTER_VERDICTS`. The values are the DLQ reasons.
    """

    APPLIED = "applied"
    REDELIVERED = "redelivered"
    DUPLICATE = "duplicate"
    CONFLICT = "conflicting_redelivery"
    LATE = "outside_dedup_window"


DEAD_LETTER_VERDICTS: Final = frozenset({Verdict.CONFLICT, Verdict.LATE})
#: The letter of each verdict in :class:`ColumnsWrite` (and in the Redis apply script's answer).
VERDICT_LETTERS: Final = {Verdict.APPLIED: ord("a"), Verdict.REDELIVERED: ord("r"), Verdict.DUPLICATE: ord("d"),
                          Verdict.CONFLICT: ord("c"), Verdict.LATE: ord("l")}

#: Months of issue dates an enterprise's dedup window spans, ending with its newest applied month.
DEFAULT_DEDUP_WINDOW_MONTHS: Final = 12


@dataclass(frozen=True, slots=True)
class DeltaItem:
    """One event's contribution to one enterprise's feature state, and what fences its redelivery.

    ``month`` is the issue month (:func:`streams.features.vector.month_index`), which picks the
    dedup bucket; ``content_hash`` tells a conflicting re-send from a plain one (empty: the
    store hashes ``delta``). ``topic``/``partition``/``offset`` are the Kafka coordinates
    (``offset=-1``: none, as in the in-process backtest); an enterprise's events share one
    partition (key = enterprise id), so its last applied offset fences Kafka redelivery.
    """

    enterprise_id: str
    event_id: str
    delta: Mapping[str, int]
    name: str | None = None  # the enterprise name carried by the event, if any
    month: int = 0
    content_hash: str = ""
    topic: str = ""
    partition: int = -1
    offset: int = -1
    id_key: bytes = b""  # the event id's dedup key when the event id itself is not at hand (columns)


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """What :meth:`FeatureStore.apply_many` did: one verdict per item, and the counters after it.

    ``counters`` maps every enterprise of the batch to the value, after the write, of every
    counter its items name (counterparty summaries included; counterparty counters not), read
    in the same atomic step as the write: a cache that sets these values holds exactly what
    the store holds, whatever was applied before a failed attempt.
    """

    verdicts: list[Verdict]
    counters: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def applied(self) -> list[bool]:
        """One flag per item: True where it was applied."""
        return [v is Verdict.APPLIED for v in self.verdicts]


@dataclass(frozen=True, slots=True)
class ColumnsWrite:
    """What :meth:`FeatureStore.apply_columns` did: one verdict letter per row (:data:`VERDICT_LETTERS`) and,
    per enterprise, the value after the write of every counter the batch named (as :class:`StoreWrite`)."""

    letters: np.ndarray  # uint8, one of b"arcdl" per row
    counters: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnterpriseInfo:
    """What the bank knows about an enterprise before any invoice: its name and rating."""

    enterprise_id: str
    name: str
    rating: str | None  # "A".."D" where the bank has rated it, else None


class FeatureStore(Protocol):
    """Per-enterprise feature state (the fold's counters), applied exactly once with bounded memory.

    A store keeps, per enterprise: the counters, the counterparty counters, the name, the last
    applied offset per topic partition, and a dedup window of ``(event_id hash, content hash)``
    per issue month for the newest ``window`` months (older months are dropped as the
    enterprise's newest month advances). So memory grows with enterprises x months, plus the
    invoices of the window, never with every invoice of history. See :class:`Verdict` for what
    is caught; not caught: the same ``event_id`` sent for two different enterprises (two events).
    """

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        """Apply one event without Kafka coordinates; True if applied (see :meth:`apply_many`)."""
        ...

    def apply_many(self, items: Sequence[DeltaItem]) -> StoreWrite:
        """Apply a micro-batch: per enterprise, one atomic write of its folded deltas (one round trip).

        Items are judged in order (an enterprise's items in offset order); within one batch a
        repeated ``event_id`` is judged against the first. Raises ValueError for a delta that
        :func:`streams.features.fold.check_delta` refuses, and StoreUnavailable when the store
        is down (nothing or part of the batch may have been written: apply the same items again).
        """
        ...

    def apply_columns(self, cols: InvoiceColumns, prepared: object | None = None) -> ColumnsWrite:
        """:meth:`apply_many` for valid invoices as columns (the worker's hot path): the same verdicts and
        state as one :class:`DeltaItem` per row with :func:`streams.features.fold.invoice_delta`.

        ``prepared``: what :meth:`column_preparer` computed from these columns, maybe in another process.
        """
        ...

    def column_preparer(self) -> Callable[[InvoiceColumns], object] | None:
        """A pure, picklable function of the columns that :meth:`apply_columns` would compute first (None: none),
        so a caller can run it elsewhere (the worker's decode process) and pass its result as ``prepared``."""
        ...

    def load(self, enterprise_id: str) -> EnterpriseState:
        """The current state (an empty one for an enterprise never seen); ``seen`` is always empty."""
        ...

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = False,
                  with_counterparties: bool = False) -> list[EnterpriseState]:
        """:meth:`load` for many enterprises, in order.

        Scoring needs the counters only (counterparty summaries included); the counterparty
        counters themselves are read only with ``with_counterparties=True``. ``with_seen`` is
        accepted for compatibility and ignored: stores keep no set of every event id.
        """
        ...

    def enterprise_ids(self) -> set[str]:
        """Every enterprise with at least one applied event."""
        ...

    def watermark(self) -> dt.date | None:
        """The event-time watermark: the latest issue date applied so far (None before any)."""
        ...

    def advance_watermark(self, issue_date: dt.date) -> dt.date:
        """Move the watermark to ``issue_date`` if later; returns the watermark after the call."""
        ...

    def advance_watermark_quorum(self, latest: Mapping[str, dt.date], quorum: int) -> dt.date | None:
        """Record each client's latest issue date (the max per enterprise), then move the watermark to the
        ``quorum``-th most recent of them if later (:func:`streams.eventtime.quorum_watermark`); returns it."""
        ...

    def set_watermark(self, day: dt.date) -> int:
        """The operator's correction: the watermark becomes ``day`` (back or forth), and every recorded
        latest date above it comes down to it; returns how many were lowered."""
        ...

    def latest_dates(self, n: int) -> list[tuple[str, dt.date]]:
        """The ``n`` most recent recorded client latest dates, newest first (who holds the watermark)."""
        ...

    def resume_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int] | None:
        """Per partition of ``topic``, an offset below which every event of that partition is in the store.

        A lower bound, recorded by the store itself in the same ordered log as the writes it covers, so
        it survives exactly as far as they do. After :class:`streams.errors.StoreRestarted` the worker
        reads again from these offsets (a partition missing here: from its beginning), and this
        call lets the store write again. None: the store keeps no checkpoints (it cannot lose acknowledged
        writes, or cannot tell, as on a Redis Cluster), and the consumer's positions stand.
        """
        ...

    def handled(self, topic: str, next_offsets: Mapping[int, int]) -> None:
        """Note that every message of these partitions below these offsets is handled (applied, or
        dead-lettered and published); recorded as checkpoints with the next write or :meth:`sync`."""
        ...

    def sync(self) -> None:
        """Record what :meth:`resume_offsets` will answer, and raise :class:`streams.errors.StoreRestarted` if the
        store restarted since this process last wrote (the idle worker's check); StoreUnavailable when down."""
        ...

    def invalidate(self, enterprise_ids: Iterable[str] | None = None) -> None:
        """Forget anything cached in this process for these enterprises (all when None).

        The next read comes from the store of record. A store without a cache does nothing.
        The worker calls it on every rebalance, before retrying a failed batch, and before the
        allocator rescores enterprises whose partitions other workers own.
        """
        ...


class ScoreStore(Protocol):
    """The current score of every enterprise (what the allocator reads)."""

    def put_many(self, scores: Sequence[EnterpriseScore]) -> None: ...

    def get(self, enterprise_id: str) -> EnterpriseScore | None: ...

    def all(self) -> dict[str, EnterpriseScore]: ...


class CreditLineStore(Protocol):
    """The last published credit line of every enterprise (to diff the next allocation against)."""

    def put_many(self, lines: Sequence[CreditLine]) -> None: ...

    def all(self) -> dict[str, CreditLine]: ...


class AlertStateStore(Protocol):
    """The early-warning rules' state per ``family:subject`` key (:class:`streams.alerts.WatchState`)."""

    def load_many(self, keys: Sequence[str]) -> dict[str, WatchState | None]:
        """The state of every key (None where there is none yet)."""
        ...

    def put_many(self, states: Mapping[str, WatchState]) -> None: ...


class EnterpriseRegistry(Protocol):
    """The bank's list of client enterprises: names and known ratings."""

    def get(self, enterprise_id: str) -> EnterpriseInfo | None:
        """The enterprise, or None when it is not a known client."""
        ...

    def enterprise_ids(self) -> set[str]: ...


class Publisher(Protocol[T_contra]):
    """Sends values downstream, keyed (Kafka: key = enterprise id or allocation id)."""

    def publish(self, key: str, value: T_contra) -> None: ...


class BatchPublisher(Protocol[T_contra]):
    """Sends a batch of keyed values and returns once every one is acknowledged (the live worker's outputs).

    Raises :class:`streams.errors.PublishFailed` (``retriable`` when the broker may come back)
    if not all were acknowledged; some may have been delivered, so a retry can repeat them.
    """

    async def publish_many(self, items: Sequence[tuple[str, T_contra]]) -> None: ...


ScorePublisher = Publisher[EnterpriseScore]
CreditLinePublisher = Publisher[CreditLine]
AllocationPublisher = Publisher[AllocationSummary]
DeadLetterPublisher = Publisher[DeadLetter]
AlertPublisher = Publisher[RiskAlert]


def publish_all(publisher: Publisher[T_contra], items: Iterable[tuple[str, T_contra]]) -> int:
    """Publish every ``(key, value)`` pair; returns how many."""
    n = 0
    for key, value in items:
        publisher.publish(key, value)
        n += 1
    return n
