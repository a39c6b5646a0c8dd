#!/usr/bin/env python
"""Scale-out benchmark on the three-broker cluster: 1, 2 and 4 workers in one group, with the plain-consumer baseline.

Needs a running three-node Kafka cluster and a Redis, both from ``scripts/services``::

    export RISKMON_VAR=$PWD/var/cl RISKMON_KAFKA_PORT=9180 RISKMON_REDIS_PORT=6480
    RISKMON_KAFKA_BROKERS=3 scripts/services up
    python scripts/bench_cluster.py --var var/cl --bootstrap 127.0.0.1:9180,127.0.0.1:9181,127.0.0.1:9182 \\
        --redis redis://127.0.0.1:6480/0 --limit 60000 --workers 1,2,4

In one run, on one topic (4 partitions, replication 3, ``min.insync.replicas=2``) holding the first
``--limit`` real invoices in event-time order:

1. baseline: a plain aiokafka consumer (``benchlib.consume_baseline``) reads the topic;
2. for each N in ``--workers``: N ``riskmon worker`` processes in one consumer group (own Redis
   prefix each time) fold the topic; throughput is measured from the moment every worker holds
   partitions to the last invoice applied, and CPU seconds are read from ``/proc`` for the workers,
   the broker JVMs and redis-server over the same interval (per 1 000 invoices);
3. the leader's global step at 10^5 and 10^6 enterprises: the exact allocator on synthetic
   enterprises (``bench_allocator.synthetic``), and reading 10^5 scores back with
   ``RedisScoreStore.all`` (what the leader does every run), with the size of the keys holding them.

Writes ``artifacts/bench_cluster.json`` and prints a table. CPU seconds are summed over all cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import benchlib  # noqa: E402
import redis  # noqa: E402
from bench_stream import applied_count, delete_run_topics  # noqa: E402

from streams.dataset import DEFAULT_DATA_DIR, load_enterprises  # noqa: E402
from streams.replay import replay_records  # noqa: E402
from tests.e2e.harness import Deployment, WorkerProcess, wait_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15 of stat)


def service_pids(var: Path, redis_var: Path) -> dict[str, list[int]]:
    """Broker and redis-server pids from the pid files ``scripts/services`` wrote under ``var``."""
    def read(paths: list[Path]) -> list[int]:
        out = []
        for p in paths:
            try:
                pid = int(p.read_text().strip())
            except (OSError, ValueError):
                continue
            if Path(f"/proc/{pid}").exists():
                out.append(pid)
        return out
    return {"brokers": read(sorted(var.glob("kafka-cluster/node-*/kafka.pid")) or [var / "kafka" / "kafka.pid"]),
            "redis": read(sorted(redis_var.glob("redis-cluster/node-*/redis.pid")) or [redis_var / "redis" / "redis.pid"])}


def cpu_snapshot(pids: dict[str, list[int]], workers: list[WorkerProcess]) -> dict[str, float]:
    snap = {name: sum(cpu_s(p) for p in ps) for name, ps in pids.items()}
    snap["workers"] = sum(cpu_s(w.proc.pid) for w in workers)
    return snap


def run_group(dep: Deployment, n_workers: int, n_expected: int, enterprises: list[str], client: redis.Redis,
              pids: dict[str, list[int]], timeout_s: float) -> dict[str, Any]:
    prefix = dep.redis_prefix.rstrip(":")
    workers = [WorkerProcess(dep, f"w{i}") for i in range(n_workers)]
    try:
        for w in workers:
            w.wait_ready(180)
        wait_for(lambda: sum(len((w.health() or {}).get("partitions") or []) for w in workers) == dep.partitions
                 and all((w.health() or {}).get("partitions") for w in workers), 180, "every worker holding partitions")
        n0 = applied_count(client, prefix, enterprises)
        c0, t0 = cpu_snapshot(pids, workers), time.perf_counter()
        while (n := applied_count(client, prefix, enterprises)) < n_expected:
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"timed out: {n}/{n_expected} applied")
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker died:\n{w.log_tail()}")
            time.sleep(0.1)
        c1, t1 = cpu_snapshot(pids, workers), time.perf_counter()
        processed = [(w.health() or {}).get("processed", 0) for w in workers]
    finally:
        for w in workers:
            w.stop()
    measured = n_expected - n0
    seconds = t1 - t0
    cpu = {k: c1[k] - c0[k] for k in c1}
    return {"workers": n_workers, "invoices_measured": measured, "applied_before_all_joined": n0, "seconds": seconds,
            "invoices_per_s": measured / seconds, "per_worker_invoices_per_s": measured / seconds / n_workers,
            "processed_per_worker": processed,
            "cpu_s": cpu, "cpu_s_per_1000": {k: v / measured * 1000 for k, v in cpu.items()}}


def leader_step_costs(client: redis.Redis, run_id: str) -> dict[str, Any]:
    """The allocator's exact solve at 10^5 and 10^6 enterprises; 10^5 scores read from one Redis hash."""
    from bench_allocator import M, synthetic

    from allocator import ChurnCurves, make_problem, solve_exact
    from streams.adapters.redis_store import RedisScoreStore, clear_prefix
    from streams.events import EnterpriseScore

    curves = ChurnCurves.from_csv(DEFAULT_DATA_DIR / "churn.csv")
    out: dict[str, Any] = {}
    for n in (100_000, 1_000_000):
        apps = synthetic(n, seed=0)
        problem = make_problem(apps, n // 4 * M + 55_000, curves)
        times = []
        for _ in range(3 if n <= 100_000 else 1):
            t = time.perf_counter()
            solve_exact(problem)
            times.append(time.perf_counter() - t)
        out[f"exact_allocator_{n}_s"] = statistics.median(times)
        del apps, problem
    # the leader reads every score each run: one hash, one HGETALL
    n = 100_000
    prefix = f"bench-cluster-{run_id}-scores"
    store = RedisScoreStore(client, prefix)
    now = dt.datetime(2020, 3, 1, tzinfo=dt.UTC)
    scores = [EnterpriseScore(enterprise_id=f"S{i}", as_of=dt.date(2020, 2, 29), scored_at=now, rating="B",
                              rating_known=False, rating_probabilities={"A": 0.1, "B": 0.6, "C": 0.2, "D": 0.1},
                              default_probability=0.05, segment="mid-end", industry="retail", legal_form="ltd", n_invoices=100,
                              bundle_version="bench") for i in range(n)]
    for i in range(0, n, 5_000):
        store.put_many(scores[i : i + 5_000])
    times = []
    for _ in range(3):
        t = time.perf_counter()
        got = store.all()
        times.append(time.perf_counter() - t)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))  # one hash, or one per bucket (layout v2)
    out["scores_entries"] = len(got)
    out["scores_keys"] = len(keys)
    out["scores_bytes"] = sum(int(client.memory_usage(k) or 0) for k in keys)
    out["scores_all_100000_s"] = statistics.median(times)
    clear_prefix(client, prefix)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("RISKMON_KAFKA__BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--redis", default=os.environ.get("RISKMON_REDIS__URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--var", type=Path, default=Path(os.environ.get("RISKMON_VAR", REPO / "var" / "services")),
                        help="scripts/services state folder (for the broker and Redis pids)")
    parser.add_argument("--redis-var", type=Path, help="state folder of the Redis, when not --var")
    parser.add_argument("--bundle", type=Path, default=REPO / "var" / "bundle")
    parser.add_argument("--limit", type=int, default=60_000, help="the first N invoices in event-time order")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--skip-leader", action="store_true", help="skip the allocator / scores-hash measurements")
    parser.add_argument("--timeout-s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench_cluster.json")
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").exists():
        print(f"no bundle at {args.bundle}: riskmon train --out {args.bundle} (or --bundle DIR)", file=sys.stderr)
        return 2
    pids = service_pids(args.var.resolve(), (args.redis_var or args.var).resolve())
    if not pids["brokers"] or not pids["redis"]:
        print(f"no running brokers/redis found under {args.var} (pid files of scripts/services)", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:6]
    client = redis.Redis.from_url(args.redis)
    enterprises = sorted(load_enterprises(DEFAULT_DATA_DIR)["enterprise_id"])
    records = replay_records(DEFAULT_DATA_DIR)[: args.limit]
    from streams.events import InvoiceEvent
    from streams.pipeline import Source, ingest

    now = dt.datetime(2020, 3, 1, tzinfo=dt.UTC)
    n_valid = sum(1 for r in records if isinstance(ingest(r.value, Source("x"), now), InvoiceEvent))
    insync = min(2, args.replication)
    result: dict[str, Any] = {
        "invoices": len(records), "valid": n_valid, "partitions": 4, "replication": args.replication,
        "min_insync_replicas": insync, "brokers": len(pids["brokers"]), "redis_processes": len(pids["redis"]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}}
    topic = f"bench-cluster-{run_id}-invoices"
    asyncio.run(benchlib.create_topic(args.bootstrap, topic, 4, {"min.insync.replicas": str(insync)},
                                      replication=args.replication))
    try:
        c0 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        produced = asyncio.run(benchlib.produce(args.bootstrap, topic, [(r.key.encode(), r.value) for r in records],
                                               acks="all"))
        c1 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        result["produce"] = {**benchlib.as_dict(produced),
                             "broker_cpu_s_per_1000": (c1["brokers"] - c0["brokers"]) / len(records) * 1000}
        print(f"produced {len(records):,} invoices (acks=all) at {produced.msgs_per_s:,.0f}/s", flush=True)
        c0 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        base = asyncio.run(benchlib.consume_baseline(args.bootstrap, topic, len(records)))
        c1 = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
        result["baseline_plain_aiokafka"] = {**benchlib.as_dict(base),
                                             "broker_cpu_s_per_1000": (c1["brokers"] - c0["brokers"]) / len(records) * 1000}
        print(f"plain aiokafka consumer: {base.msgs_per_s:,.0f} msg/s", flush=True)
        result["groups"] = []
        for n in [int(x) for x in args.workers.split(",") if x.strip()]:
            dep = Deployment(f"bench-{run_id}-w{n}", args.bootstrap, args.redis, f"bench-{run_id}-w{n}", args.bundle,
                             budget_yuan=100_000_000, interval_s=5.0, invoices_topic=topic,
                             replication=args.replication, min_insync_replicas=insync)
            out = run_group(dep, n, n_valid, enterprises, client, pids, args.timeout_s)
            out["ratio_vs_plain_consumer"] = out["invoices_per_s"] / base.msgs_per_s
            result["groups"].append(out)
            cpu = out["cpu_s_per_1000"]
            print(f"{n} worker(s): {out['invoices_per_s']:,.0f} invoices/s ({out['per_worker_invoices_per_s']:,.0f} per "
                  f"worker), CPU s per 1000: workers {cpu['workers']:.3f}, brokers {cpu['brokers']:.3f}, "
                  f"redis {cpu['redis']:.3f}", flush=True)
            from streams.adapters.redis_store import clear_prefix

            clear_prefix(client, dep.redis_prefix)
        if not args.skip_leader:
            result["leader_step"] = leader_step_costs(client, run_id)
            print(json.dumps(result["leader_step"], indent=2), flush=True)
    finally:
        asyncio.run(benchlib.delete_topic(args.bootstrap, topic))
        asyncio.run(delete_run_topics(args.bootstrap, f"bench-{run_id}-"))
        result["machine"]["load_average_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
