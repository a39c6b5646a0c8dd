#!/usr/bin/env python3
"""Baseline for the worker's throughput: a plain aiokafka consumer reading the real invoices.

Produces the real invoices (JSON InvoiceEvent, key = enterprise id) to a fresh topic (4 partitions
by default) with aiokafka, then reads them all back with a plain consumer in a fresh consumer group
and prints JSON: messages/s and MB/s of the produce step and of each consumer variant.

    python scripts/bench_consumer_baseline.py                     # all 1.1 M invoices
    python scripts/bench_consumer_baseline.py --limit 200000      # a slice
    python scripts/bench_consumer_baseline.py --topic T --no-produce   # read an existing topic
    python scripts/bench_consumer_baseline.py --modes getmany --decode none,json,pydantic
    python scripts/bench_consumer_baseline.py --parallel 1,2,4     # N consumer processes splitting partitions

Needs the services (scripts/services up). The worker benchmark should call
``benchlib.consume_baseline`` on the very topic the worker reads, in the same run, and report the
ratio. The topic is deleted afterwards unless --keep-topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=os.environ.get("RISKMON_KAFKA__BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--data", type=Path, default=None, help="data set directory (default: the project's copy)")
    ap.add_argument("--limit", type=int, default=None, help="produce only the first N invoices")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--topic", default=None, help="topic name (default: a fresh bench-invoices-<hex>)")
    ap.add_argument("--no-produce", action="store_true", help="read an existing --topic as it is")
    ap.add_argument("--keep-topic", action="store_true")
    ap.add_argument("--acks", default="1", choices=["0", "1", "all"])
    ap.add_argument("--compression", default=None, choices=[None, "gzip", "lz4", "snappy", "zstd"])
    ap.add_argument("--modes", default="getmany,iter", help="consumer variants: getmany (batches), iter (async for)")
    ap.add_argument("--decode", default="none", help="comma list of none,json,pydantic (decode each message)")
    ap.add_argument(
        "--parallel", default="1,2", help="also read with N plain consumers in N processes (comma list; 0: skip)"
    )
    ap.add_argument("--no-cache", action="store_true", help="do not cache the encoded invoices under var/bench")
    return ap.parse_args(argv)


async def run(args: argparse.Namespace) -> dict:
    result: dict = {
        "bench": "consumer_baseline",
        "bootstrap": args.bootstrap,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
    }
    if args.no_produce:
        if not args.topic:
            raise SystemExit("--no-produce needs --topic")
        topic = args.topic
    else:
        t0 = time.perf_counter()
        records = benchlib.load_invoice_records(
            args.data, args.limit, cache_dir=None if args.no_cache else benchlib.DEFAULT_CACHE_DIR
        )
        result["load_seconds"] = round(time.perf_counter() - t0, 3)
        topic = args.topic or benchlib.fresh_topic_name()
        await benchlib.create_topic(args.bootstrap, topic, args.partitions)
        acks: int | str = "all" if args.acks == "all" else int(args.acks)
        produced = await benchlib.produce(args.bootstrap, topic, records, acks=acks, compression=args.compression)
        del records
        result["produce"] = benchlib.as_dict(produced)
    result["topic"] = topic
    try:
        expected = await benchlib.end_offsets_total(args.bootstrap, topic)
        result["messages_in_topic"] = expected
        runs = []
        for mode in [m for m in args.modes.split(",") if m]:
            for decode in [d for d in args.decode.split(",") if d]:
                stats = await benchlib.consume_baseline(args.bootstrap, topic, expected, mode=mode, decode=decode)
                runs.append(benchlib.as_dict(stats))
                print(
                    f"consume mode={mode} decode={decode}: {stats.messages} msgs in {stats.seconds:.2f} s = "
                    f"{stats.msgs_per_s:,.0f} msg/s, {stats.mb_per_s:.1f} MB/s",
                    file=sys.stderr,
                )
        result["consume"] = runs
        parallel = []
        for n in [int(x) for x in args.parallel.split(",") if x.strip() and int(x) > 0]:
            stats_p = await asyncio.get_running_loop().run_in_executor(
                None, benchlib.parallel_baseline, args.bootstrap, topic, n
            )
            parallel.append(stats_p)
            print(
                f"parallel consumers={stats_p['consumers']}: {stats_p['messages']} msgs in {stats_p['seconds']:.2f} s"
                f" = {stats_p['msgs_per_s']:,.0f} msg/s",
                file=sys.stderr,
            )
        if parallel:
            result["parallel"] = parallel
            one = next((p for p in parallel if p["consumers"] == 1), None)
            if one:
                result["parallel_speedup"] = {
                    str(p["consumers"]): round(p["msgs_per_s"] / one["msgs_per_s"], 2) for p in parallel
                }
    finally:
        if not args.keep_topic and not args.no_produce:
            await benchlib.delete_topic(args.bootstrap, topic)
            result["topic_deleted"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
