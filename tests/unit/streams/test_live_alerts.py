"""The worker's alert hook: publishes what the rules raise, saves their state, and never stops the stream."""

from __future__ import annotations

from collections.abc import Sequence

from streams.adapters.memory import InMemoryAlertStateStore, InMemoryFeatureStore
from streams.alerts import AlertRules
from streams.errors import PublishFailed
from streams.events import RiskAlert
from streams.live_alerts import LiveAlerts
from streams.metrics import Metrics
from tests.unit.streams.contracts import NOW, make_line, make_score


class FakePublisher:
    """A :class:`streams.ports.BatchPublisher` that records what it acknowledges, or fails like a broker that is down."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, RiskAlert]] = []
        self.fail = False

    async def publish_many(self, items: Sequence[tuple[str, RiskAlert]]) -> None:
        if self.fail:
            raise PublishFailed("broker down")
        self.sent += items


def hook(states: InMemoryAlertStateStore, metrics: Metrics, publisher: FakePublisher) -> LiveAlerts:
    return LiveAlerts(publisher, states, InMemoryFeatureStore(), AlertRules(), metrics, lambda: NOW)


async def test_alerts_are_published_then_their_state_saved_and_not_repeated() -> None:
    states, metrics, publisher = InMemoryAlertStateStore(), Metrics(), FakePublisher()
    live = hook(states, metrics, publisher)
    await live.after_batch([make_score("E1", "B", 0.1)], [], [])
    fired = await live.after_batch([make_score("E1", "D", 0.9)], [], [])
    assert sorted(a.rule for a in fired) == ["pd_jump", "pd_threshold", "rating_downgrade"]
    assert [a.alert_id for _, a in publisher.sent] == [a.alert_id for a in fired]
    assert {k for k, _ in publisher.sent} == {"E1"}
    again = await live.after_batch([make_score("E1", "D", 0.95)], [], [])  # a second worker batch
    assert again == [] and len(publisher.sent) == 3
    assert 'riskmon_alerts_total{rule="pd_threshold"} 1.0' in metrics.exposition().decode()
    cut = make_line("E1", 100_000.0).model_copy(update={"previous_amount_yuan": 500_000.0})
    assert [a.rule for a in await live.after_allocation([cut])] == ["line_cut"]


async def test_a_broker_failure_is_counted_and_the_state_is_not_saved() -> None:
    states, metrics, publisher = InMemoryAlertStateStore(), Metrics(), FakePublisher()
    live = hook(states, metrics, publisher)
    await live.after_batch([make_score("E1", "B", 0.1)], [], [])
    publisher.fail = True
    assert await live.after_batch([make_score("E1", "D", 0.9)], [], []) == []
    assert "riskmon_alert_failures_total 1.0" in metrics.exposition().decode()
    # nothing was saved, so the next batch raises the alerts that could not go out (at least once)
    publisher.fail = False
    fired = await live.after_batch([make_score("E1", "D", 0.9)], [], [])
    assert sorted(a.rule for a in fired) == ["pd_jump", "pd_threshold", "rating_downgrade"]
