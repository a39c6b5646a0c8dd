"""Scenario overlays: industry shocks applied during a backtest (the contest's third question).

A scenario file is JSON, validated at the edge::

    {"name": "manufacturing slump",
     "shocks": [{"industries": ["manufacturing"], "from": "2019-01-01",
                 "sales_multiplier": 0.7, "default_probability_multiplier": 1.5,
                 "churn_multiplier": 1.2}]}

- ``sales_multiplier`` scales the amount, tax and total of every sales invoice
  (``direction="out"``) of the shocked enterprises issued on or after ``from``, *before*
  the fold: the features, the models and the allocator all see the lower sales.
- ``default_probability_multiplier`` multiplies the scored default probability
  (capped at 1) of the shocked enterprises at every as-of date on or after ``from``,
  before the allocation.
- ``churn_multiplier`` multiplies the churn of the shocked enterprises' lines in the
  outcome evaluation (retention = 1 - min(1, m * churn)). The allocator's churn curves
  are per rating, not per industry, so the allocation itself does not see this shock;
  the report shows what it does to realised profit.

``industries`` are names from :data:`models.schema.INDUSTRIES` (or ``"*"`` for all);
an enterprise's industry is read from its name, as the scorer does.

Examples
--------
>>> s = parse_scenario('{"name": "s", "shocks": [{"industries": ["construction"], "from": "2019-01-01",'
...                    ' "default_probability_multiplier": 2}]}')
>>> s.shocks[0].industries, s.shocks[0].default_probability_multiplier
(('construction',), 2.0)
>>> s.pd_multiplier("construction", dt.date(2019, 6, 30)), s.pd_multiplier("construction", dt.date(2018, 6, 30))
(2.0, 1.0)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Annotated

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.schema import INDUSTRIES
from streams.events import EnterpriseScore, InvoiceEvent

_CENT = Decimal("0.01")


class _ShockSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    industries: list[str] = Field(min_length=1)
    from_date: dt.date | None = Field(default=None, alias="from")
    sales_multiplier: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    default_probability_multiplier: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    churn_multiplier: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0

    @field_validator("industries")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v != "*" and v not in INDUSTRIES]
        if unknown:
            raise ValueError(f"unknown industries {unknown}; known: {', '.join(INDUSTRIES)} or '*'")
        return value


class _ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    shocks: list[_ShockSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Shock:
    """One industry shock (see the module docstring); ``from_date=None`` means from the start."""

    industries: tuple[str, ...]
    from_date: dt.date | None = None
    sales_multiplier: float = 1.0
    default_probability_multiplier: float = 1.0
    churn_multiplier: float = 1.0

    def hits(self, industry: str, day: dt.date) -> bool:
        """Whether this shock applies to an enterprise of ``industry`` on ``day``."""
        return ("*" in self.industries or industry in self.industries) and (
            self.from_date is None or day >= self.from_date
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named set of shocks; multipliers of overlapping shocks compound."""

    name: str
    shocks: tuple[Shock, ...]
    description: str = ""

    def _product(self, attr: str, industry: str, day: dt.date) -> float:
        m = 1.0
        for shock in self.shocks:
            if shock.hits(industry, day):
                m *= getattr(shock, attr)
        return m

    def sales_multiplier(self, industry: str, day: dt.date) -> float:
        return self._product("sales_multiplier", industry, day)

    def pd_multiplier(self, industry: str, day: dt.date) -> float:
        return self._product("default_probability_multiplier", industry, day)

    def churn_multiplier(self, industry: str, day: dt.date) -> float:
        return self._product("churn_multiplier", industry, day)

    @property
    def changes_events(self) -> bool:
        """Whether the scenario changes the invoices (then the features must be replayed again)."""
        return any(s.sales_multiplier != 1.0 for s in self.shocks)


def parse_scenario(text: str) -> Scenario:
    """A :class:`Scenario` from JSON text (``ValueError`` with the first problem if invalid)."""
    try:
        spec = _ScenarioSpec.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"invalid scenario at {where or 'top level'}: {first['msg']}") from None
    shocks = tuple(
        Shock(tuple(s.industries), s.from_date, s.sales_multiplier, s.default_probability_multiplier,
              s.churn_multiplier)
        for s in spec.shocks
    )
    return Scenario(spec.name, shocks, spec.description)


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read scenario file {path}: {exc.strerror}") from None
    return parse_scenario(text)


def _scale(value: Decimal, m: float) -> Decimal:
    return (value * Decimal(repr(m))).quantize(_CENT, rounding=ROUND_HALF_EVEN)


def event_transform(scenario: Scenario, industry_of: Mapping[str, str]) -> Callable[[InvoiceEvent], InvoiceEvent]:
    """The scenario's change to each invoice: sales invoices of shocked industries scaled.

    Amount and tax are scaled and rounded to the fen, and the total is their sum, so the
    shocked event still passes the wire schema's consistency check.

    Examples
    --------
    >>> ev = InvoiceEvent(event_id="e", enterprise_id="E1", direction="out", invoice_no="1",
    ...     issue_date=dt.date(2019, 3, 1), counterparty_id="B1", amount="100.00", tax="13.00",
    ...     total="113.00", status="valid", produced_at=dt.datetime(2019, 3, 1, tzinfo=dt.UTC))
    >>> s = Scenario("x", (Shock(("manufacturing",), dt.date(2019, 1, 1), sales_multiplier=0.5),))
    >>> out = event_transform(s, {"E1": "manufacturing"})(ev)
    >>> str(out.amount), str(out.tax), str(out.total)
    ('50.00', '6.50', '56.50')
    >>> event_transform(s, {"E1": "construction"})(ev) is ev
    True
    """

    def transform(event: InvoiceEvent) -> InvoiceEvent:
        if event.direction != "out":
            return event
        m = scenario.sales_multiplier(industry_of.get(event.enterprise_id, "unknown"), event.issue_date)
        if m == 1.0:
            return event
        amount, tax = _scale(event.amount, m), _scale(event.tax, m)
        return event.model_copy(update={"amount": amount, "tax": tax, "total": amount + tax})

    return transform


def score_transform(scenario: Scenario) -> Callable[[list[EnterpriseScore], dt.date], list[EnterpriseScore]]:
    """The scenario's change to a snapshot's scores: default probabilities multiplied (capped at 1).

    Examples
    --------
    >>> sc = EnterpriseScore(enterprise_id="E1", as_of=dt.date(2019, 6, 30), rating="B", rating_known=True,
    ...     rating_probabilities={"A": 0, "B": 1, "C": 0, "D": 0}, default_probability=0.3, segment="s",
    ...     industry="construction", legal_form="other", n_invoices=3, bundle_version="v",
    ...     scored_at=dt.datetime(2019, 6, 30, tzinfo=dt.UTC))
    >>> s = Scenario("x", (Shock(("construction",), default_probability_multiplier=5),))
    >>> score_transform(s)([sc], dt.date(2019, 6, 30))[0].default_probability
    1.0
    """

    def transform(scores: list[EnterpriseScore], as_of: dt.date) -> list[EnterpriseScore]:
        out = []
        for score in scores:
            m = scenario.pd_multiplier(score.industry, as_of)
            if m != 1.0:
                score = score.model_copy(update={"default_probability": min(1.0, score.default_probability * m)})
            out.append(score)
        return out

    return transform


def shock_table(table: pa.Table, scenario: Scenario, industry_of: Mapping[str, str]) -> pa.Table:
    """The scenario's change to a columnar invoice table (the event cache's columns), row by row as
    :func:`event_transform` changes an event: shocked sales invoices get amount and tax scaled and
    rounded to the fen, and the total is their sum.

    Examples
    --------
    >>> t = pa.table({"enterprise_id": ["E1", "E2"], "direction": ["out", "out"],
    ...     "issue_date": [dt.date(2019, 3, 1)] * 2, "amount": ["100.00", "100.00"], "tax": ["13.00", "13.00"],
    ...     "total": ["113.00", "113.00"]})
    >>> s = Scenario("x", (Shock(("manufacturing",), dt.date(2019, 1, 1), sales_multiplier=0.5),))
    >>> shock_table(t, s, {"E1": "manufacturing"}).column("total").to_pylist()
    ['56.50', '113.00']
    """
    if "tax" not in table.column_names:
        raise ValueError("a scenario that scales sales needs the invoices' tax column")
    cols = {name: table.column(name).to_pylist() for name in ("enterprise_id", "direction", "issue_date",
                                                                 "amount", "tax", "total")}
    amount, tax, total = list(cols["amount"]), list(cols["tax"]), list(cols["total"])
    for i, (eid, direction, day) in enumerate(zip(cols["enterprise_id"], cols["direction"], cols["issue_date"],
                                                  strict=True)):
        if direction != "out":
            continue
        m = scenario.sales_multiplier(industry_of.get(eid, "unknown"), day)
        if m == 1.0:
            continue
        a, t = _scale(Decimal(str(amount[i])), m), _scale(Decimal(str(tax[i])), m)
        amount[i], tax[i], total[i] = str(a), str(t), str(a + t)
    out = table
    for name, values in (("amount", amount), ("tax", tax), ("total", total)):
        out = out.set_column(out.column_names.index(name), name, pa.array(values, pa.string()))
    return out
