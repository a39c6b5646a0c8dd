#!/usr/bin/env python
"""Benchmarks of the live pipeline on the real data, real Kafka and real Redis (``scripts/services up``).

Phases (each with its own consumer group and Redis prefix, all in one run so ratios compare like with like):

1. full replay end to end: one worker running while every invoice (event-time order) is published;
   time from the first message produced to the last one applied in Redis; worker peak RSS;
2. baseline: a plain aiokafka consumer (scripts/benchlib.consume_baseline) reading the same topic, from its first
   message to its last; measured again after every phase-3 worker, and each worker's ratio is taken against the
   mean of the two runs that bracket it (the machine's pace drifts: the same consumer moved 85-210 k msg/s
   between runs of one session);
3. one worker on the pre-filled topic: invoices/s through ingest -> Redis features -> rescoring -> scores, timed
   from the worker's /health answering (group join, first fetch, and the last window's rescoring and commit
   included: stricter than the baseline's first-to-last message);
4. two workers (one consumer group) on the same 4-partition topic: speed-up over phase 3;
5. freshness: a fresh worker, invoices produced at a steady rate (default 1 000/s) for a bounded time;
   p50/p99 from produced (Kafka CreateTime) to the batch's scores acknowledged by the broker.

Writes ``artifacts/bench_stream.json``. Example: ``scripts/bench_stream.py --limit 300000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import benchlib  # noqa: E402
import redis  # noqa: E402

from streams.dataset import DEFAULT_DATA_DIR  # noqa: E402
from streams.replay import replay_records  # noqa: E402
from tests.e2e.harness import Deployment, WorkerProcess, publish, wait_for  # noqa: E402


def processed_count(workers: list[WorkerProcess]) -> int:
    """Messages the workers consumed, applied or dead-lettered, published and committed (their /health)."""
    return sum(int((w.health() or {}).get("processed", 0)) for w in workers)


class RssSampler(threading.Thread):
    def __init__(self, workers: list[WorkerProcess]) -> None:
        super().__init__(daemon=True)
        self.workers, self.peak_mb, self._halt = workers, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_mb = max([self.peak_mb] + [w.rss_mb() for w in self.workers])
            time.sleep(0.5)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak_mb


def run_workers(dep: Deployment, n_workers: int, n_expected: int, *, produce: Any = None, allocate: bool = False,
                timeout_s: float = 900) -> dict[str, Any]:
    """Start workers, optionally produce while they run, wait until ``n_expected`` messages are processed.

    With ``allocate``, the clock stops only once a forced allocation over everything has published
    its credit lines (POST /allocate on the leader answers after the broker acknowledged them).
    """
    workers = [WorkerProcess(dep, f"w{i}") for i in range(n_workers)]
    sampler = RssSampler(workers)
    try:
        for w in workers:
            w.wait_ready(120)
        if n_workers > 1:  # every worker holds partitions: the group has settled
            wait_for(lambda: all((h := w.health()) and h.get("partitions") for w in workers)
                     and sum(len(w.health()["partitions"]) for w in workers) == dep.partitions, 120, "rebalance")
        sampler.start()
        t0 = time.perf_counter()
        produce_s = produce() if produce is not None else None
        first = None
        while True:
            n = processed_count(workers)
            if first is None and n > 0:
                first = time.perf_counter()
            if n >= n_expected:
                break
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"timed out: {n}/{n_expected} processed")
            for w in workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker died:\n{w.log_tail()}")
            time.sleep(0.2)
        t_applied = time.perf_counter()
        allocation = None
        if allocate:
            allocation = next((a for w in workers if (a := w.allocate()) and a.get("ran")), None)
            if allocation is None:
                raise RuntimeError("no worker ran the final allocation")
        t_done = time.perf_counter()
        health = [w.health() for w in workers]
        peak = sampler.stop()
    finally:
        if sampler.is_alive() and not sampler._halt.is_set():
            sampler.stop()
        for w in workers:
            w.stop()
    return {"workers": n_workers, "events": n_expected, "seconds": t_done - t0,
            "seconds_to_last_applied": t_applied - t0,
            "allocation": (allocation or {}).get("summary"),
            "seconds_from_first_applied": t_done - (first or t0),
            "events_per_s": n_expected / (t_done - t0), "produce_seconds": produce_s,
            "peak_rss_mb": peak, "health": health}


async def delete_run_topics(bootstrap: str, prefix: str) -> None:
    """The per-deployment topics the workers created (scores, lines, DLQ, faust's leader topic)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**benchlib.kafka_kwargs(bootstrap))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N invoices in event-time order (default: all)")
    parser.add_argument("--bundle", type=Path, default=REPO / "var" / "bundle")
    from streams.settings import Settings

    settings = Settings()  # the project's client settings: credentials from the env and the services' file
    parser.add_argument("--bootstrap", default=settings.kafka.bootstrap)
    parser.add_argument("--redis", default=settings.redis.url)
    parser.add_argument("--freshness-rate", type=float, default=1000.0)
    parser.add_argument("--freshness-s", type=float, default=30.0)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: full,baseline,one,two,fresh")
    parser.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="a worker setting for every phase (repeatable), e.g. RISKMON_WORKER__RESCORE_WITHIN_S=0")
    parser.add_argument("--one-env", action="append", default=[], metavar="K=V[,K=V...]",
                        help="run phase 'one' once more per option, with these worker settings (e.g. "
                             "RISKMON_WORKER__RESCORE_WITHIN_S=0): levers compared in the same run, same topic")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench_stream.json")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if not (args.bundle / "manifest.json").exists():
        print(f"no bundle at {args.bundle}: riskmon train --out {args.bundle}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:6]
    from streams.adapters.redis_store import connect

    client = connect(settings.redis.model_copy(update={"url": args.redis}))
    t = time.perf_counter()
    records = replay_records(DEFAULT_DATA_DIR)
    if args.limit:
        records = records[: args.limit]
    read_s = time.perf_counter() - t
    # the rows that fail validation go to the DLQ; the others are applied once each
    from streams.pipeline import Source, ingest
    from streams.events import InvoiceEvent
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    n_valid = sum(1 for r in records if isinstance(ingest(r.value, Source("x"), now), InvoiceEvent))
    print(f"{len(records):,} invoices ({n_valid:,} valid), read and sorted in {read_s:.1f} s", flush=True)
    topic = f"bench-stream-{run_id}-invoices"
    asyncio.run(benchlib.create_topic(args.bootstrap, topic, 4))
    result: dict[str, Any] = {"invoices": len(records), "valid": n_valid, "read_sort_s": read_s,
                              "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                                          "load_average_at_start": __import__("os").getloadavg()},
                              "topic_partitions": 4}

    common_env = dict(kv.split("=", 1) for kv in args.env)
    result["worker_env"] = common_env

    def dep(tag: str, invoices: str | None = topic, extra_env: dict[str, str] | None = None) -> Deployment:
        return Deployment(f"bench-{run_id}-{tag}", args.bootstrap, args.redis, f"bench-{run_id}-{tag}", args.bundle,
                          budget_yuan=100_000_000, interval_s=5.0, invoices_topic=invoices,
                          extra_env={**common_env, **(extra_env or {})})

    def cleanup(d: Deployment) -> None:
        from streams.adapters.redis_store import clear_prefix

        clear_prefix(client, d.redis_prefix)

    kv = [(r.key.encode(), r.value) for r in records]
    try:
        if "full" not in skip:
            d = dep("full")
            out = run_workers(d, 1, len(records), allocate=True,
                              produce=lambda: asyncio.run(benchlib.produce(args.bootstrap, topic, kv)).seconds)
            result["full_replay"] = out
            print(f"full replay: {out['seconds']:.1f} s from publish start to the last credit line "
                  f"({out['seconds_to_last_applied']:.1f} s to the last invoice processed; "
                  f"produce {out['produce_seconds']:.1f} s), "
                  f"worker peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
            cleanup(d)
        else:
            asyncio.run(benchlib.produce(args.bootstrap, topic, kv))
        baselines: list[dict[str, Any]] = []

        def baseline() -> float | None:
            """The plain consumer on the same topic, now; every worker phase is bracketed by two of these."""
            if "baseline" in skip:
                return None
            base = asyncio.run(benchlib.consume_baseline(args.bootstrap, topic, len(records)))
            baselines.append(benchlib.as_dict(base))
            result["baseline_plain_aiokafka"] = baselines[0]
            result["baselines_plain_aiokafka"] = baselines
            print(f"plain aiokafka consumer: {base.msgs_per_s:,.0f} msg/s", flush=True)
            return base.msgs_per_s

        def bracketed(out: dict[str, Any], before: float | None, after: float | None) -> None:
            """The worker's rate over the mean of the plain consumer's just before and just after it."""
            if before is not None and after is not None:
                out["plain_msgs_per_s_before_after"] = [round(before), round(after)]
                out["ratio_vs_plain"] = out["events_per_s"] / ((before + after) / 2)

        last = baseline()
        # phase "one" with the defaults, then once per --one-env variant; each bracketed by two baselines
        phases = [("one", "one worker", None)] if "one" not in skip else []
        phases += [(f"one{n}", f"one worker with {spec}", spec) for n, spec in enumerate(args.one_env)]
        for tag, label, spec in phases:
            env = dict(kv.split("=", 1) for kv in (spec or "").split(",") if kv)
            d = dep(tag, extra_env=env)
            out = run_workers(d, 1, len(records))
            cleanup(d)
            after = baseline()
            bracketed(out, last, after)
            last = after
            if spec is None:
                result["one_worker"] = out
            else:
                result.setdefault("one_worker_variants", []).append({"env": env, **out})
            print(f"{label}: {out['events_per_s']:,.0f} invoices/s ({out['seconds']:.1f} s)"
                  + (f", ratio {out['ratio_vs_plain']:.3f}" if "ratio_vs_plain" in out else ""), flush=True)
        if "two" not in skip:
            d = dep("two")
            out = run_workers(d, 2, len(records))
            result["two_workers"] = out
            print(f"two workers: {out['events_per_s']:,.0f} invoices/s ({out['seconds']:.1f} s)", flush=True)
            cleanup(d)
        if "fresh" not in skip:
            n = int(args.freshness_rate * args.freshness_s)
            fresh_records = records[:n]
            d = dep("fresh", invoices=None)
            out = run_workers(d, 1, len(fresh_records), produce=lambda: publish(d, fresh_records, rate=args.freshness_rate))
            fresh = out["health"][0]["freshness"]
            result["freshness"] = {"rate_per_s": args.freshness_rate, "seconds": args.freshness_s, "invoices": n, **fresh}
            print(f"freshness at {args.freshness_rate:,.0f}/s: p50 {fresh.get('p50_s', float('nan')):.3f} s, "
                  f"p99 {fresh.get('p99_s', float('nan')):.3f} s (n={fresh.get('n')})", flush=True)
            cleanup(d)
    finally:
        asyncio.run(benchlib.delete_topic(args.bootstrap, topic))
        asyncio.run(delete_run_topics(args.bootstrap, f"bench-{run_id}-"))
        if "ratio_vs_plain" in result.get("one_worker", {}):
            result["ratio_one_worker_vs_plain"] = result["one_worker"]["ratio_vs_plain"]
        for v in result.get("one_worker_variants", []):
            if "ratio_vs_plain" in v:
                result.setdefault("ratios_variants", {})[",".join(f"{k}={x}" for k, x in v["env"].items())] = \
                    v["ratio_vs_plain"]
        if "one_worker" in result and "two_workers" in result:
            result["speedup_two_workers"] = result["two_workers"]["events_per_s"] / result["one_worker"]["events_per_s"]
        result["load_average_at_end"] = __import__("os").getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k.startswith(("ratio", "speedup"))}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
