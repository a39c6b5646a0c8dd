"""Start a three-node Kafka cluster or a Redis Cluster for one test module, through ``scripts/services``.

Each cluster gets its own state folder (``var/test-clusters/<name>-<8 hex>``) and a block of free
loopback ports, so it never meets the developer's or CI's own services; it is stopped and its
state deleted afterwards (``scripts/services wipe``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.harness import ROOT

SERVICES = ROOT / "scripts" / "services"
START_TIMEOUT_S = int(os.environ.get("RISKMON_TEST_CLUSTER_TIMEOUT_S", "300"))


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections take their local port)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port_block(size: int, *, low: int = 10_000, high: int | None = None) -> int:
    """The first port of ``size`` consecutive loopback ports that are free now (and their +10000 for Redis' bus).

    The block and its bus ports lie below the ephemeral range: there, any outgoing connection (a
    Kafka client's, a test's) could take a port between this check and the service's bind, which
    skipped a Redis Cluster kill test on the CI run of 2026-12-03 06:07 ("port 46408 is taken").
    """
    high = high if high is not None else _ephemeral_low() - 10_000
    rng = random.Random()  # noqa: S311 - not security relevant
    for _ in range(200):
        base = rng.randrange(low, high - size)
        sockets = []
        try:
            for port in (*range(base, base + size), *range(base + 10_000, base + 10_000 + size)):
                if port > 65_535:
                    raise OSError
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {size} free ports found")


@dataclass
class LocalCluster:
    """A cluster started by ``scripts/services up <service>`` with its own ports and state folder."""

    service: str  # "kafka" or "redis"
    env: dict[str, str]
    var: Path
    nodes: int
    base_port: int
    started_s: float = 0.0
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, timeout_s: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SERVICES), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,  # noqa: S603
                              timeout=timeout_s, check=False)

    def node_dir(self, i: int) -> Path:
        return self.var / f"{self.service}-cluster" / f"node-{i}"

    def pid(self, i: int) -> int:
        name = "kafka.pid" if self.service == "kafka" else "redis.pid"
        return int((self.node_dir(i) / name).read_text().strip())

    def port(self, i: int) -> int:
        return self.base_port + i - 1

    def sigkill(self, i: int) -> int:
        """SIGKILL node ``i`` (1-based); returns its pid."""
        pid = self.pid(i)
        os.kill(pid, signal.SIGKILL)
        return pid

    def status(self) -> str:
        return self.run("status", timeout_s=60).stdout

    def stop(self) -> None:
        self.run("wipe", timeout_s=120)
        shutil.rmtree(self.var, ignore_errors=True)


def start_cluster(service: str, name: str, extra_env: dict[str, str] | None = None) -> LocalCluster | str:
    """Start the cluster; returns it, or the reason it could not start (the caller skips with it)."""
    if shutil.which("java") is None and service == "kafka":
        return "java is not installed (scripts/services installs it with apt-get when run as root)"
    var = ROOT / "var" / "test-clusters" / f"{name}-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKMON_")}
    env.update({"RISKMON_VAR": str(var), "RISKMON_SERVICES_MODE": "local",
                "RISKMON_SERVICES_TIMEOUT": str(START_TIMEOUT_S)})
    for key in ("RISKMON_CACHE", "RISKMON_KAFKA_VERSION"):
        if key in os.environ:
            env[key] = os.environ[key]
    if service == "kafka":
        nodes = 3
        base = free_port_block(2 * nodes)
        env.update({"RISKMON_KAFKA_BROKERS": str(nodes), "RISKMON_KAFKA_PORT": str(base)})
    else:
        nodes = 6  # three masters, one replica each
        base = free_port_block(nodes)
        env.update({"RISKMON_REDIS_CLUSTER": "3", "RISKMON_REDIS_CLUSTER_REPLICAS": "1", "RISKMON_REDIS_PORT": str(base)})
    env.update(extra_env or {})
    cluster = LocalCluster(service, env, var, nodes, base)
    t0 = time.monotonic()
    try:
        done = cluster.run("up", service)
    except subprocess.TimeoutExpired:
        cluster.stop()
        return f"scripts/services up {service} did not finish in {START_TIMEOUT_S} s"
    cluster.started_s = time.monotonic() - t0
    if done.returncode != 0:
        cluster.stop()
        return f"scripts/services up {service} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return cluster
