"""The Grafana dashboard in docs/grafana uses only metric names the worker exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "riskmon.json"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}


def exposed_names() -> set[str]:
    """Every sample name the worker's /metrics can carry (labelled series included, before they first appear)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().exposition().decode()):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def test_every_metric_in_the_dashboard_is_exposed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\briskmon_[a-z_]+\b", e)}
    assert used, "the dashboard queries no riskmon metric"
    missing = sorted(used - exposed_names())
    assert not missing, f"dashboard uses metrics the worker does not expose: {missing}"


def test_the_dashboard_covers_the_ops_questions() -> None:
    """Throughput, lag, freshness, DLQ by reason, allocator runtime and gap, drift alarms, alerts."""
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for metric in ("riskmon_events_total", "riskmon_consumer_lag", "riskmon_freshness_seconds_bucket",
                   "riskmon_dlq_total", "riskmon_allocator_runtime_seconds", "riskmon_allocator_gap",
                   "riskmon_drift_alarms_total", "riskmon_alerts_total"):
        assert metric in exprs, metric
    assert "by (reason)" in exprs


def test_a_wrong_name_would_be_caught() -> None:
    assert "riskmon_dlq_total" in exposed_names()
    assert "riskmon_dlq" not in exposed_names() and "riskmon_no_such_metric" not in exposed_names()
