"""Early-warning rules, pure: state is a value, an evaluation is a fold that returns alerts.

Each rule fires **once** for a subject (an enterprise, a drift signal, a producer) and then
stays quiet until it *clears*; only after clearing can it fire again. That is what keeps a
worker that rescores an enterprise on every micro-batch from sending an alert storm. The
live worker (:mod:`streams.app`) and the backtest (:mod:`streams.backtest.run`) call the
same functions; only where the state is kept differs (Redis there, a dict here).

Rules and when they clear:

==================  =========================================================  =====================================
rule                fires when                                                 clears when
==================  =========================================================  =====================================
rating_downgrade    the rating is worse than the previous score's              the rating is back to the pre-downgrade one
pd_threshold        the default probability reaches ``pd_threshold``           it falls below ``pd_threshold``
pd_jump             it rose by ``pd_step`` or more since the previous score    it is back below the pre-jump value + step/2
line_cut            a credit line's amount is lowered (still above 0)          the amount rises again
line_closed         a line goes from above 0 to 0                              the enterprise gets a line again
sales_drop          last complete month's sales fell by ``sales_drop`` or      a later complete month is no such fall
                    more from the month before (which had ``sales_min_yuan``)
drift               River's detector fired on a score signal                   the event-time month moves on
dlq_burst           ``dlq_burst`` dead letters from one producer (message key)  a window of ``dlq_window_s`` below that
                    within one window of ``dlq_window_s`` seconds
==================  =========================================================  =====================================

Examples
--------
>>> import datetime as dt
>>> rules = AlertRules(pd_threshold=0.5, pd_step=0.2)
>>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
>>> s1 = ScoreView("E1", dt.date(2019, 11, 30), "B", 0.10, "score:E1:1")
>>> s2 = ScoreView("E1", dt.date(2019, 12, 31), "D", 0.70, "score:E1:2")
>>> st, fired = evaluate_score(None, s1, rules=rules, now=now)
>>> fired
[]
>>> st, fired = evaluate_score(st, s2, rules=rules, now=now)
>>> [a.rule for a in fired]
['rating_downgrade', 'pd_threshold', 'pd_jump']
>>> st, again = evaluate_score(st, s2, rules=rules, now=now)   # still high: no storm
>>> again
[]
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from streams.events import CreditLine, DeadLetter, EnterpriseScore, RiskAlert
from streams.features.vector import month_index, monthly_yuan

if TYPE_CHECKING:
    from streams.drift import DriftAlarm
    from streams.ports import AlertStateStore, FeatureStore

AlertRule = Literal["rating_downgrade", "pd_threshold", "pd_jump", "line_cut", "line_closed", "sales_drop", "drift",
                    "dlq_burst"]
RULES: Final[tuple[str, ...]] = ("rating_downgrade", "pd_threshold", "pd_jump", "line_cut", "line_closed",
                                 "sales_drop", "drift", "dlq_burst")
_RATING_ORDER: Final = {"A": 0, "B": 1, "C": 2, "D": 3}
PORTFOLIO: Final = "portfolio"


@dataclass(frozen=True, slots=True)
class AlertRules:
    """The configured thresholds (``RISKMON_ALERTS__...``, see :class:`streams.settings.AlertSettings`)."""

    pd_threshold: float = 0.5
    pd_step: float = 0.15
    sales_drop: float = 0.5
    sales_min_yuan: float = 10_000.0
    dlq_burst: int = 20
    dlq_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ScoreView:
    """What the score rules read of an :class:`~streams.events.EnterpriseScore`, and its event id."""

    enterprise_id: str
    as_of: dt.date
    rating: str
    default_probability: float
    score_id: str

    @classmethod
    def of(cls, score: EnterpriseScore) -> ScoreView:
        return cls(score.enterprise_id, score.as_of, score.rating, score.default_probability, score_event_id(score))


def score_event_id(score: EnterpriseScore) -> str:
    """The id that names one score event: enterprise, as-of date and the time it was scored.

    Examples
    --------
    >>> import datetime as dt
    >>> from types import SimpleNamespace as S
    >>> score_event_id(S(enterprise_id="E1", as_of=dt.date(2020, 1, 31),
    ...                  scored_at=dt.datetime(2020, 2, 1, 8, tzinfo=dt.UTC)))
    'E1@2020-01-31@2020-02-01T08:00:00+00:00'
    """
    return f"{score.enterprise_id}@{score.as_of.isoformat()}@{score.scored_at.isoformat()}"


def line_event_id(line: CreditLine) -> str:
    """The id that names one credit-line event: its allocation and the enterprise.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> line_event_id(S(allocation_id="alloc-1", enterprise_id="E1"))
    'alloc-1/E1'
    """
    return f"{line.allocation_id}/{line.enterprise_id}"


# --------------------------------------------------------------------------- state values


@dataclass(frozen=True, slots=True)
class WatchState:
    """One subject's rule state: which rules are open, and what they compare against.

    ``open`` maps an open rule to its reference value (the value before it fired, or the
    month it fired in). ``last`` holds the previous observation the rules compare with.
    """

    open: Mapping[str, Any] = field(default_factory=dict)
    last: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"open": dict(self.open), "last": dict(self.last)}, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> WatchState | None:
        """Decode :meth:`to_json`; None for a missing or unreadable value (the rules then start afresh)."""
        if not raw:
            return None
        try:
            doc = json.loads(raw)
            return cls(dict(doc.get("open", {})), dict(doc.get("last", {})))
        except (ValueError, TypeError, AttributeError):
            return None


def _with(state: WatchState, *, opened: Mapping[str, Any] = {}, closed: Sequence[str] = (),  # noqa: B006 - read only
          last: Mapping[str, Any] = {}) -> WatchState:  # noqa: B006
    open_ = {k: v for k, v in state.open.items() if k not in closed}
    open_.update(opened)
    return replace(state, open=open_, last={**state.last, **last})


def _alert(rule: str, subject: str, *, enterprise_id: str | None, as_of: dt.date | None, before: object, after: object,
           reasons: Sequence[str], now: dt.datetime, score_id: str | None = None, line_id: str | None = None,
           severity: Literal["info", "warning", "critical"] = "warning") -> RiskAlert:
    stamp = (as_of.isoformat() if as_of is not None else now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ"))
    return RiskAlert(
        alert_id=f"{rule}:{subject}:{stamp}", rule=rule, severity=severity, subject=subject,  # type: ignore[arg-type]
        enterprise_id=enterprise_id, as_of=as_of, value_before=_num(before), value_after=_num(after),
        label_before=None if isinstance(before, int | float) or before is None else str(before),
        label_after=None if isinstance(after, int | float) or after is None else str(after),
        reasons=list(reasons), score_event_id=score_id, line_event_id=line_id, raised_at=now)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- per-enterprise rules


def evaluate_score(state: WatchState | None, score: ScoreView, *, rules: AlertRules, now: dt.datetime,
                   reasons: Sequence[str] = ()) -> tuple[WatchState, list[RiskAlert]]:
    """Fold one new score into an enterprise's state: rating downgrade, PD threshold, PD jump.

    ``reasons`` are the score's own reasons when it carries some; they are copied into the alerts.

    Examples
    --------
    >>> import datetime as dt
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> r = AlertRules(pd_threshold=0.5)
    >>> v = lambda p, rating="B": ScoreView("E1", dt.date(2020, 1, 1), rating, p, "s")
    >>> st, a = evaluate_score(None, v(0.6), rules=r, now=now)   # first score over the threshold fires
    >>> [x.rule for x in a]
    ['pd_threshold']
    >>> st, a = evaluate_score(st, v(0.45), rules=r, now=now)    # clears
    >>> st, a = evaluate_score(st, v(0.55), rules=r, now=now)    # and may fire again
    >>> [x.rule for x in a]
    ['pd_threshold']
    """
    st = state or WatchState()
    fired: list[RiskAlert] = []
    opened: dict[str, Any] = {}
    closed: list[str] = []
    eid, p, rating = score.enterprise_id, score.default_probability, score.rating
    prev_p = st.last.get("pd")
    prev_rating = st.last.get("rating")
    common = {"enterprise_id": eid, "as_of": score.as_of, "now": now, "score_id": score.score_id}

    # rating downgrade
    if "rating_downgrade" in st.open:
        if _RATING_ORDER.get(rating, 3) <= _RATING_ORDER.get(str(st.open["rating_downgrade"]), 3):
            closed.append("rating_downgrade")
    elif prev_rating is not None and _RATING_ORDER.get(rating, 3) > _RATING_ORDER.get(prev_rating, 3):
        fired.append(_alert("rating_downgrade", eid, before=prev_rating, after=rating,
                            reasons=[f"rating_changed:{prev_rating}->{rating}", *reasons],
                            severity="critical" if rating == "D" else "warning", **common))  # type: ignore[arg-type]
        opened["rating_downgrade"] = prev_rating

    # default probability crossing the threshold
    if "pd_threshold" in st.open:
        if p < rules.pd_threshold:
            closed.append("pd_threshold")
    elif p >= rules.pd_threshold:
        fired.append(_alert("pd_threshold", eid, before=prev_p, after=p,
                            reasons=[f"default_probability>={rules.pd_threshold:g}", *reasons],
                            severity="critical", **common))  # type: ignore[arg-type]
        opened["pd_threshold"] = prev_p

    # default probability rising by a step since the previous score
    if "pd_jump" in st.open:
        if p < float(st.open["pd_jump"]) + rules.pd_step / 2:
            closed.append("pd_jump")
    elif prev_p is not None and p - float(prev_p) >= rules.pd_step:
        fired.append(_alert("pd_jump", eid, before=prev_p, after=p,
                            reasons=[f"default_probability_rose_by>={rules.pd_step:g}", *reasons],
                            **common))  # type: ignore[arg-type]
        opened["pd_jump"] = float(prev_p)

    return _with(st, opened=opened, closed=closed, last={"pd": p, "rating": rating}), fired


def evaluate_line(state: WatchState | None, line: CreditLine, *, now: dt.datetime) -> tuple[WatchState, list[RiskAlert]]:
    """Fold one published credit line: a cut (amount lowered, still above 0) or a closure (down to 0).

    The line event carries its previous amount, so the rule needs no memory beyond the open set.

    Examples
    --------
    >>> import datetime as dt
    >>> from streams.events import CreditLine
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> def line(amount, prev):
    ...     return CreditLine(enterprise_id="E1", allocation_id="a", as_of=dt.date(2020, 1, 1), amount_yuan=amount,
    ...         rate=0.05, expected_profit_yuan=0, default_probability=0.1, rating="B", segment="s", reasons=[],
    ...         previous_amount_yuan=prev, change_reasons=["amount_decreased"], bundle_version="v", solver="exact",
    ...         decided_at=now)
    >>> st, a = evaluate_line(None, line(500_000, 800_000), now=now); [x.rule for x in a]
    ['line_cut']
    >>> st, a = evaluate_line(st, line(300_000, 500_000), now=now); a   # still cut: no second alert
    []
    >>> st, a = evaluate_line(st, line(0, 300_000), now=now); [x.rule for x in a]
    ['line_closed']
    """
    st = state or WatchState()
    fired: list[RiskAlert] = []
    opened: dict[str, Any] = {}
    closed: list[str] = []
    eid, amount, prev = line.enterprise_id, line.amount_yuan, line.previous_amount_yuan
    common = {"enterprise_id": eid, "as_of": line.as_of, "now": now, "line_id": line_event_id(line)}
    why = [*line.change_reasons, *line.reasons]
    if prev is not None and amount > prev + 0.005:
        closed.append("line_cut")
    if amount > 0:
        closed.append("line_closed")
    if prev is not None and prev > 0 and amount <= 0 and "line_closed" not in st.open:
        fired.append(_alert("line_closed", eid, before=prev, after=amount, reasons=why, severity="critical",
                            **common))  # type: ignore[arg-type]
        opened["line_closed"] = prev
    elif prev is not None and 0 < amount < prev - 0.005 and "line_cut" not in st.open:
        fired.append(_alert("line_cut", eid, before=prev, after=amount, reasons=why, **common))  # type: ignore[arg-type]
        opened["line_cut"] = prev
    return _with(st, opened=opened, closed=closed, last={"amount": amount}), fired


def evaluate_sales(state: WatchState | None, enterprise_id: str, sales: Mapping[int, float], as_of: dt.date, *,
                   rules: AlertRules, now: dt.datetime, score_id: str | None = None) -> tuple[WatchState, list[RiskAlert]]:
    """Compare the last complete month before ``as_of`` with the month before it.

    Only complete months count (the month of ``as_of`` is still running), so the rule is
    point-in-time: it reads nothing dated after ``as_of``.

    Examples
    --------
    >>> import datetime as dt
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> r = AlertRules(sales_drop=0.5, sales_min_yuan=100)
    >>> m = month_index(dt.date(2019, 12, 1))
    >>> st, a = evaluate_sales(None, "E1", {m - 1: 1000.0, m: 300.0}, dt.date(2020, 1, 15), rules=r, now=now)
    >>> [(x.rule, x.value_before, x.value_after) for x in a]
    [('sales_drop', 1000.0, 300.0)]
    >>> st, a = evaluate_sales(st, "E1", {m - 1: 1000.0, m: 300.0}, dt.date(2020, 1, 20), rules=r, now=now); a
    []
    """
    st = state or WatchState()
    last_month = month_index(as_of) - 1
    if st.last.get("month") == last_month:
        return st, []
    before, after = sales.get(last_month - 1, 0.0), sales.get(last_month, 0.0)
    dropped = before >= rules.sales_min_yuan and after <= before * (1.0 - rules.sales_drop)
    fired: list[RiskAlert] = []
    opened: dict[str, Any] = {}
    closed: list[str] = []
    if "sales_drop" in st.open and not dropped:
        closed.append("sales_drop")
    elif dropped and "sales_drop" not in st.open:
        y, mo = divmod(last_month, 12)
        fired.append(_alert("sales_drop", enterprise_id, enterprise_id=enterprise_id, as_of=as_of, before=before,
                            after=after, now=now, score_id=score_id,
                            reasons=[f"sales_{y:04d}-{mo + 1:02d}_fell_{1 - after / before:.0%}_month_on_month"]))
        opened["sales_drop"] = last_month
    return _with(st, opened=opened, closed=closed, last={"month": last_month}), fired


# --------------------------------------------------------------------------- portfolio-wide rules


def evaluate_drift(state: WatchState | None, signal: str, alarm_t: object, value: float, *,
                   now: dt.datetime) -> tuple[WatchState, list[RiskAlert]]:
    """A River drift alarm on ``signal`` at event time ``alarm_t`` (a date): one alert per signal and month.

    Examples
    --------
    >>> import datetime as dt
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> st, a = evaluate_drift(None, "default_probability", dt.date(2019, 5, 3), 0.4, now=now); len(a)
    1
    >>> st, a = evaluate_drift(st, "default_probability", dt.date(2019, 5, 20), 0.5, now=now); len(a)
    0
    >>> st, a = evaluate_drift(st, "default_probability", dt.date(2019, 6, 2), 0.5, now=now); len(a)
    1
    """
    st = state or WatchState()
    month = month_index(alarm_t) if isinstance(alarm_t, dt.date) else None
    if "drift" in st.open and st.open["drift"] == month:
        return st, []
    as_of = alarm_t if isinstance(alarm_t, dt.date) else None
    alert = _alert("drift", f"{PORTFOLIO}:{signal}", enterprise_id=None, as_of=as_of, before=None, after=value,
                   reasons=[f"river_adwin_drift_on:{signal}"], now=now)
    return _with(st, opened={"drift": month}), [alert]


def evaluate_dead_letters(state: WatchState | None, producer: str, dead: Sequence[DeadLetter], *,
                          rules: AlertRules, now: dt.datetime) -> tuple[WatchState, list[RiskAlert]]:
    """Count one producer's dead letters per window of ``dlq_window_s`` (by their ``failed_at``).

    Examples
    --------
    >>> import datetime as dt
    >>> from streams.pipeline import ingest, Source
    >>> now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    >>> bad = [ingest(b"{", Source("invoices", 0, i, "E9"), now) for i in range(3)]
    >>> st, a = evaluate_dead_letters(None, "E9", bad, rules=AlertRules(dlq_burst=3), now=now)
    >>> [(x.rule, x.subject, x.value_after, x.reasons) for x in a]
    [('dlq_burst', 'producer:E9', 3.0, ['dead_letters>=3_in_60s', 'json_invalid'])]
    """
    st = state or WatchState()
    window = rules.dlq_window_s
    fired: list[RiskAlert] = []
    bucket, count = st.last.get("bucket"), int(st.last.get("count", 0))
    reasons: dict[str, None] = dict.fromkeys(st.last.get("reasons", []))
    for d in dead:
        b = int(d.failed_at.timestamp() // window)
        if b != bucket:
            # the previous window is over: a quiet one (or a gap of empty windows) clears the alert
            if "dlq_burst" in st.open and (bucket is None or b > int(bucket) + 1 or count < rules.dlq_burst):
                st = _with(st, closed=["dlq_burst"])
            bucket, count, reasons = b, 0, {}
        count += 1
        reasons[d.reason] = None
        if count >= rules.dlq_burst and "dlq_burst" not in st.open:
            fired.append(_alert("dlq_burst", f"producer:{producer}", enterprise_id=None, as_of=None, before=None,
                                after=count, now=now,
                                reasons=[f"dead_letters>={rules.dlq_burst}_in_{window:g}s", *sorted(reasons)]))
            st = _with(st, opened={"dlq_burst": b})
    return _with(st, last={"bucket": bucket, "count": count, "reasons": sorted(reasons)[:10]}), fired


# --------------------------------------------------------------------------- many at once


StateKey = str  # "<family>:<subject>", e.g. "score:E1", "line:E1", "sales:E1", "drift:default_probability"


def state_keys_for_scores(scores: Sequence[EnterpriseScore]) -> list[StateKey]:
    return [k for s in scores for k in (f"score:{s.enterprise_id}", f"sales:{s.enterprise_id}")]


def evaluate_scores(states: Mapping[StateKey, WatchState | None], scores: Sequence[EnterpriseScore],
                    sales: Mapping[str, Mapping[int, float]], *, rules: AlertRules,
                    now: dt.datetime) -> tuple[dict[StateKey, WatchState], list[RiskAlert]]:
    """:func:`evaluate_score` and :func:`evaluate_sales` over a batch of scores, in order.

    ``sales`` maps an enterprise to its monthly sales (missing: the sales rule is skipped).
    Returns the states to store and the alerts to publish.
    """
    new: dict[StateKey, WatchState] = {}
    alerts: list[RiskAlert] = []
    for score in scores:
        eid = score.enterprise_id
        key = f"score:{eid}"
        view = ScoreView.of(score)
        st, fired = evaluate_score(new.get(key) or states.get(key), view, rules=rules, now=now,
                                   reasons=getattr(score, "reasons", None) or ())
        new[key] = st
        alerts += fired
        if eid in sales:
            key = f"sales:{eid}"
            st, fired = evaluate_sales(new.get(key) or states.get(key), eid, sales[eid], score.as_of, rules=rules,
                                       now=now, score_id=view.score_id)
            new[key] = st
            alerts += fired
    return new, alerts


def evaluate_lines(states: Mapping[StateKey, WatchState | None], lines: Sequence[CreditLine], *,
                   now: dt.datetime) -> tuple[dict[StateKey, WatchState], list[RiskAlert]]:
    """:func:`evaluate_line` over the published lines of one allocation."""
    new: dict[StateKey, WatchState] = {}
    alerts: list[RiskAlert] = []
    for line in lines:
        key = f"line:{line.enterprise_id}"
        st, fired = evaluate_line(new.get(key) or states.get(key), line, now=now)
        new[key] = st
        alerts += fired
    return new, alerts


def evaluate_batch(states: AlertStateStore, features: FeatureStore, scores: Sequence[EnterpriseScore],
                   dead: Sequence[DeadLetter], alarms: Sequence[DriftAlarm], *, rules: AlertRules,
                   now: dt.datetime) -> tuple[dict[StateKey, WatchState], list[RiskAlert]]:
    """Every rule over one micro-batch's outcome: reads the states (and the sales it needs), returns new states and alerts."""
    keys: list[StateKey] = [k for s in scores for k in (f"score:{s.enterprise_id}", f"sales:{s.enterprise_id}")]
    producers = sorted({d.key or "unknown" for d in dead})
    keys += [f"dlq:{p}" for p in producers] + [f"drift:{a.key}" for a in alarms]
    old = states.load_many(list(dict.fromkeys(keys)))
    # monthly sales only for enterprises whose last complete month moved on (the rule skips the others)
    need = [s.enterprise_id for s in scores
            if (st := old.get(f"sales:{s.enterprise_id}")) is None or st.last.get("month") != month_index(s.as_of) - 1]
    sales = {st.enterprise_id: monthly_yuan(st.counters, "amt_out")
             for st in (features.load_many(sorted(set(need)), with_seen=False) if need else [])}
    new, alerts = evaluate_scores(old, scores, sales, rules=rules, now=now)
    for producer in producers:
        key = f"dlq:{producer}"
        st, fired = evaluate_dead_letters(old.get(key), producer, [d for d in dead if (d.key or "unknown") == producer],
                                          rules=rules, now=now)
        new[key] = st
        alerts += fired
    for alarm in alarms:
        key = f"drift:{alarm.key}"
        st, fired = evaluate_drift(new.get(key) or old.get(key), str(alarm.key), alarm.t, alarm.value, now=now)
        new[key] = st
        alerts += fired
    return new, alerts


def count_by_rule(alerts: Sequence[RiskAlert]) -> dict[str, int]:
    """How many alerts of each rule (every rule listed, zeros included).

    Examples
    --------
    >>> count_by_rule([])["pd_jump"]
    0
    """
    out = dict.fromkeys(RULES, 0)
    for a in alerts:
        out[a.rule] = out.get(a.rule, 0) + 1
    return out
