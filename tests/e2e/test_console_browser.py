"""The console in a real browser during a real replay: headless Chromium (Debian's) driven by playwright.

A ``riskmon worker`` and a ``riskmon console`` run as child processes against real Kafka and
Redis; the slice of real invoices of ``test_live_pipeline`` is replayed while the alerts page
is open. The test watches an alert arrive without a reload, then checks that the numbers on
the pages equal what Kafka holds, and that junk URLs get clean 400/404 pages. Screenshots go
to ``artifacts/console/*.png`` (the README's come from there).

Chromium comes from ``scripts/browser`` (apt's ``chromium``); ``playwright install`` is never run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from streams.events import CreditLine, EnterpriseScore, RiskAlert
from streams.replay import ReplayRecord, replay_records
from tests.bundle_fixture import get_test_bundle
from tests.e2e.harness import ROOT, Deployment, WorkerProcess, free_port, publish, read, short, wait_for

pytestmark = pytest.mark.browser

SLICE = ("E16", "E26", "E42", "E12", "E28", "E29", "E39", "E50", "E52", "E82", "E99", "E126")
CHROMIUM = os.environ.get("RISKMON_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "console"


class ConsoleProcess:
    """``riskmon console`` as a child process on a free loopback port."""

    def __init__(self, deployment: Deployment) -> None:
        self.port = free_port()
        deployment.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = deployment.log_dir / f"{deployment.name}-web-console.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "streams.cli", "console", "--port", str(self.port)],
            cwd=ROOT, env=deployment.env(0), stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def get_json(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:  # noqa: S310 - loopback
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def records() -> list[ReplayRecord]:
    return replay_records(enterprises=set(SLICE))


@pytest.fixture
def deployment(unique_name: str, kafka_bootstrap: str, redis_url: str, redis_prefix: str,
               topic_factory) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    d = Deployment(short(unique_name), kafka_bootstrap, redis_url, redis_prefix, get_test_bundle())
    t = d.topics()
    for name, config in ((t.invoices, None), (t.dlq, None), (t.alerts, None),
                         (t.scores, {"cleanup.policy": "compact"}), (t.credit_lines, {"cleanup.policy": "compact"})):
        topic_factory(partitions=d.partitions, config=config, name=name)
    topic_factory(partitions=1, name=t.allocations)
    yield d


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/browser (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def off_loop(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a thread: playwright's sync API keeps an event loop running in this one (no asyncio.run)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _latest(deployment: Deployment, topic: str, model: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, value, _ in off_loop(read, deployment, topic):
        event = model.model_validate_json(value)
        out[event.enterprise_id] = event
    return out


def _number(text: str) -> float:
    return float(text.replace(",", "").strip())


def test_console_during_a_replay_shows_what_kafka_holds_and_alerts_live(
        deployment: Deployment, records: list[ReplayRecord], browser: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(deployment, "worker")
    console = ConsoleProcess(deployment)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        worker.wait_ready()
        wait_for(lambda: (h := console.get_json("/health")) and h["status"] == "live", 60, "console live")

        # 1. the alerts page is open before the replay starts; alerts must arrive without a reload
        page.goto(console.url + "/alerts")
        page.wait_for_function("document.getElementById('feed-state').textContent === 'connected'", timeout=20_000)
        page.evaluate("window.__notReloaded = true")
        off_loop(publish, deployment, records)
        page.wait_for_selector("ul.alerts li[data-alert-id]", timeout=120_000)
        assert page.evaluate("window.__notReloaded === true"), "the page reloaded: the feed is not live"
        first = page.locator("ul.alerts li[data-alert-id]").first
        assert "fresh" in (first.get_attribute("class") or "")  # added by the SSE handler, not server-rendered
        rule = first.get_attribute("data-rule")
        assert page.locator(f'#alert-counts [data-count="{rule}"]').count() == 1  # the counts follow live too
        page.screenshot(path=str(ARTIFACTS / "alerts.png"), full_page=True)

        # 2. let the worker finish and allocate once more, then the console must hold exactly what Kafka holds
        wait_for(lambda: (h := worker.health()) and h["processed"] >= len(records), 180, "worker caught up", worker)
        wait_for(lambda: (r := worker.allocate()) and r.get("ran"), 60, "a forced allocation", worker)
        topics = deployment.topics()
        lines = _latest(deployment, topics.credit_lines, CreditLine)
        scores = _latest(deployment, topics.scores, EnterpriseScore)
        alerts = [RiskAlert.model_validate_json(v) for _, v, _ in off_loop(read, deployment, topics.alerts)]
        total = sum(x.amount_yuan for x in lines.values())
        assert set(lines) == set(SLICE) and alerts
        wait_for(lambda: (p := console.get_json("/api/portfolio")) and p["n_enterprises"] == len(lines)
                 and abs(p["total_lent_yuan"] - total) < 0.5 and sum(p["alerts_by_rule"].values()) == len(alerts),
                 60, "console caught up with Kafka")

        page.goto(console.url + "/")
        assert _number(page.inner_text("#total-lent")) == round(total)
        assert _number(page.inner_text("#n-lines")) == sum(1 for x in lines.values() if x.amount_yuan > 0)
        assert _number(page.inner_text("#n-enterprises")) == len(lines)
        assert _number(page.inner_text("#budget")) == deployment.budget_yuan
        rows = page.locator("#by-rating tbody tr")
        by_rating = {cells[0]: cells for i in range(rows.count())
                     if (cells := rows.nth(i).locator("td").all_inner_texts())}
        for rating in "ABCD":
            want = sum(x.amount_yuan for x in lines.values() if x.rating == rating)
            assert _number(by_rating[rating][3]) == round(want), rating
        page.screenshot(path=str(ARTIFACTS / "portfolio.png"), full_page=True)

        # 3. the credit-lines table sorts on the server: the first row is Kafka's largest line
        page.goto(console.url + "/lines?sort=amount&order=desc")
        top = min(lines.values(), key=lambda x: (-x.amount_yuan, int(x.enterprise_id[1:])))  # ties: natural id order
        assert page.locator("#lines tbody tr").first.locator("td").first.inner_text() == top.enterprise_id
        page.click("a[data-sort=pd]")  # a header click re-sorts (server-side) by default probability
        page.wait_for_url(re.compile(r".*sort=pd.*"))
        shown = [_number(t.rstrip("%")) for t in page.locator("#lines tbody tr td:nth-child(4)").all_inner_texts()]
        assert shown == sorted(shown, reverse=True) and len(shown) == len(lines)
        page.select_option("select[name=rating]", "D")
        page.click("form.filters button")
        page.wait_for_url(re.compile(r".*rating=D.*"))  # the filtered page loaded (the click waits for less)
        ids = page.locator("#lines tbody tr td:first-child").all_inner_texts()
        assert sorted(ids) == sorted(e for e, x in lines.items() if x.rating == "D")
        page.goto(console.url + "/lines?sort=amount&order=desc")
        page.screenshot(path=str(ARTIFACTS / "lines.png"), full_page=True)

        # 4. an enterprise page: its score and line as on Kafka, its monthly chart, its alerts
        alerted = next(a.enterprise_id for a in alerts if a.enterprise_id)
        page.goto(console.url + f"/enterprise/{alerted}")
        assert page.inner_text("#pd") == f"{scores[alerted].default_probability * 100:.1f}%"
        assert _number(page.inner_text("#line-amount")) == round(lines[alerted].amount_yuan)
        bars = page.locator("#sales-chart rect")
        assert bars.count() > 0 and bars.first.bounding_box() is not None  # drawn, not just in the markup
        assert page.locator("svg.chart path").first.bounding_box() is not None
        n_alerts = sum(1 for a in alerts if a.enterprise_id == alerted)
        assert page.locator("ul.alerts li[data-alert-id]").count() == n_alerts
        page.screenshot(path=str(ARTIFACTS / "enterprise.png"), full_page=True)

        # 5. junk in the URL: clean pages, never a stack trace
        for path, status, text in (("/enterprise/E0000000", 404, "unknown enterprise"),
                                   ("/enterprise/%7Bx%7D", 400, "not an enterprise id"),
                                   ("/lines?page=-1", 400, "page must be between"),
                                   ("/lines?sort=%3Cscript%3E", 400, "sort must be one of")):
            response = page.goto(console.url + path)
            assert response is not None and response.status == status, path
            body = page.inner_text("#error-message")
            assert text in body and "Traceback" not in page.content(), path
        page.screenshot(path=str(ARTIFACTS / "not-found.png"))
        assert not errors, errors
        print(f"\n{len(alerts)} alerts on the slice: "
              + ", ".join(f"{r} {sum(1 for a in alerts if a.rule == r)}" for r in sorted({a.rule for a in alerts})))
    finally:
        page.close()
        console.stop()
        worker.stop()
