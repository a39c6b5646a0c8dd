#!/usr/bin/env python
"""Where a ``riskmon worker`` spends its time: py-spy samples one worker catching up on real invoices.

Fills a fresh topic with the first ``--limit`` real invoices (event-time order), starts one worker on
it under ``py-spy record`` (all threads, idle frames dropped), waits until the worker has processed
every message, and prints the share of samples spent inside each stage of the hot path (a sample
counts for every stage on its stack, so stages nest: ``fold_records`` contains ``decode_batch``, ...).
Also reads the topic with a plain aiokafka consumer first (no decode; the same run's outside baseline).
Writes the collapsed stacks (flame-graph input) and a JSON summary under ``artifacts/``.

    scripts/profile_worker.py --limit 200000 --bundle var/bundle

Needs the services (``scripts/services up``) and py-spy (a dev dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import benchlib  # noqa: E402

from streams.replay import replay_records  # noqa: E402
from tests.e2e.harness import Deployment, WorkerProcess, wait_for  # noqa: E402

# (label, frame function name as py-spy prints it) — the stages of one batch, outermost first
STAGES = (
    ("one polled batch on the loop (WorkerCore.fold)", "fold"),
    ("fold_records (thread): decode + fold", "fold_records"),
    ("rescoring window (WorkerCore.flush)", "flush"),
    ("decode_batch: Arrow JSON + vectorised rules", "decode_batch"),
    ("ingest: the general path (pydantic), messages the vectorised rules left", "ingest"),
    ("apply_columns: fold + Redis write", "apply_columns"),
    ("fold_columns: per-enterprise sums", "fold_columns"),
    ("allocator step (WorkerCore.allocate)", "allocate"),
    ("rescore: features + model", "rescore"),
    ("build_batch: feature vectors", "build_batch"),
    ("score_many: torch + segments", "score_many"),
    ("attributions (captum gradients)", "compute_gradients"),
    ("scores.put_many (Redis)", "put_many"),
    ("publish_many (Kafka)", "publish_many"),
    ("aiokafka fetch/getmany", "getmany"),
)


def summarise(collapsed: Path) -> dict[str, object]:
    """Share of non-idle samples whose stack contains each stage, and the top self-time frames."""
    total = 0
    inside: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_s)
        total += n
        frames = stack.split(";")
        names = {f.split(" (")[0].strip().rpartition(".")[2] for f in frames}  # "Class.method" -> "method"
        for _, fn in STAGES:
            if fn in names:
                inside[fn] += n
        leaf[frames[-1].split(" (")[0].strip() + " (" + frames[-1].split(" (")[-1]] += n
    return {"samples": total,
            "stages": {label: round(inside[fn] / total, 4) if total else 0.0 for label, fn in STAGES},
            "top_self": [(name, round(n / total, 4)) for name, n in leaf.most_common(15)] if total else []}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--summarise":  # re-read a run's stacks
        print(json.dumps(summarise(Path(sys.argv[2])), indent=2))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200_000)
    ap.add_argument("--bundle", type=Path, default=REPO / "var" / "bundle")
    ap.add_argument("--bootstrap", default=os.environ.get("RISKMON_KAFKA__BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--redis", default=os.environ.get("RISKMON_REDIS__URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="a worker setting (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "profile_worker")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: make install (it is a dev dependency)", file=sys.stderr)
        return 2
    records = replay_records()[: args.limit]
    run = f"prof-{uuid.uuid4().hex[:6]}"
    topic = f"{run}-invoices"
    asyncio.run(benchlib.create_topic(args.bootstrap, topic, 4))
    asyncio.run(benchlib.produce(args.bootstrap, topic, [(r.key.encode(), r.value) for r in records]))
    # the outside baseline of the same run: a plain aiokafka consumer reading the same topic, no decode
    baseline = asyncio.run(benchlib.consume_baseline(args.bootstrap, topic, len(records)))
    d = Deployment(run, args.bootstrap, args.redis, run, args.bundle, budget_yuan=100_000_000, interval_s=3600.0,
                   invoices_topic=topic, extra_env=dict(kv.split("=", 1) for kv in args.env))
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / "stacks.txt"
    worker = WorkerProcess(d, "profiled")
    spy = None
    try:
        worker.wait_ready(180)
        spy = subprocess.Popen([pyspy, "record", "--pid", str(worker.proc.pid), "--rate", str(args.rate),  # noqa: S603
                                "--format", "raw", "--output", str(collapsed), "--threads", "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.perf_counter()
        wait_for(lambda: int((worker.health() or {}).get("processed", 0)) >= len(records), 1800, "all processed",
                 worker, every_s=0.5)
        seconds = time.perf_counter() - t0
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
            spy.wait(60)
        worker.stop()
        asyncio.run(benchlib.delete_topic(args.bootstrap, topic))
        from streams.adapters.redis_store import clear_prefix, connect
        from streams.settings import Settings

        redis_settings = Settings().redis  # credentials from the env and the services' file
        clear_prefix(connect(redis_settings.model_copy(update={"url": args.redis})), run)
    rate = len(records) / seconds
    summary = {"invoices": len(records), "seconds": round(seconds, 2), "invoices_per_s": round(rate),
               "baseline_plain_aiokafka_msgs_per_s": baseline.msgs_per_s,
               "ratio_worker_vs_plain": round(rate / baseline.msgs_per_s, 4),
               "note": "the worker ran under py-spy (sampling, --nonblocking)", "worker_env": args.env,
               "load_average": os.getloadavg(), **summarise(collapsed)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
