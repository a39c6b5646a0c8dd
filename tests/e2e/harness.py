"""Run real ``riskmon worker`` processes against real Kafka and Redis, and read back what they wrote."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import Settings, TopicSettings, credentials_path
from tests.conftest import free_port, kafka_settings_as

ROOT = Path(__file__).resolve().parents[2]


def short(name: str, limit: int = 60) -> str:
    """``name`` (``unique_name``'s ``pytest-<test>-<8 hex>``) cut to ``limit`` characters, keeping its random end,
    so that no two runs share topics, groups or state folders (a cut name would: a run stopped before its
    teardown left topics that the next run's creation refused).

    >>> short("pytest-" + "x" * 80 + "-0123abcd")[-9:], len(short("pytest-" + "x" * 80 + "-0123abcd"))
    ('-0123abcd', 60)
    """
    return name if len(name) <= limit else name[: limit - 9] + name[-9:]


@dataclass
class Deployment:
    """One isolated riskmon deployment: unique topics, consumer group, Redis prefix."""

    name: str
    kafka_bootstrap: str
    redis_url: str
    redis_prefix: str
    bundle_dir: Path
    budget_yuan: float = 5_000_000.0
    interval_s: float = 2.0
    partitions: int = 4
    log_dir: Path = field(default_factory=lambda: ROOT / "var" / "test-logs")
    invoices_topic: str | None = None  # share an existing invoices topic (benchmarks)
    replication: int = 1  # 3 (and min_insync_replicas 2) on the three-broker cluster
    min_insync_replicas: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # more RISKMON_ settings for the workers
    http_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # for POST /allocate

    def topics(self) -> TopicSettings:
        topics = TopicSettings(partitions=self.partitions, replication=self.replication,
                               min_insync_replicas=self.min_insync_replicas).prefixed(f"{self.name}-")
        return topics.model_copy(update={"invoices": self.invoices_topic}) if self.invoices_topic else topics

    def settings(self) -> Settings:
        return Settings(_env_prefix="RISKMON_TEST_UNUSED_", app_id=self.name,
                        kafka=kafka_settings_as("worker", self.kafka_bootstrap).model_copy(
                            update={"group_id": f"{self.name}-workers"}),
                        topics=self.topics())

    def env(self, metrics_port: int) -> dict[str, str]:
        t = self.topics()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RISKMON_")}
        env.update({
            "RISKMON_APP_ID": self.name,
            "RISKMON_KAFKA__BOOTSTRAP": self.kafka_bootstrap,
            "RISKMON_KAFKA__GROUP_ID": f"{self.name}-workers",
            "RISKMON_REDIS__URL": self.redis_url,
            "RISKMON_REDIS__PREFIX": self.redis_prefix.rstrip(":"),
            "RISKMON_TOPICS__INVOICES": t.invoices, "RISKMON_TOPICS__DLQ": t.dlq,
            "RISKMON_TOPICS__SCORES": t.scores, "RISKMON_TOPICS__CREDIT_LINES": t.credit_lines,
            "RISKMON_TOPICS__ALLOCATIONS": t.allocations, "RISKMON_TOPICS__ALERTS": t.alerts,
            "RISKMON_TOPICS__PARTITIONS": str(self.partitions), "RISKMON_TOPICS__REPLICATION": str(self.replication),
            "RISKMON_BUNDLE_DIR": str(self.bundle_dir),
            "RISKMON_ALLOCATOR__BUDGET_YUAN": str(self.budget_yuan),
            "RISKMON_ALLOCATOR__INTERVAL_S": str(self.interval_s),
            "RISKMON_WORKER__METRICS_PORT": str(metrics_port),
            "RISKMON_STATE_DIR": str(ROOT / "var" / "faust-test"),
            "RISKMON_CREDENTIALS_FILE": str(credentials_path()),  # the services' credentials, as in this process
            "RISKMON_WORKER__HTTP_TOKEN": self.http_token,
        })
        if self.min_insync_replicas is not None:
            env["RISKMON_TOPICS__MIN_INSYNC_REPLICAS"] = str(self.min_insync_replicas)
        env.update(self.extra_env)
        return env


class WorkerProcess:
    """A ``riskmon worker`` child process with its own /health port and log file."""

    def __init__(self, deployment: Deployment, tag: str) -> None:
        self.port = free_port()
        self.http_token = deployment.http_token
        deployment.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = deployment.log_dir / f"{deployment.name}-{tag}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
            cwd=ROOT, env=deployment.env(self.port), stdout=self._log, stderr=subprocess.STDOUT)

    def health(self) -> dict[str, Any] | None:
        """The worker's /health body (also when it answers 503: degraded), or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:  # noqa: S310
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read() or b"null")
            except ValueError:
                return None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def allocate(self) -> dict[str, Any] | None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/allocate", method="POST",
                                     headers={"Authorization": f"Bearer {self.http_token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError):
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:  # noqa: S310
            return r.read().decode()

    def wait_ready(self, timeout_s: float = 90.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            h = self.health()
            return h if h and h.get("partitions") else None
        return wait_for(ready, timeout_s, f"worker ready (log: {self.log_path})", self)

    def rss_mb(self) -> float:
        """Resident memory of the worker process now (Linux /proc)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, worker: WorkerProcess | None = None,
             every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited ({worker.proc.returncode}) while waiting for {what}:\n{worker.log_tail()}")
        time.sleep(every_s)
    tail = f"\n{worker.log_tail()}" if worker is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def publish(deployment: Deployment, records: list[Any], *, rate: float | None = None) -> float:
    from streams.commands.replay import publish as replay_publish

    settings = deployment.settings()
    return asyncio.run(replay_publish(records, settings, settings.topics.invoices, rate=rate, speed=None,
                                      progress=False))


class GatedPublisher:
    """Publish a slice in two parts: the first half at once, the second only after :meth:`release`.

    A test that kills something "mid-replay" waits for part of the first half to be applied, kills, then
    releases: the second half cannot have been applied before the kill, however fast the worker folds
    (a rate-limited publisher raced a worker that applies a whole backlog in one batch; CI of 3e5bcb6).
    """

    def __init__(self, deployment: Deployment, records: list[Any], *, rate: float | None = 1500.0,
                 between: Callable[[], None] | None = None) -> None:
        self.first, self.rest = records[: len(records) // 2], records[len(records) // 2:]
        self._gate = threading.Event()
        self.first_sent = threading.Event()  # the first half (and ``between``) acknowledged by the broker
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(deployment, rate, between), daemon=True)

    def _run(self, deployment: Deployment, rate: float | None, between: Callable[[], None] | None) -> None:
        try:
            publish(deployment, self.first, rate=rate)
            if between is not None:
                between()
            self.first_sent.set()
            self._gate.wait()
            publish(deployment, self.rest, rate=rate)
        except BaseException as exc:  # raised again by join: a publisher that died must not look finished
            self.error = exc

    def start(self) -> GatedPublisher:
        self._thread.start()
        return self

    def wait_first(self, timeout_s: float) -> None:
        """Wait until the first half is acknowledged (raises what publishing raised, or on timeout)."""
        if not self.first_sent.wait(timeout_s):
            raise AssertionError(self.error or f"the first half was not published within {timeout_s} s")

    def release(self) -> None:
        self._gate.set()

    def join(self, timeout_s: float) -> bool:
        """Release the second half (if not yet) and wait; True when everything was published."""
        self.release()
        self._thread.join(timeout_s)
        if self.error is not None:
            raise AssertionError(f"publishing the slice failed: {self.error!r}") from self.error
        return not self._thread.is_alive()


def read(deployment: Deployment, topic: str) -> list[tuple[str | None, bytes, int]]:
    from streams.adapters.kafka import read_topic

    # strict: a read that runs out of time raises instead of returning part of the topic
    return asyncio.run(read_topic(deployment.settings().kafka, topic, timeout_s=60, strict=True))


def services(*args: str, timeout_s: float = 240.0) -> None:
    """Run ``scripts/services ARGS`` against the services the tests use (ports from the environment).

    ``RISKMON_KAFKA_PORT`` / ``RISKMON_REDIS_PORT`` default to the ports of ``RISKMON_KAFKA__BOOTSTRAP``
    and ``RISKMON_REDIS__URL``, so the script stops and starts the very services under test.
    """
    from urllib.parse import urlparse

    env = dict(os.environ)
    bootstrap = env.get("RISKMON_KAFKA__BOOTSTRAP", "127.0.0.1:9092").split(",")[0]
    env.setdefault("RISKMON_KAFKA_PORT", bootstrap.rpartition(":")[2])
    env.setdefault("RISKMON_REDIS_PORT", str(urlparse(env.get("RISKMON_REDIS__URL", "redis://127.0.0.1:6379/0")).port
                                            or 6379))
    result = subprocess.run([str(ROOT / "scripts" / "services"), *args], cwd=ROOT, env=env, capture_output=True,  # noqa: S603
                            text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"scripts/services {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
