"""A whole backtest: replay, allocate at each as-of date, evaluate against two baselines and outcomes.

Pure orchestration over values: events, a registry, a scorer and an allocate function
come in; a :class:`BacktestResult` comes out (the report module renders it). With a
scenario, the base run and the shocked run are both computed and compared.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from models.schema import NUMERIC_FEATURES
from models.scoring import Scorer
from streams.backtest.engine import (
    REASONS_MODES,
    DateDecision,
    ReasonsMode,
    ReplayResult,
    Snapshot,
    allocate_snapshots,
    explain_decisions,
    explainer,
    replay,
    sales_by_month,
)
from streams.backtest.outcomes import (
    DEFAULT_FLAT_RATE,
    ChurnFn,
    Discrimination,
    LineView,
    Outcome,
    Realised,
    first_flag_dates,
    flat_allocation,
    log_loss,
    realised_profit,
    roc_ks,
)
from streams.backtest.scenarios import Scenario, event_transform, score_transform
from streams.alerts import AlertRules
from streams.backtest.alerts import replay_alerts
from streams.drift import DriftAlarm, DriftMonitor, psi_table, signed_log
from streams.events import EnterpriseScore, InvoiceEvent, RiskAlert
from streams.features.vector import month_index
from streams.pipeline import Allocate, AllocationDecision
from streams.ports import EnterpriseRegistry, FeatureStore


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    """What a backtest decides with (and how it is judged)."""

    budget_yuan: float
    solver: str = "exact"
    seed: int = 0
    lgd: float = 1.0
    flat_rate: float = DEFAULT_FLAT_RATE
    flag_threshold: float = 0.5
    chunk: int = 5_000


@dataclass(frozen=True, slots=True)
class DateResult:
    """One as-of date: riskmon's decision, both baselines, realised profits and discrimination."""

    as_of: dt.date
    decision: DateDecision
    rules: AllocationDecision
    flat: tuple[LineView, ...]
    realised: Realised
    realised_rules: Realised
    realised_flat: Realised
    discrimination: Discrimination
    discrimination_blind: Discrimination
    # the shadow challenger (per-rating default rate) on the same labeled enterprises, and both log losses
    discrimination_challenger: Discrimination | None = None
    log_loss: float = float("nan")
    log_loss_challenger: float = float("nan")

    @property
    def total_lent_yuan(self) -> float:
        return float(self.decision.summary.total_amount_yuan)

    def row(self) -> dict[str, object]:
        """The per-date figures of ``summary.json`` / ``summary.csv``."""
        s = self.decision.summary
        return {
            "as_of": self.as_of.isoformat(),
            "n_enterprises": s.n_enterprises,
            "n_lines": s.n_lines,
            "total_lent": s.total_amount_yuan,
            "expected_profit": s.expected_profit_yuan,
            "realised_profit": self.realised.profit_yuan,
            "realised_profit_rules": self.realised_rules.profit_yuan,
            "realised_profit_flat": self.realised_flat.profit_yuan,
            "total_lent_rules": self.rules.total_amount_yuan,
            "total_lent_flat": float(sum(line.amount_yuan for line in self.flat)),
            "lent_labeled": self.realised.lent_labeled_yuan,
            "lent_labeled_rules": self.realised_rules.lent_labeled_yuan,
            "lent_labeled_flat": self.realised_flat.lent_labeled_yuan,
            "lines_to_defaulters": self.realised.n_lines_defaulted,
            "lines_to_defaulters_rules": self.realised_rules.n_lines_defaulted,
            "lines_to_defaulters_flat": self.realised_flat.n_lines_defaulted,
            "auc": _none_if_nan(self.discrimination.auc),
            "ks": _none_if_nan(self.discrimination.ks),
            "auc_blind": _none_if_nan(self.discrimination_blind.auc),
            "ks_blind": _none_if_nan(self.discrimination_blind.ks),
            "auc_challenger": _none_if_nan(self.discrimination_challenger.auc) if self.discrimination_challenger else None,
            "log_loss": _none_if_nan(self.log_loss),
            "log_loss_challenger": _none_if_nan(self.log_loss_challenger),
            "n_labeled_scored": self.discrimination.n,
        }


def _none_if_nan(x: float) -> float | None:
    return None if x != x else x


@dataclass(frozen=True, slots=True)
class DriftReport:
    """PSI per feature between consecutive snapshots, and detector alarms on monthly sales."""

    psi: Mapping[tuple[dt.date, dt.date], Mapping[str, float]]
    alarms: tuple[DriftAlarm, ...]
    total_sales: Mapping[int, float]  # month index -> total valid sales of all enterprises (yuan)


class ReplayLike(Protocol):
    """What a run needs from an engine: snapshots, event counts, and the monthly sales for drift."""

    snapshots: list[Snapshot]

    @property
    def n_events(self) -> int: ...

    @property
    def n_duplicates(self) -> int: ...

    def monthly_sales(self, last: dt.date) -> dict[str, dict[int, float]]: ...


class Replayer(Protocol):
    """An engine: the snapshots of one run (``shocked``: with the scenario's event changes)."""

    def __call__(self, *, shocked: bool, score_transform: Callable[[list[EnterpriseScore], dt.date],
                 list[EnterpriseScore]] | None, blind_ids: Sequence[str], reasons: bool) -> ReplayLike: ...


@dataclass(slots=True)
class RunResult:
    """One run (base or scenario): replay, decisions and their evaluation."""

    replay: ReplayLike
    dates: list[DateResult]


@dataclass(slots=True)
class BacktestResult:
    """A base run, optionally a scenario run, drift and early-warning facts."""

    config: BacktestConfig
    as_of_dates: tuple[dt.date, ...]
    base: RunResult
    drift: DriftReport
    first_flags: Mapping[str, dt.date | None]
    first_flags_blind: Mapping[str, dt.date | None]
    outcomes: Mapping[str, Outcome]
    scenario: Scenario | None = None
    shocked: RunResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    churn: ChurnFn | None = None
    alerts: tuple[RiskAlert, ...] = ()  # the worker's early-warning rules over the base run (streams.backtest.alerts)


def lines_of(decision: DateDecision) -> list[LineView]:
    """The credit lines of a decision, as the evaluation sees them."""
    return [LineView(e, line.amount_yuan, line.rate, line.rating) for e, line in sorted(decision.lines.items())]


def evaluate_decisions(
    decisions: Sequence[DateDecision],
    allocate: Allocate,
    registry: EnterpriseRegistry,
    outcomes: Mapping[str, Outcome],
    churn: ChurnFn,
    config: BacktestConfig,
    *,
    churn_multiplier: Callable[[str, dt.date], float] | None = None,
) -> list[DateResult]:
    """Baselines and realised profits for each decision (same scores, same budget, same registry)."""
    out: list[DateResult] = []
    for d in decisions:
        eligible = [s for e, s in sorted(d.scores.items()) if registry.get(e) is not None]
        rules = allocate(eligible, budget_yuan=config.budget_yuan, solver="rules", seed=config.seed)
        rating_of = {s.enterprise_id: s.rating for s in eligible}
        rules_lines = [LineView(e, ln.amount_yuan, ln.rate, rating_of[e]) for e, ln in sorted(rules.lines.items())]
        flat = tuple(flat_allocation([(s.enterprise_id, s.rating) for s in eligible], config.budget_yuan,
                                     rate=config.flat_rate))
        mult = None
        if churn_multiplier is not None:
            as_of = d.as_of
            mult = lambda eid, _a=as_of: churn_multiplier(eid, _a)  # noqa: E731
        kw = {"churn": churn, "lgd": config.lgd, "churn_multiplier": mult}
        labeled = [(s.default_probability, outcomes[e].defaulted) for e, s in sorted(d.scores.items()) if e in outcomes]
        disc = roc_ks([p for p, _ in labeled], [y for _, y in labeled])
        shadow = [(s.challenger_default_probability, outcomes[e].defaulted) for e, s in sorted(d.scores.items())
                  if e in outcomes and s.challenger_default_probability is not None]
        blind = [(s.default_probability, outcomes[e].defaulted) for e, s in sorted(d.blind_scores.items())
                 if e in outcomes]
        disc_blind = roc_ks([p for p, _ in blind], [y for _, y in blind])
        out.append(DateResult(
            d.as_of, d, rules, flat,
            realised_profit(lines_of(d), outcomes, **kw),  # type: ignore[arg-type]
            realised_profit(rules_lines, outcomes, **kw),  # type: ignore[arg-type]
            realised_profit(flat, outcomes, **kw),  # type: ignore[arg-type]
            disc,
            disc_blind,
            roc_ks([p for p, _ in shadow], [y for _, y in shadow]),
            log_loss([p for p, _ in labeled], [y for _, y in labeled]),
            log_loss([p for p, _ in shadow], [y for _, y in shadow]) if len(shadow) == len(labeled) else float("nan"),
        ))
    return out


def monthly_sales(store: FeatureStore, enterprise_ids: Sequence[str], last: dt.date) -> dict[str, dict[int, float]]:
    """Valid sales (yuan, net of tax) per enterprise and month index, months up to ``last``."""
    return sales_by_month(store, enterprise_ids, last)


def drift_report(
    snapshots: Sequence[Snapshot], sales: Mapping[str, Mapping[int, float]], *, min_instances: int = 6,
    threshold: float = 20.0,
) -> DriftReport:
    """PSI between consecutive snapshots and PageHinkley/ADWIN alarms on monthly sales.

    Each enterprise's monthly sales (signed log, months without sales count as 0 between
    its first and last active month) feed one PageHinkley monitor; the portfolio's total
    monthly sales feed one PageHinkley and one ADWIN monitor. An alarm at month ``m`` only
    uses months up to ``m``, so replaying month by month would raise the same alarms.
    """
    psi: dict[tuple[dt.date, dt.date], dict[str, float]] = {}
    for prev, cur in zip(snapshots, snapshots[1:], strict=False):
        if len(prev.enterprise_ids) >= 10 and len(cur.enterprise_ids) >= 10:
            psi[(prev.as_of, cur.as_of)] = psi_table(prev.numeric, cur.numeric, NUMERIC_FEATURES)
    ids = sorted(sales)
    alarms: list[DriftAlarm] = []
    total: dict[int, float] = {}
    for eid in ids:
        months = sales[eid]
        if not months:
            continue
        monitor = DriftMonitor(eid, "page_hinkley", min_instances=min_instances, threshold=threshold)
        for m in range(min(months), max(months) + 1):
            value = months.get(m, 0.0)
            total[m] = total.get(m, 0.0) + value
            alarm = monitor.update(signed_log(value), m)
            if alarm is not None:
                alarms.append(alarm)
    detectors: tuple[Literal["page_hinkley", "adwin"], ...] = ("page_hinkley", "adwin")
    for detector in detectors:
        monitor = DriftMonitor("total_sales", detector, min_instances=min_instances, threshold=threshold)
        for m in sorted(total):
            alarm = monitor.update(signed_log(total[m]), m)
            if alarm is not None:
                alarms.append(alarm)
    return DriftReport(psi, tuple(alarms), dict(sorted(total.items())))


@dataclass(slots=True)
class _Rescored:
    """A run that reuses another run's features with its scores changed (a score-only scenario)."""

    snapshots: list[Snapshot]
    base: ReplayLike

    @property
    def n_events(self) -> int:
        return self.base.n_events

    @property
    def n_duplicates(self) -> int:
        return self.base.n_duplicates

    def monthly_sales(self, last: dt.date) -> dict[str, dict[int, float]]:
        return self.base.monthly_sales(last)


def run_backtest(
    events: Sequence[InvoiceEvent] | Callable[[], Iterable[InvoiceEvent]],
    as_of_dates: Sequence[dt.date],
    registry: EnterpriseRegistry,
    scorer: Scorer,
    allocate: Allocate,
    outcomes: Mapping[str, Outcome],
    churn: ChurnFn,
    config: BacktestConfig,
    *,
    scenario: Scenario | None = None,
    industry_of: Mapping[str, str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] | None = None,
    replayer: Replayer | None = None,
    alert_rules: AlertRules | None = None,
    reasons: ReasonsMode = "lines",
) -> BacktestResult:
    """Replay, allocate, evaluate; with ``scenario``, the shocked run too.

    ``events`` is a sequence sorted by issue date, or a function returning a fresh
    iterator over them (each run replays it once: the cached columnar events build the
    event objects lazily). ``clock`` (e.g. ``time.perf_counter``) only times the phases
    for the report; the results never depend on it. ``reasons`` says which scores and lines get
    their reasons (``risk_factors``, the costly part of scoring), see
    :data:`streams.backtest.engine.ReasonsMode`; the decisions do not depend on it.
    """
    if reasons not in REASONS_MODES:
        raise ValueError(f"reasons must be one of {', '.join(REASONS_MODES)}, got {reasons!r}")
    explain = explainer(scorer) if reasons == "lines" else None

    def event_stream() -> Iterable[InvoiceEvent]:
        return events() if callable(events) else events

    tick = clock or (lambda: 0.0)
    timings: dict[str, float] = {}
    dates = tuple(sorted(set(as_of_dates)))

    ScoreTransform = Callable[[list[EnterpriseScore], dt.date], list[EnterpriseScore]]

    def one_run(ev_t: Callable[[InvoiceEvent], InvoiceEvent] | None, sc_t: ScoreTransform | None,
                base: ReplayLike | None, tag: str) -> RunResult:
        t0 = tick()
        rep: ReplayLike
        if base is None and replayer is not None:
            rep = replayer(shocked=ev_t is not None, score_transform=sc_t, blind_ids=tuple(outcomes),
                           reasons=reasons == "all")
        elif base is None:
            rep = replay(event_stream(), dates, registry, scorer, event_transform=ev_t, score_transform=sc_t,
                         chunk=config.chunk, on_progress=on_progress, blind_ids=tuple(outcomes),
                         reasons=reasons == "all")
        else:  # the events are unchanged: reuse the base features, re-apply the score shock only
            if sc_t is None:  # reuse only makes sense for a scenario run
                raise ValueError("reusing the base replay needs a score transform")
            snaps = [Snapshot(s.as_of, s.enterprise_ids, s.numeric,
                              {x.enterprise_id: x for x in sc_t(list(s.scores.values()), s.as_of)}, s.n_events,
                              {x.enterprise_id: x for x in sc_t(list(s.blind_scores.values()), s.as_of)}, s.inputs)
                     for s in base.snapshots]
            rep = _Rescored(snaps, base)
        t1 = tick()
        decisions = allocate_snapshots(rep.snapshots, allocate, registry, budget_yuan=config.budget_yuan,
                                       solver=config.solver, bundle_version=scorer.version, seed=config.seed)
        t_reasons = tick()
        if explain is not None:
            decisions = explain_decisions(decisions, rep.snapshots, explain)
        t2 = tick()
        mult = None
        if scenario is not None and tag == "scenario":
            score_industry = {e: s.industry for snap in rep.snapshots for e, s in snap.scores.items()}
            mult = lambda eid, as_of: scenario.churn_multiplier(score_industry.get(eid, "unknown"), as_of)  # noqa: E731
        results = evaluate_decisions(decisions, allocate, registry, outcomes, churn, config, churn_multiplier=mult)
        t3 = tick()
        timings.update({f"{tag}_replay_s": t1 - t0, f"{tag}_allocate_s": t_reasons - t1,
                        f"{tag}_reasons_s": t2 - t_reasons, f"{tag}_evaluate_s": t3 - t2})
        return RunResult(rep, results)

    base = one_run(None, None, None, "base")
    t0 = tick()
    last = dates[-1] if dates else dt.date.max
    sales = base.replay.monthly_sales(last)
    drift = drift_report(base.replay.snapshots, sales)
    history = {s.as_of: {e: x.default_probability for e, x in s.scores.items()} for s in base.replay.snapshots}
    flags = first_flag_dates(history, outcomes, config.flag_threshold)
    blind_history = {s.as_of: {e: x.default_probability for e, x in s.blind_scores.items()}
                     for s in base.replay.snapshots}
    flags_blind = first_flag_dates(blind_history, outcomes, config.flag_threshold)
    timings["drift_s"] = tick() - t0
    t0 = tick()
    alerts = replay_alerts([d.decision for d in base.dates], sales, rules=alert_rules)
    timings["alerts_s"] = tick() - t0
    shocked = None
    if scenario is not None:
        ev_t = event_transform(scenario, industry_of or {}) if scenario.changes_events else None
        shocked = one_run(ev_t, score_transform(scenario), None if ev_t else base.replay, "scenario")
    return BacktestResult(config, dates, base, drift, flags, flags_blind, outcomes, scenario, shocked, timings, churn,
                          tuple(alerts))

