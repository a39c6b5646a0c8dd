#!/usr/bin/env python
"""Benchmark the Redis feature store: cost per invoice against the number of enterprises, and bytes kept.

What it measures (one run, one Redis, written to ``artifacts/bench_state.json``):

1. **Cost per invoice.** A synthetic stream is folded straight through the worker's store stack
   (:class:`~streams.adapters.cached.CachedFeatureStore` over
   :class:`~streams.adapters.redis_store.RedisFeatureStore`), **without Kafka and without the
   model**: per micro-batch one ``apply_many`` (the write), then ``load_many`` of the touched
   enterprises (what rescoring reads). Invoices come in event-time order, month by month, each
   enterprise on one of 4 partitions with Kafka-like offsets, 30 counterparties per enterprise.
   Two runs with the same invoice stream shape: the baseline with 425 enterprises (the real data
   set's size) and the scale run (default 100 000 enterprises, 10 M invoices). The figure is the
   ratio of the two throughputs (invoices per second of store time).
2. **Bytes kept.** ``used_memory`` of the Redis server before and after each run, and
   ``MEMORY USAGE`` summed per key kind on a sample of enterprises, divided by enterprises and
   by invoices.
3. **Memory grows with enterprises x months, not invoices** (``--growth``): the same enterprises
   and months with 1x, 2x and 4x the invoices, dedup window 3 months; the counters do not grow,
   the dedup window grows with the invoices of its 3 months only.
4. **The real data** (``--real``): every valid invoice of ``data/cumcm2020c`` in event-time order
   through the same stack, then the bytes per enterprise and per invoice.

The input deltas are made directly (the keys ``streams.features.fold.invoice_delta`` makes), not
from pydantic events: decoding is the ingest path's cost, not the store's. Not measured here:
Kafka, validation, the torch models, and :func:`streams.features.vector.to_vector` (whose cost
grows with the months of history, not with invoices or counterparties).

Usage: ``python scripts/bench_state.py --redis redis://127.0.0.1:6379/0 [--enterprises 100000]
[--invoices 10000000] [--baseline-invoices 2000000] [--growth] [--real] [--out FILE]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from streams.adapters.cached import CachedFeatureStore  # noqa: E402
from streams.adapters.redis_store import KEY_VERSION, RedisFeatureStore, clear_prefix  # noqa: E402
from streams.ports import DeltaItem  # noqa: E402

START_MONTH = 2016 * 12 + 9  # 2016-10, as the real data
PARTITIONS = 4
COUNTERPARTIES = 30


def synthetic_batches(n_enterprises: int, n_invoices: int, n_months: int, batch: int, seed: int):  # type: ignore[no-untyped-def]
    """Micro-batches of DeltaItems in event-time order (numpy draws, Python items)."""
    rng = np.random.default_rng(seed)
    offsets = [0] * PARTITIONS
    per_month = n_invoices // n_months
    made = 0
    for m in range(n_months):
        month = START_MONTH + m
        ym = f"m:{month // 12:04d}{month % 12 + 1:02d}:"
        count = per_month if m < n_months - 1 else n_invoices - made
        ents = rng.integers(0, n_enterprises, count)
        dirs = rng.integers(0, 2, count)
        cps = rng.integers(0, COUNTERPARTIES, count)
        cents = rng.integers(-20_000, 2_000_000, count)
        void = rng.random(count) < 0.05
        for start in range(0, count, batch):
            items = []
            for k in range(start, min(start + batch, count)):
                e = int(ents[k])
                eid = f"S{e}"
                d = "out" if dirs[k] else "in"
                cp = f"C{e}x{int(cps[k])}"
                delta = {f"{ym}n_{d}": 1, f"cp:{d}:{cp}": 1}
                if void[k]:
                    delta[f"{ym}void_{d}"] = 1
                else:
                    c = int(cents[k])
                    delta[f"{ym}valid_{d}"] = 1
                    delta[f"{ym}amt_{d}"] = c
                    delta[f"{ym}tot_{d}"] = c + c // 10
                    if c < 0:
                        delta[f"{ym}ret_{d}"] = 1
                        delta[f"{ym}retamt_{d}"] = -c
                    else:
                        delta[f"{ym}gross_{d}"] = c
                        delta[f"cpa:{d}:{cp}"] = c
                p = e % PARTITIONS
                items.append(DeltaItem(eid, f"{eid}-{made + k}", delta, None, month=month,
                                       content_hash=f"{made + k:016x}", topic="invoices", partition=p,
                                       offset=offsets[p]))
                offsets[p] += 1
            yield items
        made += count


def real_batches(batch: int):  # type: ignore[no-untyped-def]
    from streams.dataset import DEFAULT_DATA_DIR, RejectedRow, iter_events
    from streams.pipeline import Source, delta_item

    events = sorted((e for e in iter_events(DEFAULT_DATA_DIR) if not isinstance(e, RejectedRow)),
                    key=lambda e: e.issue_date)
    offsets = [0] * PARTITIONS
    partition: dict[str, int] = {}
    items = []
    for e in events:
        p = partition.setdefault(e.enterprise_id, len(partition) % PARTITIONS)
        items.append(delta_item(e, Source("invoices", p, offsets[p])))
        offsets[p] += 1
    for start in range(0, len(items), batch):
        yield items[start : start + batch]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def bytes_by_kind(client: redis.Redis, prefix: str, enterprises: list[str], window: int) -> dict[str, int]:
    """MEMORY USAGE summed per key kind over these enterprises' keys."""
    out: dict[str, int] = defaultdict(int)
    for start in range(0, len(enterprises), 500):
        chunk = enterprises[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for eid in chunk:
            pipe.hget(f"{prefix}:{KEY_VERSION}:{{{eid}}}:meta", "newest")
        newest = [int(v or 0) for v in pipe.execute()]
        keys: list[str] = []
        for eid, top in zip(chunk, newest, strict=True):
            base = f"{prefix}:{KEY_VERSION}:{{{eid}}}:"
            keys += [base + "counters", base + "cp", base + "meta"]
            keys += [f"{base}dd:{m // 12:04d}{m % 12 + 1:02d}" for m in range(top - window + 1, top + 1)]
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        for k, size in zip(keys, pipe.execute(), strict=True):
            kind = k.rsplit(":", 2)[-2] if ":dd:" in k else k.rsplit(":", 1)[-1]
            out[kind] += int(size or 0)
    return dict(out)


def run(client: redis.Redis, batches: Any, *, window: int, label: str) -> dict[str, Any]:
    prefix = f"bench-state-{label}-{uuid.uuid4().hex[:6]}"
    mem0 = used_memory(client)
    store = CachedFeatureStore(RedisFeatureStore(client, prefix, dedup_window_months=window), max_entries=200_000)
    n = applied = 0
    store_s = 0.0
    touched_total = 0
    t_wall = time.perf_counter()
    for items in batches:
        t0 = time.perf_counter()
        write = store.apply_many(items)
        touched = list(write.counters)
        store.load_many(touched)
        store_s += time.perf_counter() - t0
        n += len(items)
        applied += sum(write.applied)
        touched_total += len(touched)
    wall = time.perf_counter() - t_wall
    mem1 = used_memory(client)
    inner = store.inner
    ids = sorted(inner.enterprise_ids())
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(ids, size=min(2000, len(ids)), replace=False).tolist())
    kinds = bytes_by_kind(client, prefix, sample, window)
    scale = len(ids) / len(sample)
    result = {
        "label": label, "enterprises": len(ids), "invoices": n, "applied": applied,
        "store_seconds": round(store_s, 2), "wall_seconds": round(wall, 2),
        "invoices_per_s_store": round(n / store_s), "touched_per_batch": round(touched_total / max(1, n / 10_000), 1),
        "used_memory_delta_bytes": mem1 - mem0,
        "bytes_per_enterprise": round((mem1 - mem0) / len(ids), 1),
        "bytes_per_invoice": round((mem1 - mem0) / n, 2),
        "memory_usage_by_kind_estimate": {k: round(v * scale) for k, v in kinds.items()},
        "cache_hits": store.hits, "cache_misses": store.misses, "dedup_window_months": window,
    }
    print(json.dumps(result), flush=True)
    clear_prefix(client, prefix)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("RISKMON_REDIS__URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--enterprises", type=int, default=100_000)
    parser.add_argument("--invoices", type=int, default=10_000_000)
    parser.add_argument("--baseline-invoices", type=int, default=2_000_000)
    parser.add_argument("--months", type=int, default=40)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument("--growth", action="store_true", help="also the 1x/2x/4x invoices memory runs")
    parser.add_argument("--real", action="store_true", help="also the real data set")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", default="artifacts/bench_state.json")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    out: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(), "load_average": os.getloadavg(),
                           "args": vars(args)}
    if args.real:
        out["real"] = run(client, real_batches(args.batch), window=args.window, label="real")
    if not args.skip_scale:
        base = run(client, synthetic_batches(425, args.baseline_invoices, args.months, args.batch, 1),
                   window=args.window, label="baseline-425")
        scale = run(client, synthetic_batches(args.enterprises, args.invoices, args.months, args.batch, 2),
                    window=args.window, label=f"scale-{args.enterprises}")
        out["baseline"], out["scale"] = base, scale
        out["throughput_ratio_scale_over_baseline"] = round(scale["invoices_per_s_store"] / base["invoices_per_s_store"], 3)
        print(f"throughput ratio {out['throughput_ratio_scale_over_baseline']}", flush=True)
    if args.growth:
        out["growth"] = [run(client, synthetic_batches(2_000, 2_000 * 24 * 5 * k, 24, args.batch, 3 + k), window=3,
                             label=f"growth-{k}x") for k in (1, 2, 4)]
    out["finished"] = dt.datetime.now(dt.UTC).isoformat()
    out["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
