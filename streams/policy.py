"""The edge's deployment policy: what a valid event must also satisfy here, and what a dead letter looks like.

The schema (:mod:`streams.events`) says what an invoice *is*; this policy says what this
deployment accepts, from the settings (``RISKMON_INGEST__*``): the Kafka key must be the
``enterprise_id``, amounts stay under a ceiling, timestamps stay within the clock skew
(:func:`streams.eventtime.check_event_time`). :func:`dead_letter` builds DLQ records that
always fit under the broker's limit.

Examples
--------
>>> import datetime as dt
>>> now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
>>> dl = dead_letter("empty", "empty message", b"x" * 10_000, "invoices", 0, 7, None, now, max_bytes=4096)
>>> dl.raw_truncated, dl.raw_length, len(dl.model_dump_json()) <= 4096
(True, 10000, True)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from streams.events import DeadLetter, DlqReason, InvoiceEvent
from streams.eventtime import check_event_time

if TYPE_CHECKING:
    from streams.settings import IngestSettings

#: Longest free-text error and Kafka key kept in a DeadLetter (the full raw bytes keep the rest).
MAX_ERROR_CHARS: Final = 1000
MAX_KEY_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    """The settings of ``RISKMON_INGEST__*`` as the pure ingest step uses them."""

    max_clock_skew: dt.timedelta = dt.timedelta(seconds=300)
    max_amount_yuan: Decimal = Decimal(10) ** 9
    require_key_match: bool = True
    max_dead_letter_bytes: int = 1024 * 1024 - 16 * 1024
    watermark_quorum: int = 3
    fast_decode: bool = True

    @classmethod
    def from_settings(cls, s: IngestSettings) -> IngestPolicy:
        return cls(max_clock_skew=dt.timedelta(seconds=s.max_clock_skew_s),
                   max_amount_yuan=Decimal(str(s.max_amount_yuan)), require_key_match=s.require_key_match,
                   max_dead_letter_bytes=s.max_dead_letter_bytes, watermark_quorum=s.watermark_quorum,
                   fast_decode=s.fast_decode)


DEFAULT_POLICY: Final = IngestPolicy()


def check_policy(event: InvoiceEvent, key: str | None, record_ms: int | None, now: dt.datetime,
                 policy: IngestPolicy) -> tuple[DlqReason, str] | None:
    """None when ``event`` passes this deployment's rules, else the DLQ reason and why.

    ``key`` is the Kafka key (None: not read from Kafka, no key check).
    """
    if policy.require_key_match and key is not None and key != event.enterprise_id:
        return "key_mismatch", f"Kafka key {key[:MAX_KEY_CHARS]!r} is not the enterprise_id {event.enterprise_id!r}"
    ceiling = policy.max_amount_yuan
    if abs(event.amount) > ceiling or abs(event.tax) > ceiling or abs(event.total) > ceiling:
        return "amount_ceiling", (f"amount {event.amount}, tax {event.tax} or total {event.total} is above the "
                                  f"ceiling of {ceiling} yuan (RISKMON_INGEST__MAX_AMOUNT_YUAN)")
    return check_event_time(event.produced_at, record_ms, now, policy.max_clock_skew)


def dead_letter(reason: DlqReason, error: str, raw: bytes, topic: str, partition: int, offset: int,
                key: str | None, now: dt.datetime, *, max_bytes: int = DEFAULT_POLICY.max_dead_letter_bytes,
                ) -> DeadLetter:
    """A DeadLetter whose JSON is at most ``max_bytes``: the raw bytes whole if they fit, else their head.

    ``raw_length`` and ``raw_sha256`` always describe the whole message, so the original can be
    matched with its source offset even when truncated.
    """
    base = DeadLetter(
        reason=reason, error=error[:MAX_ERROR_CHARS], source_topic=topic, source_partition=partition,
        source_offset=offset, key=key[:MAX_KEY_CHARS] if key is not None else None, raw_base64="",
        raw_length=len(raw), raw_sha256=hashlib.sha256(raw).hexdigest(), raw_truncated=False, failed_at=now)
    # the JSON of the empty-raw record plus the base64 text (plain ASCII, no escaping) plus room for the flag
    room = max_bytes - len(base.model_dump_json().encode()) - 8
    if 4 * ((len(raw) + 2) // 3) <= room:
        return base.model_copy(update={"raw_base64": base64.b64encode(raw).decode("ascii")})
    keep = max(0, room // 4 * 3)
    return base.model_copy(update={"raw_base64": base64.b64encode(raw[:keep]).decode("ascii"), "raw_truncated": True})
