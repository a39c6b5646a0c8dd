"""Wire schemas: what producers write to and subscribers read from Kafka.

Every event is a pydantic v2 model with ``extra="forbid"`` and a ``schema_version``;
``riskmon schema`` exports their JSON Schema. Validation happens once, here, at the
edge: the core receives only valid, normalised values.

Examples
--------
>>> ev = InvoiceEvent.model_validate_json(
...     '{"event_id": "E1-out-1-0", "enterprise_id": "E1", "direction": "out",'
...     ' "invoice_no": "0001", "issue_date": "2019-05-01", "counterparty_id": "B1",'
...     ' "amount": "100.00", "tax": "13.00", "total": "113.00", "status": " valid",'
...     ' "produced_at": "2019-05-01T08:00:00Z"}')
>>> ev.status, ev.amount_cents, ev.invoice_no
('valid', 10000, '0001')
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

EVENT_SCHEMA_VERSION: Final = 1

#: Invoice dates outside this range are rejected (the data set spans 2016-10 .. 2020-02).
MIN_ISSUE_DATE: Final = dt.date(2000, 1, 1)
#: How far into the future of its producer timestamp an invoice may be dated.
MAX_FUTURE_DAYS: Final = 1
#: |amount + tax - total| above this (in yuan) is an inconsistent invoice.
TOTAL_TOLERANCE_YUAN: Final = Decimal("0.01")
#: The largest absolute amount accepted (10^12 yuan): beyond it the value is surely corrupt.
MAX_ABS_YUAN: Final = Decimal("1e12")

# Ids travel inside Redis hash tags ``{id}``, so braces are excluded.
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^{}\s]+$")
]


def _strip_lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _two_decimals(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("must have at most 2 decimal places (yuan and fen)")
    if abs(value) > MAX_ABS_YUAN:
        raise ValueError(f"absolute value above {MAX_ABS_YUAN} yuan")
    return value


Yuan = Annotated[Decimal, AfterValidator(_two_decimals)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class InvoiceEvent(_Event):
    """An invoice issued (``out``, a sale) or received (``in``, a purchase) by an enterprise.

    ``event_id`` identifies the event: redelivering the same ``event_id`` changes
    nothing downstream. Returns and corrections are negative amounts (red-letter
    invoices); cancelled invoices have ``status="void"``. Amounts are yuan, net of tax.
    """

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    event_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
    enterprise_id: Identifier
    direction: Annotated[Literal["in", "out"], BeforeValidator(_strip_lower)]
    invoice_no: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    issue_date: dt.date
    counterparty_id: Identifier
    amount: Yuan
    tax: Yuan
    total: Yuan
    status: Annotated[Literal["valid", "void"], BeforeValidator(_strip_lower)]
    produced_at: dt.datetime
    enterprise_name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _consistent(self) -> InvoiceEvent:
        if self.produced_at.tzinfo is None:
            raise ValueError("produced_at must carry a timezone (e.g. ...Z)")
        if self.issue_date < MIN_ISSUE_DATE:
            raise ValueError(f"issue_date {self.issue_date} is before {MIN_ISSUE_DATE}")
        latest = self.produced_at.astimezone(dt.UTC).date() + dt.timedelta(days=MAX_FUTURE_DAYS)
        if self.issue_date > latest:
            raise ValueError(f"issue_date {self.issue_date} is after the producer timestamp {self.produced_at.isoformat()}")
        gap = abs(self.amount + self.tax - self.total)
        if gap > TOTAL_TOLERANCE_YUAN:
            raise ValueError(f"amount + tax != total ({self.amount} + {self.tax} != {self.total}, off by {gap})")
        return self

    def content_hash(self) -> str:
        """A hash of what the invoice says, everything but ``produced_at`` (hex, 32 characters).

        Two deliveries of one ``event_id`` with the same hash are the same invoice sent twice
        (a producer retry may stamp a new ``produced_at``); a different hash is a conflicting
        redelivery.

        Examples
        --------
        >>> a = InvoiceEvent(event_id="x", enterprise_id="E1", direction="out", invoice_no="1",
        ...     issue_date=dt.date(2019, 5, 1), counterparty_id="B1", amount="1.00", tax="0.13",
        ...     total="1.13", status="valid", produced_at=dt.datetime(2019, 5, 1, tzinfo=dt.UTC))
        >>> b = a.model_copy(update={"produced_at": dt.datetime(2019, 6, 1, tzinfo=dt.UTC)})
        >>> c = a.model_copy(update={"amount": Decimal("2.00"), "total": Decimal("2.13")})
        >>> a.content_hash() == b.content_hash(), a.content_hash() == c.content_hash()
        (True, False)
        """
        parts = (self.event_id, self.enterprise_id, self.direction, self.invoice_no, self.issue_date.isoformat(),
                 self.counterparty_id, str(self.amount_cents), str(int(self.tax * 100)), str(self.total_cents),
                 self.status, self.enterprise_name or "")  # amounts in fen: "1.0" and "1.00" are one amount
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()

    @property
    def amount_cents(self) -> int:
        """The amount net of tax in fen (integer, so sums are exact in any order)."""
        return int(self.amount * 100)

    @property
    def total_cents(self) -> int:
        """The amount including tax in fen."""
        return int(self.total * 100)


class EnterpriseScore(_Event):
    """The current risk view of one enterprise (topic ``enterprise-scores``, compacted).

    Version 2 added ``default_probability_invoice_only``, ``challenger_default_probability``
    (the per-rating default rate, scored in shadow) and ``risk_factors`` (the invoice
    factors that raised the default probability most, in words with the enterprise's own values;
    ``models.reasons``); version-1 messages still validate.
    """

    schema_version: Literal[1, 2] = 2
    enterprise_id: Identifier
    as_of: dt.date
    rating: Literal["A", "B", "C", "D"]
    rating_known: bool
    rating_probabilities: dict[Literal["A", "B", "C", "D"], float]
    default_probability: Annotated[float, Field(ge=0.0, le=1.0)]
    segment: str
    industry: str
    legal_form: str
    n_invoices: int
    bundle_version: str
    scored_at: dt.datetime
    default_probability_invoice_only: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    risk_factors: list[str] = Field(default_factory=list)
    challenger_default_probability: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class CreditLine(_Event):
    """The bank's current credit line for one enterprise (topic ``credit-lines``, compacted).

    ``amount_yuan`` is 0 (no line) or between 100 000 and 1 000 000 yuan. ``reasons`` are the
    allocator's; ``risk_factors`` (version 2) are the enterprise's own, copied from its score, so
    a declined or reduced line names the factors behind its default probability.
    """

    schema_version: Literal[1, 2] = 2
    enterprise_id: Identifier
    allocation_id: str
    as_of: dt.date
    amount_yuan: Annotated[float, Field(ge=0.0)]
    rate: Annotated[float, Field(ge=0.0, le=1.0)]
    expected_profit_yuan: float
    default_probability: Annotated[float, Field(ge=0.0, le=1.0)]
    rating: Literal["A", "B", "C", "D"]
    segment: str
    reasons: list[str]
    previous_amount_yuan: float | None = None
    previous_rate: float | None = None
    change_reasons: list[str] = Field(default_factory=list)
    bundle_version: str
    solver: str
    decided_at: dt.datetime
    risk_factors: list[str] = Field(default_factory=list)


class AllocationSummary(_Event):
    """One allocator run (topic ``credit-allocations``)."""

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    allocation_id: str
    as_of: dt.date
    budget_yuan: float
    total_amount_yuan: float
    expected_profit_yuan: float
    n_enterprises: int
    n_lines: int
    n_changed: int
    solver: str
    optimum_yuan: float | None = None
    gap: float | None = None
    runtime_s: float
    bundle_version: str
    decided_at: dt.datetime


class DeadLetter(_Event):
    """A message that could not be processed (topic ``invoices.dlq``): the reason and the raw bytes."""

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None = None
    raw_base64: str
    failed_at: dt.datetime


WIRE_SCHEMAS: Final[dict[str, type[BaseModel]]] = {
    "InvoiceEvent": InvoiceEvent,
    "EnterpriseScore": EnterpriseScore,
    "CreditLine": CreditLine,
    "AllocationSummary": AllocationSummary,
    "DeadLetter": DeadLetter,
}
