#!/usr/bin/env python
"""Same-run benchmark: the full real-data Kafka replay through one worker vs the backtest of the same data.

Needs Kafka and Redis (``scripts/services up``; ``RISKMON_KAFKA__BOOTSTRAP`` / ``RISKMON_REDIS__URL``
name them). In one run:

1. **Kafka replay** (the baseline): read the invoice file as ``riskmon replay`` does, publish every
   row to a fresh topic in event-time order while one ``riskmon worker`` consumes it; timed from the
   start of reading to the last message processed (applied or dead-lettered, published, committed). Worker CPU time and peak RSS are
   sampled from ``/proc``; the producer's CPU is this process's.
2. **Backtest, quarterly, first run**: ``riskmon backtest --as-of quarterly`` over all enterprises in
   a child process, with an *empty* event-cache folder, so the validation of every row and the
   Parquet cache are inside the timing (no hidden warm-up). Wall, CPU (the child and its own children:
   the process that reads and folds, the one that draws half the figures) and peak RSS of the child.
3. **Backtest, monthly** (cache now warm, said so in the output), and optionally the old
   event-by-event engine (``--engine events``, quarterly, warm cache) for comparison.

Prints the ratio Kafka / backtest (1 vs 2; also with the replay timed from its first publish, the
file read and sorted before it left out) and writes ``artifacts/bench_backtest.json``. Both sides
run on the same machine in the same run; on a shared machine the load is recorded with them.

Usage: ``scripts/bench_backtest.py [--bundle DIR] [--skip kafka,monthly,events]``
(the bundle defaults to ``var/bundle``, else the cached test bundle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class _Sampler(threading.Thread):
    """Peak RSS and last CPU time of a worker process, sampled every 0.5 s."""

    def __init__(self, worker: Any) -> None:
        super().__init__(daemon=True)
        self.worker, self.peak_mb, self.cpu_s, self._halt = worker, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_mb = max(self.peak_mb, self.worker.rss_mb())
            self.cpu_s = max(self.cpu_s, _cpu_s(self.worker.proc.pid))
            time.sleep(0.5)

    def stop(self) -> None:
        self.cpu_s = max(self.cpu_s, _cpu_s(self.worker.proc.pid))
        self._halt.set()
        self.join()


def kafka_replay(bundle: Path, bootstrap: str, redis_url: str, unsigned: bool = False) -> dict[str, Any]:
    """Phase 1: read + publish every invoice while one worker applies them; until the last is in Redis."""
    import benchlib
    from bench_stream import delete_run_topics, processed_count

    from streams.adapters.redis_store import clear_prefix
    from streams.dataset import DEFAULT_DATA_DIR
    from streams.replay import replay_records
    from tests.e2e.harness import Deployment, WorkerProcess

    run_id = uuid.uuid4().hex[:6]
    topic = f"bench-backtest-{run_id}-invoices"
    asyncio.run(benchlib.create_topic(bootstrap, topic, 4))
    dep = Deployment(f"bench-bt-{run_id}", bootstrap, redis_url, f"bench-bt-{run_id}", bundle,
                     budget_yuan=100_000_000, interval_s=5.0, invoices_topic=topic,
                     extra_env={"RISKMON_ACCEPT_UNSIGNED_BUNDLES": "true"} if unsigned else {})
    from streams.adapters.redis_store import connect
    from streams.settings import Settings

    # the services run locked down: the settings carry the generated Redis credentials
    client = connect(Settings().redis.model_copy(update={"url": redis_url}))
    worker = WorkerProcess(dep, "w0")
    sampler = _Sampler(worker)
    try:
        worker.wait_ready(180)
        load_before = os.getloadavg()
        sampler.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        records = replay_records(DEFAULT_DATA_DIR)  # what `riskmon replay` reads, in event-time order
        t_read = time.perf_counter()
        kv = [(r.key.encode(), r.value) for r in records]
        produce_s = asyncio.run(benchlib.produce(bootstrap, topic, kv)).seconds
        # every message applied or dead-lettered, published and committed (the worker's /health)
        while (n := processed_count([worker])) < len(kv):
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker died:\n{worker.log_tail()}")
            if time.perf_counter() - t0 > 3600:
                raise RuntimeError(f"timed out: {n}/{len(kv)} processed")
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        producer_cpu = time.process_time() - cpu0
        sampler.stop()
    finally:
        if sampler.is_alive():
            sampler.stop()
        worker.stop()
        clear_prefix(client, dep.redis_prefix)
        asyncio.run(benchlib.delete_topic(bootstrap, topic))
        asyncio.run(delete_run_topics(bootstrap, f"bench-bt-{run_id}"))
    return {"wall_s": round(wall, 2), "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "read_s": round(t_read - t0, 2), "produce_s": round(produce_s, 2),
            "messages_processed": len(kv), "worker_cpu_s": round(sampler.cpu_s, 2),
            "producer_cpu_s": round(producer_cpu, 2), "cpu_s": round(sampler.cpu_s + producer_cpu, 2),
            "worker_peak_rss_mb": round(sampler.peak_mb, 1),
            "not_counted": "the Kafka broker's and Redis's own CPU and memory"}


def backtest(bundle: Path, out: Path, as_of: str, cache_dir: Path, engine: str = "columnar",
             unsigned: bool = False) -> dict[str, Any]:
    """``riskmon backtest`` in a child process: wall, CPU and peak RSS of the child."""
    cmd = [sys.executable, "-m", "streams.cli", "backtest", "--bundle", str(bundle), "--as-of", as_of,
           "--budget", "100000000", "--out", str(out), "--cache-dir", str(cache_dir), "--engine", engine,
           "--no-progress", *(["--accept-unsigned-bundle"] if unsigned else [])]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"backtest failed with exit {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {
        "command": "riskmon " + " ".join(cmd[3:]),
        "wall_s": round(wall, 2),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "peak_rss_mb": round(summary.get("peak_rss_mb", 0.0), 1),
        "peak_rss_children_mb": round(summary.get("peak_rss_children_mb", 0.0), 1),
        "timings_s": {k: round(v, 2) for k, v in summary.get("timings_s", {}).items()},
        "n_events": summary.get("n_events"),
        "as_of_dates": len(summary.get("as_of_dates", [])),
        "bundle_version": summary.get("bundle_version"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--bootstrap", default=os.environ.get("RISKMON_KAFKA__BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--redis", default=os.environ.get("RISKMON_REDIS__URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--skip", default="", help="comma-separated: kafka,monthly,events")
    parser.add_argument("--accept-unsigned-bundle", action="store_true", help="the bundle has no signature (development)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_backtest.json")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    bundle = args.bundle
    if bundle is None:
        bundle = ROOT / "var" / "bundle"
        if not (bundle / "manifest.json").exists():
            from tests.bundle_fixture import get_test_bundle

            bundle = get_test_bundle()
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": os.getloadavg()},
        "bundle": str(bundle),
    }
    work = ROOT / "var" / f"bench-backtest-{uuid.uuid4().hex[:6]}"
    cache_dir = work / "cache"  # empty: the first backtest validates every row and builds the cache
    try:
        if "kafka" not in skip:
            print("Kafka replay through one worker ...", flush=True)
            result["kafka_replay"] = kafka_replay(bundle, args.bootstrap, args.redis, args.accept_unsigned_bundle)
            print(f"  {result['kafka_replay']}", flush=True)
        print("backtest, quarterly, first run (empty cache) ...", flush=True)
        result["backtest_quarterly_first_run"] = backtest(bundle, work / "quarterly", "quarterly", cache_dir,
                                                           unsigned=args.accept_unsigned_bundle)
        print(f"  {result['backtest_quarterly_first_run']}", flush=True)
        if "monthly" not in skip:
            print("backtest, monthly (event cache warm) ...", flush=True)
            result["backtest_monthly_warm_cache"] = backtest(bundle, work / "monthly", "monthly", cache_dir,
                                                           unsigned=args.accept_unsigned_bundle)
            print(f"  {result['backtest_monthly_warm_cache']}", flush=True)
        if "events" not in skip:
            print("old event-by-event engine, quarterly (event cache warm) ...", flush=True)
            result["events_engine_quarterly_warm_cache"] = backtest(bundle, work / "events", "quarterly", cache_dir,
                                                                    engine="events", unsigned=args.accept_unsigned_bundle)
            print(f"  {result['events_engine_quarterly_warm_cache']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_at_end"] = os.getloadavg()
    if "kafka_replay" in result:
        result["ratio_kafka_over_backtest_wall"] = round(
            result["kafka_replay"]["wall_s"] / result["backtest_quarterly_first_run"]["wall_s"], 1)
        # the replay from the first message published on (the invoice file read and sorted before it excluded)
        result["ratio_kafka_from_publish_over_backtest_wall"] = round(
            (result["kafka_replay"]["wall_s"] - result["kafka_replay"]["read_s"])
            / result["backtest_quarterly_first_run"]["wall_s"], 1)
        result["ratio_kafka_over_backtest_cpu"] = round(
            result["kafka_replay"]["cpu_s"] / result["backtest_quarterly_first_run"]["cpu_s"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
