"""Kill tests on real clusters started by ``scripts/services`` (marked ``cluster``).

* One broker of a three-node KRaft cluster is SIGKILLed in the middle of a replay of a real-data
  slice, while a ``riskmon worker`` consumes it (topics with replication 3, ``min.insync.replicas=2``,
  idempotent ``acks=all`` producers). Afterwards the features equal the batch fold, every message
  is applied or dead-lettered (three bad messages are sent while the broker is down), credit lines
  are still published, and the longest pause in applied invoices is reported.

* One master of a Redis Cluster (three masters, one replica each) is SIGKILLed while a worker on
  ``redis+cluster://`` folds a replay; its replica takes over and the same checks hold. Separately,
  at the Redis level, what a master's SIGKILL loses with ``appendfsync everysec`` and ``always``,
  with and without ``WAIT 1``.

The cluster gets its own ports and state folder and is deleted afterwards. If it cannot start
(no Java, no free ports), the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from streams.adapters.kafka import await_leaders, client_kwargs, ensure_topics, make_producer
from streams.adapters.redis_store import RedisFeatureStore, connect
from streams.errors import StreamError
from streams.events import AllocationSummary, CreditLine, DeadLetter, InvoiceEvent
from streams.features.fold import fold_all
from streams.pipeline import Source, ingest
from streams.replay import ReplayRecord, replay_records
from streams.settings import KafkaSettings, RedisSettings
from tests.bundle_fixture import get_test_bundle
from tests.e2e.clusters import LocalCluster, start_cluster
from tests.e2e.harness import ROOT, Deployment, GatedPublisher, WorkerProcess, read, short, wait_for

pytestmark = pytest.mark.cluster

# A, B, C and D-rated enterprises of the real data (~5 000 invoices)
SLICE = ("E16", "E26", "E42", "E12", "E28", "E99")
BAD_MESSAGES = (b"{not json", b"", b'{"event_id": "x-1", "enterprise_id": "E16"}')
REPORT_DIR = ROOT / "var" / "test-logs"


@pytest.fixture(scope="module")
def records() -> list[ReplayRecord]:
    return replay_records(enterprises=set(SLICE))


@pytest.fixture(scope="module")
def expected(records: list[ReplayRecord]) -> dict[str, object]:
    now = dt.datetime(2020, 3, 1, tzinfo=dt.UTC)
    events = [e for r in records if isinstance(e := ingest(r.value, Source("x"), now), InvoiceEvent)]
    return fold_all(events)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[LocalCluster]:
    cluster = start_cluster("kafka", "kafka3")
    if isinstance(cluster, str):
        pytest.skip(f"three-broker Kafka cluster could not start: {cluster}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _bootstrap(cluster: LocalCluster) -> str:
    return ",".join(f"127.0.0.1:{cluster.port(i)}" for i in range(1, cluster.nodes + 1))


class _Progress:
    """Samples a counter every 0.1 s in a thread; reports the longest stretch without progress."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.count()))
            except (redis.RedisError, StreamError):  # the store is failing over: no sample
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_pause_s(self, after: float, total: int) -> float:
        """Longest time between two increases of the counter after ``after``, while it was below ``total``."""
        last_t, last_n, longest = after, None, 0.0
        for t, n in self.samples:
            if t < after:
                last_n = n
                continue
            if last_n is None or n > last_n:
                longest = max(longest, t - last_t)
                last_t, last_n = t, n
            if n >= total:
                break
        return longest


async def _leaders(kafka: KafkaSettings, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """partition -> (leader node id, number of replicas), once every partition has a leader (the broker asked
    may not know a topic just created for a moment: one CI run read ``{}`` here)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        return (await await_leaders(admin, {topic: partitions}, 60.0))[topic]
    finally:
        await admin.close()


async def _send_raw(kafka: KafkaSettings, topic: str, values: tuple[bytes, ...]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for value in values:
            await (await producer.send(topic, value, key=b"E16"))
    finally:
        await producer.stop()


def _applied(client: redis.Redis, prefix: str) -> int:
    return sum(s.n_events for s in RedisFeatureStore(client, prefix).load_many(list(SLICE)))


def _assert_features_equal(client: redis.Redis, prefix: str, expected: dict) -> None:  # type: ignore[type-arg]
    states = {s.enterprise_id: s for s in RedisFeatureStore(client, prefix).load_many(sorted(expected),
                                                                                       with_counterparties=True)}
    for eid, want in expected.items():
        assert states[eid].counters == want.counters, eid
        assert states[eid].counterparties == want.counterparties, eid


def _report(name: str, data: dict[str, object]) -> None:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in data.items()))


def test_sigkill_one_broker_of_three_mid_replay(kafka_cluster: LocalCluster, records: list[ReplayRecord],
                                                expected: dict, redis_url: str, redis_prefix: str,  # type: ignore[type-arg]
                                                unique_name: str) -> None:
    n_valid = sum(len(s.seen) for s in expected.values())  # type: ignore[attr-defined]
    assert n_valid == len(records)
    d = Deployment(short(unique_name), _bootstrap(kafka_cluster), redis_url, redis_prefix, get_test_bundle(),
                   replication=3, min_insync_replicas=2, interval_s=1.0)
    settings = d.settings()
    topics = d.topics()
    asyncio.run(ensure_topics(settings.kafka, topics))
    leaders = asyncio.run(_leaders(settings.kafka, topics.invoices, topics.partitions))
    assert {replicas for _, replicas in leaders.values()} == {3}, leaders
    victim = Counter(leader for leader, _ in leaders.values()).most_common(1)[0][0]
    client = redis.Redis.from_url(redis_url)
    prefix = redis_prefix.rstrip(":")
    worker = WorkerProcess(d, "cluster-kafka")
    try:
        worker.wait_ready(timeout_s=180)
        with _Progress(lambda: _applied(client, prefix)) as progress:
            publisher = GatedPublisher(d, records).start()
            wait_for(lambda: _applied(client, prefix) >= n_valid // 3, 120, "a third applied", worker, every_s=0.05)
            killed_at = time.monotonic()
            killed_at_ms = time.time() * 1000
            kafka_cluster.sigkill(victim)
            at_kill = _applied(client, prefix)
            assert at_kill <= len(publisher.first) < n_valid
            publisher.release()
            t_bad = time.monotonic()
            asyncio.run(_send_raw(settings.kafka, topics.invoices, BAD_MESSAGES))  # acknowledged by the survivors
            bad_acked_s = time.monotonic() - t_bad
            assert publisher.join(240), "the replay did not finish within 240 s of the kill"
            wait_for(lambda: _applied(client, prefix) == n_valid, 240, "all invoices applied after the kill", worker)
            pause_s = progress.longest_pause_s(killed_at, n_valid)
        wait_for(lambda: (h := worker.health()) and h["processed"] >= len(records) + len(BAD_MESSAGES), 60,
                 "the worker's processed counter", worker)
        result = wait_for(lambda: (r := worker.allocate()) and r.get("ran") and r, 120, "a forced allocation", worker)
        assert worker.proc.poll() is None
        after_kill = [AllocationSummary.model_validate_json(v) for _, v, ts in read(d, topics.allocations) if ts > killed_at_ms]
        lines: dict[str, CreditLine] = {}
        for key, value, _ in read(d, topics.credit_lines):
            line = CreditLine.model_validate_json(value)
            lines[line.enterprise_id] = line
        dead = [DeadLetter.model_validate_json(v) for _, v, _ in read(d, topics.dlq)]
        after = asyncio.run(_leaders(settings.kafka, topics.invoices, topics.partitions))
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()

    _assert_features_equal(client, prefix, expected)
    # every message applied or dead-lettered: the valid ones are in the fold, the bad ones in the DLQ
    assert sorted(base64.b64decode(x.raw_base64) for x in dead) == sorted(BAD_MESSAGES)
    # credit lines keep being published after the kill, by the leader, from the survivors
    assert after_kill and after_kill[-1].allocation_id == result["summary"]["allocation_id"]
    assert set(lines) == set(SLICE)
    assert sum(line.amount_yuan for line in lines.values()) <= d.budget_yuan + 1e-6
    assert victim not in {leader for leader, _ in after.values()}
    _report("cluster-kill-kafka", {
        "broker_killed": victim, "partitions_it_led": sum(1 for lead, _ in leaders.values() if lead == victim),
        "applied_at_kill": at_kill, "invoices": n_valid, "longest_pause_s": round(pause_s, 1),
        "bad_messages_acked_after_s": round(bad_acked_s, 1), "dead_lettered": len(dead),
        "allocations_after_kill": len(after_kill), "cluster_start_s": round(kafka_cluster.started_s, 1),
    })


# ----------------------------------------------------------------------------- Redis Cluster


@pytest.fixture(params=["everysec", "always"])
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    fsync = str(request.param)
    cluster = start_cluster("redis", f"redis3-{fsync}", {"RISKMON_REDIS_APPENDFSYNC": fsync})
    if isinstance(cluster, str):
        pytest.skip(f"Redis Cluster could not start: {cluster}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _write_through_master_kill(cluster: LocalCluster, rc: redis.RedisCluster, tag: str, *, wait_replica: bool,
                               kill_after_s: float = 1.5) -> dict[str, object]:
    """SADD event ids to one hash-tagged key, SIGKILL its master after ``kill_after_s``, write on through the failover.

    A write counts as acknowledged when SADD returned (and, with ``wait_replica``, when ``WAIT 1``
    confirmed a replica has it). Returns what was acknowledged before the kill and lost after it.
    """
    key = f"killtest:{{{tag}}}:seen"
    victim = rc.get_node_from_key(key)
    victim_index = int(victim.port) - cluster.base_port + 1
    acked_before: list[str] = []
    errors = 0
    last_error: Exception | None = None
    t_kill: float | None = None
    t_resumed: float | None = None
    start = time.monotonic()
    i = 0
    while t_resumed is None or time.monotonic() - t_resumed < 0.5:
        now = time.monotonic()
        if t_kill is None and now - start >= kill_after_s:
            cluster.sigkill(victim_index)
            t_kill = now
        if t_kill is not None and now - t_kill > 60:
            raise AssertionError(f"no write accepted within 60 s of killing the master of {key} ({errors} errors, "
                                 f"last {last_error!r})")
        i += 1
        event_id = f"ev-{i}"
        try:
            pipe = rc.get_node_from_key(key).redis_connection.pipeline(transaction=False)
            pipe.sadd(key, event_id)
            if wait_replica:
                pipe.execute_command("WAIT", 1, 1000)
            replies = pipe.execute()
        except redis.RedisError as exc:
            errors += 1
            last_error = exc
            time.sleep(0.05)
            try:
                rc.nodes_manager.initialize()  # learn the new slot owner once the replica is promoted
            except redis.RedisError:
                pass
            continue
        if t_kill is None:
            if not wait_replica or int(replies[1]) >= 1:
                acked_before.append(event_id)
        elif t_resumed is None:
            t_resumed = time.monotonic()
    members = {m.decode() for m in rc.smembers(key)}
    new_master = rc.get_node_from_key(key)
    return {"acked_before_kill": len(acked_before), "lost": len(set(acked_before) - members),
            "pause_s": round((t_resumed or 0) - (t_kill or 0), 2), "errors": errors,
            "failed_over": new_master.port != victim.port, "killed_node": victim_index}


def test_sigkill_one_redis_master_replica_takes_over(redis_cluster: LocalCluster) -> None:
    fsync = redis_cluster.env["RISKMON_REDIS_APPENDFSYNC"]
    from redis.cluster import ClusterNode

    # every node as a seed: the one given first may be the master this test kills
    seeds = [ClusterNode("127.0.0.1", redis_cluster.port(i)) for i in range(1, redis_cluster.nodes + 1)]
    rc = redis.RedisCluster(startup_nodes=seeds, socket_timeout=2, socket_connect_timeout=1)
    try:
        slots = {rc.keyslot(f"{{{t}}}") for t in ("E1", "E2")}
        masters = {rc.get_node_from_key(f"x:{{{t}}}").port for t in ("E1", "E2")}
        assert len(masters) == 2, f"E1 and E2 hash to one master ({slots}); pick other tags"
        plain = _write_through_master_kill(redis_cluster, rc, "E1", wait_replica=False)
        waited = _write_through_master_kill(redis_cluster, rc, "E2", wait_replica=True)
        # a killed node comes back through the same script and rejoins as a replica
        up = redis_cluster.run("up", "redis", timeout_s=120)
        assert up.returncode == 0, up.stderr
        status = redis_cluster.status()
    finally:
        rc.close()
    assert plain["failed_over"] and waited["failed_over"]
    assert waited["lost"] == 0  # WAIT 1: a write a replica confirmed survives its master's SIGKILL
    assert plain["acked_before_kill"] and waited["acked_before_kill"]  # type: ignore[truthy-bool]
    assert status.count("cluster ok") == redis_cluster.nodes, status
    _report(f"cluster-kill-redis-{fsync}", {
        "appendfsync": fsync, "node_timeout_ms": 3000,
        "no_wait_acked": plain["acked_before_kill"], "no_wait_lost": plain["lost"], "no_wait_pause_s": plain["pause_s"],
        "wait1_acked": waited["acked_before_kill"], "wait1_lost": waited["lost"], "wait1_pause_s": waited["pause_s"],
        "cluster_start_s": round(redis_cluster.started_s, 1)})


@pytest.fixture(scope="module")
def redis_cluster_for_worker() -> Iterator[LocalCluster]:
    cluster = start_cluster("redis", "redis3-worker")
    if isinstance(cluster, str):
        pytest.skip(f"Redis Cluster could not start: {cluster}")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_sigkill_one_redis_master_mid_replay(redis_cluster_for_worker: LocalCluster, records: list[ReplayRecord],
                                             expected: dict, kafka_bootstrap: str, unique_name: str,  # type: ignore[type-arg]
                                             topic_factory) -> None:  # type: ignore[no-untyped-def]
    cluster = redis_cluster_for_worker
    n_valid = sum(len(s.seen) for s in expected.values())  # type: ignore[attr-defined]
    url = f"redis+cluster://127.0.0.1:{cluster.base_port}/0"
    prefix = f"pytest-{unique_name[-8:]}"
    d = Deployment(short(unique_name), kafka_bootstrap, url, prefix, get_test_bundle(), interval_s=1.0)
    t = d.topics()
    for name, config in ((t.invoices, None), (t.dlq, None), (t.scores, {"cleanup.policy": "compact"}),
                         (t.credit_lines, {"cleanup.policy": "compact"})):
        topic_factory(partitions=d.partitions, config=config, name=name)
    topic_factory(partitions=1, name=t.allocations)
    client = connect(RedisSettings(url=url, socket_timeout_s=2.0))
    # the master holding most of the slice's enterprises
    owners = Counter(int(client.get_node_from_key(f"x:{{{e}}}").port) for e in SLICE)
    victim_port, n_owned = owners.most_common(1)[0]
    victim = victim_port - cluster.base_port + 1
    worker = WorkerProcess(d, "cluster-redis")
    try:
        worker.wait_ready(timeout_s=180)
        with _Progress(lambda: _applied(client, prefix)) as progress:
            publisher = GatedPublisher(d, records).start()
            wait_for(lambda: _applied(client, prefix) >= n_valid // 3, 120, "a third applied", worker, every_s=0.05)
            killed_at = time.monotonic()
            killed_at_ms = time.time() * 1000
            cluster.sigkill(victim)
            assert publisher.join(240), "the replay did not finish within 240 s of the kill"
            wait_for(lambda: _safe_applied(client, prefix) == n_valid, 240, "all invoices applied after the kill", worker)
            pause_s = progress.longest_pause_s(killed_at, n_valid)
        result = wait_for(lambda: (r := worker.allocate()) and r.get("ran") and r, 120, "a forced allocation", worker)
        assert worker.proc.poll() is None
        after_kill = [AllocationSummary.model_validate_json(v) for _, v, ts in read(d, t.allocations) if ts > killed_at_ms]
        lines = {CreditLine.model_validate_json(v).enterprise_id for _, v, _ in read(d, t.credit_lines)}
        health = worker.health() or {}
        retries = next((float(line.split()[-1]) for line in worker.metrics().splitlines()
                        if line.startswith("riskmon_store_retries_total ")), 0.0)
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    _assert_features_equal(client, prefix, expected)
    assert after_kill and after_kill[-1].allocation_id == result["summary"]["allocation_id"]
    assert lines == set(SLICE)
    _report("cluster-kill-redis-worker", {
        "master_killed": victim, "slice_enterprises_on_it": n_owned, "invoices": n_valid,
        "longest_pause_s": round(pause_s, 1), "allocations_after_kill": len(after_kill),
        "store_retries": retries, "worker_status_after": health.get("status"),
        "cluster_start_s": round(cluster.started_s, 1)})


def _safe_applied(client: redis.Redis, prefix: str) -> int:
    try:
        return _applied(client, prefix)
    except (redis.RedisError, StreamError):
        return -1
