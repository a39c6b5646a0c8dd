"""The real local services and the root fixtures: Kafka round trips, compaction, Redis Lua, scripts/services."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import free_port, kafka_kwargs

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scripts" / "services"


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, **{**kafka_kwargs(), "bootstrap_servers": bootstrap}, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
    finally:
        await consumer.stop()
    return records


# ----------------------------------------------------------------------------- Kafka


async def test_kafka_round_trip_keeps_per_key_order(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=4)
    producer = AIOKafkaProducer(**kafka_kwargs(), acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [(f"E{i % 13}".encode(), f"{i}".encode()) for i in range(500)]
        for key, value in sent:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    records = await consume_all(kafka_bootstrap, topic, len(sent))
    assert len(records) == len(sent)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for rec in records:
        by_key[rec.key].append(int(rec.value))
        partitions_of_key[rec.key].add(rec.partition)
    # every key lives on one partition, and its messages come back in the order they were sent
    assert all(len(p) == 1 for p in partitions_of_key.values())
    for key, values in by_key.items():
        assert values == [int(v) for k, v in sent if k == key]
    # the 13 keys spread over more than one of the 4 partitions
    assert len({rec.partition for rec in records}) > 1


async def test_topic_factory_gives_requested_partitions_and_unique_names(
    kafka_bootstrap: str, topic_factory, unique_name: str
) -> None:
    first = topic_factory(partitions=3)
    second = topic_factory(partitions=1, suffix="dlq")
    assert first != second and first.startswith(unique_name) and "dlq" in second
    admin = AIOKafkaAdminClient(**kafka_kwargs())
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([first, second])}
    finally:
        await admin.close()
    assert len(described[first]["partitions"]) == 3
    assert len(described[second]["partitions"]) == 1


async def test_compacted_topic_keeps_last_value_per_key(kafka_bootstrap: str, topic_factory) -> None:
    # small segments and an eager cleaner, so that compaction happens within the test
    topic = topic_factory(
        partitions=1,
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "delete.retention.ms": "100",
        },
    )
    admin = AIOKafkaAdminClient(**kafka_kwargs())
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
    finally:
        await admin.close()
    assert entries["cleanup.policy"] == "compact"

    producer = AIOKafkaProducer(**kafka_kwargs(), acks="all")
    await producer.start()
    try:
        for round_ in range(20):
            for k in range(5):
                await producer.send(topic, f"v{round_}".encode(), key=f"E{k}".encode())
        await producer.flush()
        # keep appending (to one side key) so that the segments holding the updates roll and get cleaned
        deadline = time.monotonic() + 60
        latest: dict[bytes, bytes] = {}
        n_records = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            await producer.send_and_wait(topic, b"tick", key=b"tick")
            records = await consume_all(kafka_bootstrap, topic, expected=10**9, timeout_s=1.5)
            latest = {r.key: r.value for r in records}
            n_records = sum(1 for r in records if r.key != b"tick")
            if n_records == 5:
                break
    finally:
        await producer.stop()
    assert {k: v for k, v in latest.items() if k != b"tick"} == {f"E{k}".encode(): b"v19" for k in range(5)}
    assert n_records == 5, f"compaction left {n_records} of 100 keyed updates"


# ----------------------------------------------------------------------------- Redis

# The idempotent-increment pattern the feature store relies on: apply a delta once per event id.
APPLY_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


def test_redis_ping_and_idempotent_lua(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        apply = client.register_script(APPLY_ONCE)
        keys = [f"{redis_prefix}{{E1}}:seen", f"{redis_prefix}{{E1}}:counters"]
        assert apply(keys=keys, args=["ev-1", "n", 1, "amount_fen", 1250]) == 1
        assert apply(keys=keys, args=["ev-1", "n", 1, "amount_fen", 1250]) == 0  # redelivery: no-op
        assert apply(keys=keys, args=["ev-2", "n", 1, "amount_fen", -250]) == 1
        assert client.hgetall(keys[1]) == {b"n": b"2", b"amount_fen": b"1000"}
        assert sorted(client.keys(redis_prefix + "*")) == sorted(k.encode() for k in keys)
    finally:
        client.close()


def test_redis_prefix_keys_are_removed_after_the_test(redis_url: str) -> None:
    from tests.conftest import delete_prefix

    client = redis.Redis.from_url(redis_url)
    prefix = f"pytest:cleanup-check:{os.getpid()}:{time.time_ns()}:"
    try:
        client.mset({f"{prefix}{i}": i for i in range(2500)})
        client.set(prefix.rstrip(":") + "-other", 1)  # shares the text but not the prefix
        assert delete_prefix(redis_url, prefix) == 2500
        assert client.keys(prefix + "*") == []
        assert client.exists(prefix.rstrip(":") + "-other") == 1
    finally:
        client.delete(prefix.rstrip(":") + "-other")
        client.close()
    with pytest.raises(ValueError):
        delete_prefix(redis_url, "pytest:*")


# ----------------------------------------------------------------------------- scripts/services


def run_services(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SERVICES), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def shared_ports(kafka_bootstrap: str, redis_url: str) -> dict[str, str]:
    """scripts/services' port settings for the services the fixtures point at."""
    from urllib.parse import urlparse

    return {
        "RISKMON_KAFKA_PORT": kafka_bootstrap.split(",")[0].rpartition(":")[2],
        "RISKMON_REDIS_PORT": str(urlparse(redis_url).port or 6379),
    }


def test_status_exits_zero_when_both_answer(kafka_bootstrap: str, redis_url: str) -> None:
    result = run_services("status", env=shared_ports(kafka_bootstrap, redis_url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka  up" in result.stdout and "redis  up" in result.stdout


def test_up_when_already_up_is_quiet_and_fast(kafka_bootstrap: str, redis_url: str) -> None:
    start = time.monotonic()
    result = run_services("up", env=shared_ports(kafka_bootstrap, redis_url))
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert elapsed < 10, f"warm 'scripts/services up' took {elapsed:.1f} s"


def test_status_exits_nonzero_when_nothing_answers(tmp_path: Path) -> None:
    env = {
        "RISKMON_VAR": str(tmp_path / "var"),
        "RISKMON_KAFKA_PORT": str(free_port()),
        "RISKMON_REDIS_PORT": str(free_port()),
        "RISKMON_SERVICES_MODE": "local",
    }
    result = run_services("status", env=env)
    assert result.returncode == 1
    assert "kafka  down" in result.stdout and "redis  down" in result.stdout


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "kafka").mkdir(parents=True)
    (var / "redis").mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # stale pid files pointing at a process that is not ours
        (var / "kafka" / "kafka.pid").write_text(f"{stranger.pid}\n")
        (var / "redis" / "redis.pid").write_text(f"{stranger.pid}\n")
        env = {
            "RISKMON_VAR": str(var),
            "RISKMON_KAFKA_PORT": str(free_port()),
            "RISKMON_REDIS_PORT": str(free_port()),
            "RISKMON_SERVICES_MODE": "local",
        }
        result = run_services("down", env=env)
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None, "scripts/services down killed a process it did not start"
        assert not (var / "kafka" / "kafka.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_second_instance_on_other_ports_up_status_down(tmp_path: Path, kafka_bootstrap: str, redis_url: str) -> None:
    """A full cycle on free ports with its own state dir, leaving the shared services untouched."""
    kafka_port = free_port()
    env = {
        "RISKMON_VAR": str(tmp_path / "var"),
        "RISKMON_KAFKA_PORT": str(kafka_port),
        "RISKMON_KAFKA_CONTROLLER_PORT": str(free_port()),
        "RISKMON_REDIS_PORT": str(free_port()),
        "RISKMON_KAFKA_HEAP": "-Xms128m -Xmx384m",
        "RISKMON_SERVICES_MODE": "local",
        # the plain-text development mode (the shared services of the suite run locked down)
        "RISKMON_SERVICES_SECURITY": "plaintext",
    }
    # a cluster id starting with '-' (1 in 64 random ones) is read as an option by Kafka's storage tool;
    # one left by an older version must be replaced, not reused
    (tmp_path / "var" / "kafka").mkdir(parents=True)
    (tmp_path / "var" / "kafka" / "cluster-id").write_text("-bcdefghijklmnopqrstuv\n")
    try:
        up = run_services("up", env=env)
        assert up.returncode == 0, up.stderr
        cluster_id = (tmp_path / "var" / "kafka" / "cluster-id").read_text().strip()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        status = run_services("status", env=env)
        assert status.returncode == 0, status.stdout
        assert f"127.0.0.1:{kafka_port} (pid" in status.stdout
        assert (tmp_path / "var" / "kafka" / "data" / "meta.properties").exists()
        assert (tmp_path / "var" / "redis" / "data").is_dir()
    finally:
        down = run_services("down", env=env)
    assert down.returncode == 0, down.stderr
    after = run_services("status", env=env)
    assert after.returncode == 1 and "kafka  down" in after.stdout and "redis  down" in after.stdout
    # the shared services are still up
    assert run_services("status", env=shared_ports(kafka_bootstrap, redis_url)).returncode == 0
