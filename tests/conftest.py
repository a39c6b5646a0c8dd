"""Root test configuration: the real services (Kafka, Redis) that integration and end-to-end tests use.

Only service fixtures live here. Unit tests of pure code use none of them and need no services.

* Every test under ``tests/integration/`` and ``tests/e2e/`` is marked ``services`` automatically.
* A ``services`` test fails (it is not skipped) with ``run scripts/services up`` when Kafka or Redis
  does not answer, so a missing broker can never turn a red suite green.
* ``kafka_bootstrap`` / ``redis_url`` (session): the addresses, from ``RISKMON_KAFKA__BOOTSTRAP``
  (default ``127.0.0.1:9092``) and ``RISKMON_REDIS__URL`` (default ``redis://127.0.0.1:6379/0``),
  checked to answer. When the services are locked down (``scripts/services`` wrote credentials,
  see :mod:`streams.settings`), ``redis_url`` carries the Redis user and password in the URL.
* ``kafka_settings`` (session): the project's :class:`~streams.settings.KafkaSettings` for that
  broker (the worker principal, SASL/TLS included); ``kafka_settings_as("admin"|"producer")`` gives
  the other principals of the credentials file. Build every Kafka client from these
  (``streams.adapters.kafka.client_kwargs``), never from a bare bootstrap address.
* ``unique_name`` (function): ``pytest-<test name>-<8 hex>``, legal as a Kafka topic / group id.
* ``topic_factory`` (function): ``topic_factory(partitions=4, config=None, name=None) -> str`` creates
  a uniquely named topic through aiokafka's admin client, waits until every partition has a leader,
  and deletes the topics again after the test. Callable from sync and async tests alike.
* ``redis_prefix`` (function): a unique key prefix (``pytest:<test name>:<8 hex>:``); every key
  starting with it is deleted after the test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SERVICE_DIRS = ("integration", "e2e")
HINT = "run scripts/services up"
# services that were just started get this long to answer
PROBE_WAIT_S = float(os.environ.get("RISKMON_TEST_SERVICE_WAIT_S", "5"))

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


# ----------------------------------------------------------------------------- marking


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: starts a three-broker Kafka cluster or a Redis Cluster through scripts/services and kills a node")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test below ``tests/integration`` and ``tests/e2e`` with ``services``."""
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(TESTS_DIR)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in SERVICE_DIRS:
            item.add_marker(pytest.mark.services)


# ----------------------------------------------------------------------------- health


def kafka_bootstrap_from_env() -> str:
    return os.environ.get("RISKMON_KAFKA__BOOTSTRAP", DEFAULT_KAFKA_BOOTSTRAP)


def kafka_settings_as(principal: str = "worker", bootstrap: str | None = None) -> Any:
    """KafkaSettings for the test broker (or ``bootstrap``) as ``principal``: worker, admin or producer.

    The worker is the project's settings; the admin and producer principals come from the services'
    credentials file; on plain-text services every principal is the same anonymous client. Another
    broker than the one the settings name (a test cluster of its own) gets plain settings, as the
    credentials file's lines do not apply to it (streams.settings.CredentialsFileSource).
    """
    from pydantic import SecretStr

    from streams.settings import KafkaSettings, Settings, credentials_path

    bootstrap = bootstrap or kafka_bootstrap_from_env()
    kafka = Settings().kafka
    if bootstrap.split(",")[0].strip() != kafka.bootstrap.split(",")[0].strip():
        return KafkaSettings(bootstrap=bootstrap)
    kafka = kafka.model_copy(update={"bootstrap": bootstrap})
    if principal == "worker" or kafka.security_protocol == "PLAINTEXT":
        return kafka
    from dotenv import dotenv_values

    lines = dotenv_values(credentials_path())
    key = {"admin": "ADMIN", "producer": "PRODUCER"}[principal]
    user, password = lines.get(f"RISKMON_SERVICES_KAFKA_{key}_USERNAME"), lines.get(f"RISKMON_SERVICES_KAFKA_{key}_PASSWORD")
    if not user or not password:
        raise RuntimeError(f"no {principal} principal in {credentials_path()}: {HINT}")
    return kafka.model_copy(update={"sasl_username": user, "sasl_password": SecretStr(password)})


def kafka_kwargs(principal: str = "worker") -> dict[str, Any]:
    """aiokafka keyword arguments (bootstrap, SASL, TLS) for the test broker as ``principal``."""
    from streams.adapters.kafka import client_kwargs

    return client_kwargs(kafka_settings_as(principal))


def redis_url_from_env() -> str:
    """The test Redis URL; with the services' Redis credentials in it when it has none of its own."""
    from urllib.parse import quote, urlsplit, urlunsplit

    from streams.settings import Settings

    url = os.environ.get("RISKMON_REDIS__URL", DEFAULT_REDIS_URL)
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    redis = Settings().redis
    if redis.password is None or urlsplit(redis.url).port != parts.port:
        return url
    user = quote(redis.username or "default", safe="")
    netloc = f"{user}:{quote(redis.password.get_secret_value(), safe='')}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _load_probe() -> Any:
    """scripts/kafka/probe.py (stdlib only), the same check ``scripts/services status`` runs."""
    path = REPO_ROOT / "scripts" / "kafka" / "probe.py"
    spec = importlib.util.spec_from_file_location("riskmon_services_probe", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_kafka(bootstrap: str) -> str | None:
    """None when the first bootstrap broker answers, else the reason.

    It sends Kafka ApiVersions and Metadata requests (a broker that accepts TCP but is still starting
    does not pass), over TLS and after a SCRAM login when the settings say SASL_SSL; with another
    TLS/SASL setup it only checks the TCP port.
    """
    host, port = _split_hostport(bootstrap.split(",")[0])
    try:
        kafka = kafka_settings_as("worker")
        if kafka.security_protocol in ("PLAINTEXT", "SASL_SSL"):
            creds = {} if kafka.security_protocol == "PLAINTEXT" else {
                "RISKMON_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "RISKMON_KAFKA__SSL_CAFILE": str(kafka.ssl_cafile or ""),
                "RISKMON_KAFKA__SASL_USERNAME": kafka.sasl_username or "",
                "RISKMON_KAFKA__SASL_PASSWORD": kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""}
            _load_probe().probe_kafka(host, port, creds)
        else:
            socket.create_connection((host, port), timeout=2).close()
    except Exception as exc:  # noqa: BLE001 - any failure is "not answering", with its reason
        return f"{type(exc).__name__}: {exc}"
    return None


def check_redis(url: str) -> str | None:
    """None when Redis at ``url`` answers PING, else the reason."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _wait_ok(check: Callable[[str], str | None], address: str) -> str | None:
    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        reason = check(address)
        if reason is None or time.monotonic() >= deadline:
            return reason
        time.sleep(0.25)


class _Health:
    """Session-wide cache: each service is probed until it answers once (a failure is re-probed)."""

    def __init__(self) -> None:
        self.ok: dict[str, bool] = {}

    def require(self, what: str, address: str, check: Callable[[str], str | None]) -> None:
        if self.ok.get(what):
            return
        reason = _wait_ok(check, address)
        if reason is not None:
            pytest.fail(f"{what} is not answering at {address} ({reason}): {HINT}", pytrace=False)
        self.ok[what] = True


_HEALTH = _Health()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``services`` test fails up front, with one clear line, when Kafka or Redis is down."""
    if item.get_closest_marker("services") is None:
        return
    _HEALTH.require("Kafka", kafka_bootstrap_from_env(), check_kafka)
    _HEALTH.require("Redis", redis_url_from_env(), check_redis)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers of the running broker (fails with a hint when it does not answer)."""
    address = kafka_bootstrap_from_env()
    _HEALTH.require("Kafka", address, check_kafka)
    return address


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> Any:
    """The project's KafkaSettings for the test broker (worker principal; SASL/TLS when locked down)."""
    return kafka_settings_as("worker")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the running Redis (fails with a hint when it does not answer)."""
    url = redis_url_from_env()
    _HEALTH.require("Redis", url, check_redis)
    return url


# ----------------------------------------------------------------------------- ports


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released) and not handed out before in this
    process: a test that asks for several ports before its servers bind them gets different ones."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


# ----------------------------------------------------------------------------- names

_TOPIC_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_topic(name: str, max_len: int = 200) -> str:
    """A legal Kafka topic name (``[A-Za-z0-9._-]``, at most 249 characters) from any string.

    >>> sanitize_topic("pytest-test_x[a/b c]-1f2e")
    'pytest-test_x-a-b-c-1f2e'
    """
    cleaned = _TOPIC_ILLEGAL.sub("-", name).strip("-")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    return cleaned[:max_len] or "t"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """``pytest-<test name>-<8 hex>``, legal as a Kafka topic name, consumer group or key prefix."""
    return sanitize_topic(f"pytest-{request.node.name[:120]}-{uuid.uuid4().hex[:8]}")


# ----------------------------------------------------------------------------- kafka topics


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a helper thread.

    Works whether or not the caller is itself inside a running loop (async tests).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="conftest-admin", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def _create_topic(
    bootstrap: str, topic: str, partitions: int, config: dict[str, str], timeout_s: float
) -> None:
    from aiokafka.admin import NewTopic

    from streams.adapters.kafka import create_topics

    spec = NewTopic(topic, num_partitions=partitions, replication_factor=1, topic_configs=config)
    await create_topics(kafka_settings_as("admin", bootstrap), [spec], exist_ok=False, timeout_s=timeout_s)


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.adapters.kafka import client_kwargs

    admin = AIOKafkaAdminClient(**client_kwargs(kafka_settings_as("admin", bootstrap)), request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


TopicFactory = Callable[..., str]


@pytest.fixture
def topic_factory(kafka_bootstrap: str, unique_name: str) -> Iterator[TopicFactory]:
    """Create uniquely named topics for one test; they are deleted after it.

    ``topic_factory(partitions=4, config={"cleanup.policy": "compact"}, name=None, suffix="")``
    returns the topic name: ``name`` if given, else ``<unique_name>[-<suffix>]-<n>``.
    """
    created: list[str] = []

    def make(
        partitions: int = 4,
        config: dict[str, str] | None = None,
        name: str | None = None,
        suffix: str = "",
        timeout_s: float = 30.0,
    ) -> str:
        base = f"{unique_name}-{suffix}" if suffix else unique_name
        topic = name or sanitize_topic(f"{base}-{len(created)}", max_len=249)
        run_coro(_create_topic(kafka_bootstrap, topic, partitions, dict(config or {}), timeout_s))
        created.append(topic)
        return topic

    yield make
    if created:
        run_coro(_delete_topics(kafka_bootstrap, created))


# ----------------------------------------------------------------------------- redis keys


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN + UNLINK); returns how many were deleted."""
    import redis

    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete by unsafe prefix {prefix!r}")
    client = redis.Redis.from_url(url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
        return deleted
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique key prefix ``pytest:<test name>:<8 hex>:``; its keys are deleted after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80]
    prefix = f"pytest:{name}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    delete_prefix(redis_url, prefix)
