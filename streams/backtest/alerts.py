"""Early-warning alerts replayed over a backtest's as-of dates, with the worker's own rules.

The rules in :mod:`streams.alerts` are pure folds over a state value, so the backtest runs the
same functions the live worker runs (:func:`streams.alerts.evaluate_scores`,
:func:`streams.alerts.evaluate_drift`, :func:`streams.alerts.evaluate_lines`), with the states
kept in a dict instead of Redis. At each as-of date, in date order: every enterprise's score of
that date (sorted by id) goes through the score and sales rules, the scores feed one
:class:`streams.drift.ScoreDriftWatch` as in the worker, and the lines the date's allocation
changed go through the line rules.

What differs from the live stream, by construction: the backtest scores once per as-of date and
the worker once per micro-batch, so a jump the worker sees in two steps may be one step here (and
the counts are not expected to be equal); the backtest replays validated events only, so
``dlq_burst`` cannot fire. An alert's ``raised_at`` is the as-of date at midnight UTC, so a
backtest's alerts do not depend on when it ran.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from streams.alerts import AlertRules, StateKey, WatchState, evaluate_drift, evaluate_lines, evaluate_scores
from streams.backtest.engine import DateDecision
from streams.drift import ScoreDriftWatch
from streams.events import RiskAlert


def replay_alerts(decisions: Sequence[DateDecision], sales: Mapping[str, Mapping[int, float]], *,
                  rules: AlertRules | None = None) -> list[RiskAlert]:
    """Every alert the worker's rules raise over ``decisions`` (in as-of order).

    ``sales`` is each enterprise's monthly sales (month index -> yuan) over the whole replay;
    the sales rule reads only the two complete months before each as-of date, so passing the
    whole history reads nothing from after the date.
    """
    rules = rules or AlertRules()
    states: dict[StateKey, WatchState] = {}
    drift = ScoreDriftWatch()
    alerts: list[RiskAlert] = []
    for decision in sorted(decisions, key=lambda d: d.as_of):
        now = dt.datetime.combine(decision.as_of, dt.time(), tzinfo=dt.UTC)
        scores = [decision.scores[e] for e in sorted(decision.scores)]
        new, fired = evaluate_scores(states, scores, sales, rules=rules, now=now)
        states.update(new)
        alerts += fired
        for alarm in drift.observe(scores):
            key = f"drift:{alarm.key}"
            st, fired = evaluate_drift(states.get(key), str(alarm.key), alarm.t, alarm.value, now=now)
            states[key] = st
            alerts += fired
        new, fired = evaluate_lines(states, decision.changed, now=now)
        states.update(new)
        alerts += fired
    return alerts
