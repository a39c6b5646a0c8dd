"""The locked-down services (issue 11 item 5): the forgeries of the issue are refused by Kafka and Redis.

These run against the suite's shared services, which ``scripts/services up`` starts locked down by
default; on services started with ``RISKMON_SERVICES_SECURITY=plaintext`` they are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from urllib.parse import urlsplit

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from streams.adapters.kafka import client_kwargs, read_topic
from streams.events import CreditLine
from streams.settings import Settings, credentials_path
from tests.conftest import kafka_kwargs, kafka_settings_as


@pytest.fixture(scope="module", autouse=True)
def locked_down(kafka_bootstrap: str, redis_url: str) -> None:
    if kafka_settings_as("worker").security_protocol == "PLAINTEXT":
        pytest.skip("the services run in plain text (RISKMON_SERVICES_SECURITY=plaintext): nothing to refuse")


def _fake_line(enterprise_id: str = "E999") -> bytes:
    line = CreditLine(enterprise_id=enterprise_id, allocation_id="forged", as_of="2020-01-01", amount_yuan=1_000_000.0,
                      rate=0.0465, expected_profit_yuan=1.0, default_probability=0.9, rating="D", segment="x",
                      reasons=["forged"], bundle_version="forged", solver="forged", decided_at="2026-01-01T00:00:00Z")
    return line.model_dump_json().encode()


def test_the_credentials_file_is_private_and_complete() -> None:
    path = credentials_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = Settings()
    assert s.kafka.security_protocol == "SASL_SSL" and s.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert s.kafka.ssl_cafile is not None and s.kafka.ssl_cafile.is_file()
    assert s.redis.password is not None and s.worker.http_token is not None


def test_redis_without_credentials_is_refused_and_cannot_plant_a_score(redis_url: str, redis_prefix: str) -> None:
    parts = urlsplit(redis_url)
    anonymous = redis.Redis(host=parts.hostname, port=parts.port or 6379, socket_timeout=5)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        # the forgery of issue 11: a fake score written straight into Redis
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.hset(f"{redis_prefix}{{E1}}:score", mapping={"default_probability": "0.0", "rating": "A"})
        # the default user keeps its commands for the AOF loader (scripts/services), but no one may log in as it
        for user, password in (("riskmon", "guess"), ("default", ""), ("default", "guess")):
            wrong = redis.Redis(host=parts.hostname, port=parts.port or 6379, username=user, password=password)
            with pytest.raises(redis.exceptions.AuthenticationError):
                wrong.ping()
            wrong.close()
    finally:
        anonymous.close()
    client = redis.Redis.from_url(redis_url)  # with the credentials: allowed, and nothing was planted
    try:
        assert client.ping() is True
        assert client.exists(f"{redis_prefix}{{E1}}:score") == 0
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli_ping_is_refused(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    out = subprocess.run(["redis-cli", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "ping"],
                         capture_output=True, text=True, timeout=10, env={k: v for k, v in os.environ.items()
                                                                           if k != "REDISCLI_AUTH"})
    assert "NOAUTH" in out.stdout + out.stderr and "PONG" not in out.stdout


async def test_a_plain_kafka_producer_is_refused(kafka_bootstrap: str) -> None:
    for protocol in ("PLAINTEXT", "SSL"):  # no TLS at all; TLS without SASL
        kwargs = {"bootstrap_servers": kafka_bootstrap, "security_protocol": protocol, "request_timeout_ms": 3000}
        if protocol == "SSL":
            kwargs["ssl_context"] = client_kwargs(kafka_settings_as("worker"))["ssl_context"]
        producer = AIOKafkaProducer(**kwargs)
        with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
            await asyncio.wait_for(producer.start(), 20)
        await producer.stop()


async def test_wrong_password_is_refused(kafka_bootstrap: str) -> None:
    from pydantic import SecretStr

    kafka = kafka_settings_as("worker").model_copy(update={"sasl_password": SecretStr("guess")})
    producer = AIOKafkaProducer(**client_kwargs(kafka), request_timeout_ms=3000)
    with pytest.raises((KafkaError, OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(producer.start(), 20)
    await producer.stop()


async def test_a_producer_principal_cannot_write_credit_lines_but_the_worker_can(topic_factory) -> None:
    lines = topic_factory(partitions=1, config={"cleanup.policy": "compact"}, suffix="credit-lines")
    producer = AIOKafkaProducer(**kafka_kwargs("producer"), request_timeout_ms=10000)
    await producer.start()
    try:
        # the forgery of issue 11: a fake line on credit-lines from an invoicing system's principal
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(lines, _fake_line(), key=b"E999")
        with pytest.raises(TopicAuthorizationFailedError):  # the real topic name too
            await producer.send_and_wait("credit-lines", _fake_line(), key=b"E999")
    finally:
        await producer.stop()
    assert await read_topic(kafka_settings_as("admin"), lines, timeout_s=5) == []
    worker = AIOKafkaProducer(**kafka_kwargs("worker"))
    await worker.start()
    try:
        await worker.send_and_wait(lines, _fake_line("E1"), key=b"E1")
    finally:
        await worker.stop()
    assert [k for k, _, _ in await read_topic(kafka_settings_as("admin"), lines, timeout_s=10)] == ["E1"]
