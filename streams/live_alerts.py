"""The worker's early-warning hook: run the pure rules of :mod:`streams.alerts` and publish to ``risk-alerts``.

The ingest loop calls :meth:`LiveAlerts.after_batch` once per micro-batch (new scores, dead
letters, drift alarms), before it commits the batch's offsets; the allocator step calls
:meth:`LiveAlerts.after_allocation` with the lines it published. Rule state lives in Redis
(:class:`~streams.adapters.redis_store.RedisAlertStateStore`), so a restarted worker or the
worker that takes over a partition carries on without re-firing open alerts. The state is
saved only after the alerts are acknowledged: a crash in between republishes them (at least
once), never loses them. An alert that cannot be published is logged and counted, and the
stream goes on: alerts are derived data and never block ingestion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.alerts import AlertRules, StateKey, WatchState, evaluate_batch, evaluate_lines
from streams.drift import DriftAlarm
from streams.events import CreditLine, DeadLetter, EnterpriseScore, RiskAlert
from streams.metrics import Metrics
from streams.ports import AlertStateStore, BatchPublisher, FeatureStore

log = logging.getLogger("riskmon.alerts")


async def _default_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


class LiveAlerts:
    """Evaluates and publishes alerts for one worker (see the module docstring).

    ``in_thread`` runs the store work; the worker passes its core's one batch thread, so the
    alert reads never overlap a batch's writes to the (non thread-safe) feature cache.
    """

    def __init__(self, publisher: BatchPublisher[RiskAlert], states: AlertStateStore, features: FeatureStore,
                 rules: AlertRules, metrics: Metrics, clock: Callable[[], dt.datetime],
                 in_thread: Callable[[Callable[[], Any]], Awaitable[Any]] = _default_thread) -> None:
        self.publisher, self.states, self.features, self.rules = publisher, states, features, rules
        self.metrics, self.clock, self.in_thread = metrics, clock, in_thread
        self.published = 0

    async def after_batch(self, scores: Sequence[EnterpriseScore], dead: Sequence[DeadLetter],
                          alarms: Sequence[DriftAlarm]) -> list[RiskAlert]:
        if not (scores or dead or alarms):
            return []
        return await self._run(lambda: evaluate_batch(self.states, self.features, scores, dead, alarms,
                                                      rules=self.rules, now=self.clock()))

    async def after_allocation(self, lines: Sequence[CreditLine]) -> list[RiskAlert]:
        if not lines:
            return []

        def step() -> tuple[dict[StateKey, WatchState], list[RiskAlert]]:
            old = self.states.load_many([f"line:{line.enterprise_id}" for line in lines])
            return evaluate_lines(old, lines, now=self.clock())

        return await self._run(step)

    async def _run(self, step: Callable[[], tuple[dict[StateKey, WatchState], list[RiskAlert]]]) -> list[RiskAlert]:
        try:
            done: tuple[dict[StateKey, WatchState], list[RiskAlert]] = await self.in_thread(step)
            new, alerts = done
            await self.publisher.publish_many([(a.subject, a) for a in alerts])
            await self.in_thread(lambda: self.states.put_many(new))
        except Exception as exc:  # derived data: never stop the stream for it
            self.metrics.alert_failures.inc()
            log.warning("alerts not evaluated or published for this batch: %r", exc)
            return []
        for a in alerts:
            self.metrics.alerts.labels(rule=a.rule).inc()
        self.published += len(alerts)
        return alerts
