"""Prometheus metrics of one worker, on their own registry (several apps can live in one process).

Examples
--------
>>> m = Metrics()
>>> m.dead_letter("json_invalid"); m.dead_letter("issue_date 2030-01-01 is after ..."); m.freshness([0.5, 1.5])
>>> m.quantiles()["p50_s"]
1.0
>>> b'riskmon_dlq_total{reason="json_invalid"} 1.0' in m.exposition(), b'reason="invalid"} 1.0' in m.exposition()
(True, True)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import threading
import time

import numpy as np

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streams.events import DLQ_REASONS

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BulkHistogram(Collector):
    """A Prometheus histogram fed a whole array at a time (one observation per message, counted with numpy).

    Exposed exactly as ``prometheus_client.Histogram`` exposes ``_bucket``, ``_count`` and ``_sum``; observing a
    rescoring window's 10^5 freshness values one ``observe`` at a time cost more than the rest of the window's
    bookkeeping.

    Examples
    --------
    >>> r = CollectorRegistry(); h = BulkHistogram("x_seconds", "x", (1.0, 2.0), registry=r)
    >>> h.observe_many([0.5, 1.0, 1.5, 9.0])
    >>> b'x_seconds_bucket{le="1.0"} 2.0' in generate_latest(r), b"x_seconds_count 4.0" in generate_latest(r)
    (True, True)
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self._name, self._doc = name, documentation
        self._edges = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._edges) + 1, dtype=np.int64)  # the last: above every edge (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        a = np.fromiter(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values
        counts = np.bincount(np.searchsorted(self._edges, a, side="left"), minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(a.sum())

    def observe(self, value: float) -> None:
        self.observe_many(np.array([value]))

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        edges = [floatToGoString(e) for e in self._edges.tolist()]  # type: ignore[no-untyped-call]
        buckets = [(e, float(c)) for e, c in zip(edges, cumulative, strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)


class Metrics:
    """The worker's counters, gauges and histograms (names prefixed ``riskmon_``)."""

    def __init__(self, freshness_samples: int = 200_000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("riskmon_events", "Invoice messages consumed, by outcome", ["outcome"], registry=r)
        self.dlq = Counter("riskmon_dlq", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.batches = Counter("riskmon_batches", "Micro-batches processed", registry=r)
        self.scores = Counter("riskmon_scores_published", "EnterpriseScore messages published", registry=r)
        self.store_retries = Counter("riskmon_store_retries", "Batches retried after a retriable store error", registry=r)
        self.batch_latency = Histogram("riskmon_batch_seconds", "Time to process one micro-batch end to end",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.scoring_latency = Histogram("riskmon_scoring_seconds", "Rescoring time per micro-batch (features + model)",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.freshness_hist = BulkHistogram("riskmon_freshness_seconds", "From invoice produced to its score published",
                                            buckets=_LATENCY_BUCKETS + (60.0, 120.0), registry=r)
        self.lag = Gauge("riskmon_consumer_lag", "Messages behind the end of the partition", ["partition"], registry=r)
        self.watermark = Gauge("riskmon_watermark_days", "Event-time watermark (days since 1970-01-01)", registry=r)
        self.unknown_enterprises = Gauge("riskmon_unknown_enterprises",
                                         "Scored enterprises unknown to the registry (no credit line)", registry=r)
        self.allocations = Counter("riskmon_allocations", "Allocator runs that published", registry=r)
        self.allocations_deferred = Counter("riskmon_allocations_deferred",
                                            "Allocator ticks skipped while this worker caught up with a backlog",
                                            registry=r)
        self.allocator_runtime = Gauge("riskmon_allocator_runtime_seconds", "Solver runtime of the last allocation",
                                       registry=r)
        self.allocator_gap = Gauge("riskmon_allocator_gap", "Relative gap to the certified optimum (last run)",
                                   registry=r)
        self.allocated = Gauge("riskmon_allocated_yuan", "Total lent by the last allocation", registry=r)
        self.lines_changed = Counter("riskmon_credit_lines_published", "CreditLine messages published", registry=r)
        self.drift_alarms = Counter("riskmon_drift_alarms", "River drift alarms on the stream of scores, by signal",
                                    ["signal"], registry=r)
        self.degraded = Gauge("riskmon_degraded", "1 while a service the worker needs is failing (it waits and retries)",
                              ["component"], registry=r)
        self.alerts = Counter("riskmon_alerts", "Early-warning alerts published to risk-alerts, by rule", ["rule"],
                              registry=r)
        self.alert_failures = Counter("riskmon_alert_failures", "Batches whose alerts could not be evaluated or published",
                                      registry=r)
        self._fresh: deque[float] = deque(maxlen=freshness_samples)
        self._quantiles: tuple[float, int, dict[str, float | int]] | None = None

    def dead_letter(self, reason: str) -> None:
        """Count a dead letter; the label is always one of the closed set ``DLQ_REASONS`` (else ``invalid``)."""
        self.dlq.labels(reason=reason if reason in DLQ_REASONS else "invalid").inc()

    def freshness(self, seconds: Iterable[float]) -> None:
        a = np.fromiter(seconds, dtype=np.float64) if not isinstance(seconds, np.ndarray) else seconds
        self._fresh.extend(a.tolist())
        self.freshness_hist.observe_many(a)

    def quantiles(self) -> dict[str, float | int]:
        """Exact freshness quantiles over the retained samples (recomputed at most once a second: /health asks)."""
        now = time.monotonic()
        if self._quantiles is not None and now - self._quantiles[0] < 1.0 and self._quantiles[1] == len(self._fresh):
            return self._quantiles[2]
        if not self._fresh:
            return {"n": 0}
        a = np.fromiter(self._fresh, dtype=np.float64)
        out: dict[str, float | int] = {"n": int(a.size), "p50_s": float(np.quantile(a, 0.5)),
                                       "p99_s": float(np.quantile(a, 0.99)), "max_s": float(a.max())}
        self._quantiles = (now, len(self._fresh), out)
        return out

    def reset_freshness(self) -> None:
        self._fresh.clear()
        self._quantiles = None

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
