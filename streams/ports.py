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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from streams.events import AllocationSummary, CreditLine, DeadLetter, EnterpriseScore
from streams.features.fold import EnterpriseState

T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class DeltaItem:
    """One event's contribution to one enterprise's feature state."""

    enterprise_id: str
    event_id: str
    delta: Mapping[str, int]
    name: str | None = None  # the enterprise name carried by the event, if any


@dataclass(frozen=True, slots=True)
class EnterpriseInfo:
    """What the bank knows about an enterprise before any invoice: its name and rating."""

    enterprise_id: str
    name: str
    rating: str | None  # "A".."D" where the bank has rated it, else None


class FeatureStore(Protocol):
    """Per-enterprise feature state (the fold's counters), idempotent on the event id."""

    def apply(self, enterprise_id: str, event_id: str, delta: Mapping[str, int], name: str | None = None) -> bool:
        """Add ``delta`` unless ``event_id`` was applied before; True if applied, False if a duplicate."""
        ...

    def apply_many(self, items: Sequence[DeltaItem]) -> list[bool]:
        """:meth:`apply` for a micro-batch (one round trip on a remote store), in order."""
        ...

    def load(self, enterprise_id: str) -> EnterpriseState:
        """The current state (an empty one for an enterprise never seen)."""
        ...

    def load_many(self, enterprise_ids: Sequence[str], *, with_seen: bool = True) -> list[EnterpriseState]:
        """:meth:`load` for many enterprises, in order.

        ``with_seen=False`` leaves ``seen`` empty: scoring needs only the counters, and the
        seen-sets of busy enterprises are large.
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


class ScoreStore(Protocol):
    """The current score of every enterprise (what the allocator reads)."""

    def put_many(self, scores: Sequence[EnterpriseScore]) -> None: ...

    def get(self, enterprise_id: str) -> EnterpriseScore | None: ...

    def all(self) -> dict[str, EnterpriseScore]: ...


class CreditLineStore(Protocol):
    """The last published credit line of every enterprise (to diff the next allocation against)."""

    def put_many(self, lines: Sequence[CreditLine]) -> None: ...

    def all(self) -> dict[str, CreditLine]: ...


class EnterpriseRegistry(Protocol):
    """The bank's list of client enterprises: names and known ratings."""

    def get(self, enterprise_id: str) -> EnterpriseInfo | None:
        """The enterprise, or None when it is not a known client."""
        ...

    def enterprise_ids(self) -> set[str]: ...


class Publisher(Protocol[T_contra]):
    """Sends values downstream, keyed (Kafka: key = enterprise id or allocation id)."""

    def publish(self, key: str, value: T_contra) -> None: ...


ScorePublisher = Publisher[EnterpriseScore]
CreditLinePublisher = Publisher[CreditLine]
AllocationPublisher = Publisher[AllocationSummary]
DeadLetterPublisher = Publisher[DeadLetter]


def publish_all(publisher: Publisher[T_contra], items: Iterable[tuple[str, T_contra]]) -> int:
    """Publish every ``(key, value)`` pair; returns how many."""
    n = 0
    for key, value in items:
        publisher.publish(key, value)
        n += 1
    return n
