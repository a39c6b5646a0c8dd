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
import unicodedata
from decimal import Decimal
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from streams.hashing import content_key, content_text

EVENT_SCHEMA_VERSION: Final = 1

#: Invoice dates outside this range are rejected (the data set spans 2016-10 .. 2020-02).
MIN_ISSUE_DATE: Final = dt.date(2000, 1, 1)
#: How far into the future of its producer timestamp an invoice may be dated.
MAX_FUTURE_DAYS: Final = 1
#: |amount + tax - total| above this (in yuan) is an inconsistent invoice.
TOTAL_TOLERANCE_YUAN: Final = Decimal("0.01")
#: The largest absolute amount accepted (10^12 yuan): beyond it the value is surely corrupt.
MAX_ABS_YUAN: Final = Decimal("1e12")

DlqReason = Literal[
    "empty", "too_large", "json_invalid", "not_object", "duplicate_key", "unknown_field", "missing_field",
    "invalid_type", "invalid_value", "invalid_id", "invalid_amount", "amount_ceiling", "sign_mismatch",
    "total_mismatch", "naive_timestamp", "date_too_old", "issue_after_produced", "event_time_future",
    "key_mismatch", "schema_version", "conflicting_redelivery", "outside_dedup_window", "processing_failed",
    "invalid",
]
"""The closed set of dead-letter reasons: the ``reason`` of a :class:`DeadLetter` and the label of
``riskmon_dlq_total{reason}`` (the sender's free text goes to ``DeadLetter.error`` and the log, never
into a label). The table of what each means is in ``docs/faults.md``."""
DLQ_REASONS: Final[frozenset[str]] = frozenset(get_args(DlqReason))


def rule_error(reason: DlqReason, message: str) -> PydanticCustomError:
    """A validation error whose pydantic ``type`` is the DLQ reason (so the reason survives validation)."""
    return PydanticCustomError(reason, message.replace("{", "(").replace("}", ")"))


#: Characters never allowed in an id: braces (ids travel inside Redis hash tags ``{id}``).
_ID_FORBIDDEN: Final = frozenset("{}")
#: Unicode categories never allowed in an id: controls, format (zero-width) characters, surrogates,
#: private use, unassigned, and every separator (spaces, line and paragraph separators).
_ID_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def check_identifier(value: str) -> str:
    r"""An id is NFKC-normalised, printable, without whitespace, control or zero-width characters or braces.

    ``Ｅ１`` (full-width) is rejected rather than folded to ``E1``: two spellings of one
    enterprise must not become two enterprises, nor silently one.

    Examples
    --------
    >>> check_identifier("E1"), check_identifier("A00297"), check_identifier("企业7")
    ('E1', 'A00297', '企业7')
    >>> for bad in ("E1\x00", "Ｅ１", "E1\u200b", "E 1", "E{1}"):
    ...     try:
    ...         check_identifier(bad)
    ...     except ValueError as exc:
    ...         print(exc.type)  # type: ignore[attr-defined]
    invalid_id
    invalid_id
    invalid_id
    invalid_id
    invalid_id
    """
    if value.isascii():
        if value.isprintable() and " " not in value and "{" not in value and "}" not in value:
            return value
    elif unicodedata.is_normalized("NFKC", value) and not any(
            c in _ID_FORBIDDEN or unicodedata.category(c) in _ID_BAD_CATEGORIES for c in value):
        return value
    raise rule_error("invalid_id", f"id {value!r} is outside the id alphabet (NFKC, printable, no whitespace, "
                                   "control or zero-width characters, no braces)")


# Ids travel inside Redis hash tags ``{id}``, so braces are excluded (see check_identifier).
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), AfterValidator(check_identifier)
]
EventId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128), AfterValidator(check_identifier)
]
InvoiceNo = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), AfterValidator(check_identifier)
]


def _strip_lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _two_decimals(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise rule_error("invalid_amount", "must be a finite number")
    if abs(value) > MAX_ABS_YUAN:
        raise rule_error("amount_ceiling", f"absolute value above {MAX_ABS_YUAN} yuan")
    if value != value.quantize(Decimal("0.01")):
        raise rule_error("invalid_amount", "must have at most 2 decimal places (yuan and fen)")
    return value


def check_invoice(amount: Decimal, tax: Decimal, total: Decimal, issue_date: dt.date,
                  produced_at: dt.datetime) -> None:
    """The rules across fields of an invoice (one home: the pydantic model and the wire decoder call it).

    Raises a :func:`rule_error` naming the DLQ reason.
    """
    if produced_at.tzinfo is None or produced_at.utcoffset() is None:
        raise rule_error("naive_timestamp", "produced_at must carry a timezone (e.g. ...Z)")
    if issue_date < MIN_ISSUE_DATE:
        raise rule_error("date_too_old", f"issue_date {issue_date} is before {MIN_ISSUE_DATE}")
    # the local date is at most one day past the UTC date, so an issue date up to the local date always passes
    # (the common case: no timezone arithmetic)
    if issue_date > produced_at.date() and (
            issue_date > produced_at.astimezone(dt.UTC).date() + dt.timedelta(days=MAX_FUTURE_DAYS)):
        raise rule_error("issue_after_produced",
                         f"issue_date {issue_date} is after the producer timestamp {produced_at.isoformat()}")
    gap = abs(amount + tax - total)
    if gap > TOTAL_TOLERANCE_YUAN:
        raise rule_error("total_mismatch", f"amount + tax != total ({amount} + {tax} != {total}, off by {gap})")
    # a sale or a return: amount, tax and total never point in opposite directions (zero goes either way)
    if (amount > 0 and (tax < 0 or total < 0)) or (amount < 0 and (tax > 0 or total > 0)):
        raise rule_error("sign_mismatch", f"amount, tax and total disagree in sign ({amount}, {tax}, {total})")


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
    event_id: EventId
    enterprise_id: Identifier
    direction: Annotated[Literal["in", "out"], BeforeValidator(_strip_lower)]
    invoice_no: InvoiceNo
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
        check_invoice(self.amount, self.tax, self.total, self.issue_date, self.produced_at)
        return self

    def content_hash(self) -> str:
        """A hash of what the invoice says, everything but ``produced_at`` (hex, 16 characters).

        Two deliveries of one ``event_id`` with the same hash are the same invoice sent twice
        (a producer retry may stamp a new ``produced_at``); a different hash is a conflicting
        redelivery. The rule is :mod:`streams.hashing` (the worker hashes whole batches the same way).

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
        return content_key(self.content_text()).hex()

    def content_text(self) -> str:
        """The fields the content hash reads (:func:`streams.hashing.content_text`; amounts in fen, so
        ``"1.0"`` and ``"1.00"`` are one amount)."""
        return content_text((self.event_id, self.enterprise_id, self.direction, self.invoice_no,
                             self.issue_date.isoformat(), self.counterparty_id, str(self.amount_cents),
                             str(int(self.tax * 100)), str(self.total_cents), self.status, self.enterprise_name or ""))

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


DEAD_LETTER_SCHEMA_VERSION: Final = 2


class DeadLetter(_Event):
    """A message that could not be processed (topic ``invoices.dlq``): the reason and the raw bytes.

    ``reason`` is one of the closed set :data:`DlqReason`; ``error`` is the free text. The raw
    bytes are kept whole when the record fits under the broker's limit; otherwise ``raw_base64``
    holds their first bytes, ``raw_truncated`` is true, and ``raw_length`` and ``raw_sha256``
    still describe the whole message (schema version 2 added those three fields).
    """

    schema_version: Literal[2] = DEAD_LETTER_SCHEMA_VERSION
    reason: DlqReason
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None = None
    raw_base64: str
    raw_length: int = 0
    raw_sha256: str = ""
    raw_truncated: bool = False
    failed_at: dt.datetime


_TYPE_REASONS: Final[dict[str, DlqReason]] = {
    "json_invalid": "json_invalid", "json_type": "not_object", "model_type": "not_object",
    "model_attributes_type": "not_object", "dict_type": "not_object", "extra_forbidden": "unknown_field",
    "missing": "missing_field", "literal_error": "invalid_value", "enum": "invalid_value",
    "string_too_short": "invalid_value", "string_too_long": "invalid_value", "too_long": "invalid_value",
    "timezone_aware": "naive_timestamp", "finite_number": "invalid_amount",
    "decimal_max_places": "invalid_amount",
}


def reason_of(error: ValidationError) -> DlqReason:
    """The closed-set DLQ reason of a pydantic validation error (its first error decides).

    Examples
    --------
    >>> try:
    ...     InvoiceEvent.model_validate_json(b'{"event_id": "x"}')
    ... except ValidationError as exc:
    ...     reason_of(exc)
    'missing_field'
    """
    first = error.errors()[0]
    kind = str(first.get("type", ""))
    if kind in DLQ_REASONS:  # raised by a rule_error
        return kind  # type: ignore[return-value]
    if first.get("loc") == ("schema_version",) and kind != "missing":
        return "schema_version"
    if kind in _TYPE_REASONS:
        if _TYPE_REASONS[kind] == "not_object" and first.get("loc"):
            return "invalid_type"  # a nested value of the wrong kind, not the message itself
        return _TYPE_REASONS[kind]
    if kind.endswith(("_type", "_parsing")) or kind.startswith(("decimal_", "date_", "datetime_")):
        return "invalid_type"
    return "invalid_value" if first.get("loc") else "invalid"


def error_detail(error: ValidationError) -> str:
    """A one-line description of a validation error: the field, the check and the message.

    Examples
    --------
    >>> try:
    ...     InvoiceEvent.model_validate_json(b'{"event_id": "x"}')
    ... except ValidationError as exc:
    ...     error_detail(exc)
    'enterprise_id: missing: Field required'
    """
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first.get("loc", ())) or "event"
    return f"{loc}: {first['type']}: {first['msg']}".replace("\n", " ")


class RiskAlert(_Event):
    """An early warning (topic ``risk-alerts``): one rule fired for one subject.

    ``subject`` is the enterprise id for the per-enterprise rules, ``portfolio:<signal>`` for a
    drift alarm and ``producer:<key>`` for a burst of dead letters. A rule fires once per
    subject and stays quiet until it clears (:mod:`streams.alerts`). ``value_before`` /
    ``value_after`` carry numbers (default probability, yuan, counts), ``label_before`` /
    ``label_after`` ratings. ``score_event_id`` (``enterprise@as_of@scored_at``) and
    ``line_event_id`` (``allocation_id/enterprise``) point back at the events that fired it.
    """

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    alert_id: str
    rule: Literal["rating_downgrade", "pd_threshold", "pd_jump", "line_cut", "line_closed", "sales_drop", "drift",
                  "dlq_burst"]
    severity: Literal["info", "warning", "critical"]
    subject: str
    enterprise_id: str | None = None
    as_of: dt.date | None = None
    value_before: float | None = None
    value_after: float | None = None
    label_before: str | None = None
    label_after: str | None = None
    reasons: list[str] = Field(default_factory=list)
    score_event_id: str | None = None
    line_event_id: str | None = None
    raised_at: dt.datetime


WIRE_SCHEMAS: Final[dict[str, type[BaseModel]]] = {
    "InvoiceEvent": InvoiceEvent,
    "EnterpriseScore": EnterpriseScore,
    "CreditLine": CreditLine,
    "AllocationSummary": AllocationSummary,
    "DeadLetter": DeadLetter,
    "RiskAlert": RiskAlert,
}
