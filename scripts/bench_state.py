#!/usr/bin/env python
"""Benchmark the Redis feature store: cost per invoice against the number of enterprises, and bytes kept.

What it measures (one run, one Redis, written to ``artifacts/bench_state.json``):

1. **Cost per invoice.** A synthetic stream is folded straight through the worker's store stack
   (:class:`~streams.adapters.cached.CachedFeatureStore` over
   :class:`~streams.adapters.redis_store.RedisFeatureStore`), **without Kafka and without the
   model**: per micro-batch one ``apply_columns`` (the worker's write: the fold by column and the
   packed Lua calls), then ``load_many`` of the touched enterprises (what rescoring reads). The
   batches are :class:`streams.columns.InvoiceColumns` made with numpy (ids and content hashes by
   :mod:`streams.hashing`), in event-time order, month by month, each enterprise on one of 4
   partitions with Kafka-like offsets, 30 counterparties per enterprise. Two runs with the same
   invoice stream shape: the baseline with 425 enterprises (the real data set's size) and the
   scale run (default 100 000 enterprises, 10 M invoices). The figure is the ratio of the two
   throughputs (invoices per second of store time). ``INFO commandstats`` is read before and
   after each run (the server's time per command kind).
2. **Bytes kept.** ``used_memory`` of the Redis server before and after each run, and
   ``MEMORY USAGE`` summed per key kind on a sample of enterprises, divided by enterprises and
   by invoices.
3. **Memory grows with enterprises x months, not invoices** (``--growth``): the same enterprises
   and months with 1x, 2x and 4x the invoices, dedup window 3 months; the counters do not grow,
   the dedup window grows with the invoices of its 3 months only.
4. **The real data** (``--real``): every row of ``data/cumcm2020c`` as the Kafka message
   ``riskmon replay`` publishes (:func:`streams.replay.replay_records`, event-time order), through
   the worker's :func:`streams.pipeline.fold_records` (decode, validation, ``apply_columns``) into
   the same stack, then the bytes per enterprise and per invoice. Its time includes decoding.

Not measured here: Kafka, the torch models, and :func:`streams.features.vector.to_vector`
(whose cost grows with the months of history, not with invoices or counterparties). The synthetic
runs' columns are made outside the timed part (decoding is the ingest path's cost, not the store's).

The Redis connection comes from the settings (``RISKMON_REDIS__*``, and the credentials
``scripts/services up`` writes); ``--redis`` overrides only the URL.

Usage: ``python scripts/bench_state.py [--redis redis://127.0.0.1:6379/0] [--enterprises 100000]
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
from streams.adapters.redis_store import KEY_VERSION, RedisFeatureStore, clear_prefix, connect  # noqa: E402
from streams.columns import InvoiceColumns  # noqa: E402
from streams.hashing import content_hashes, id_keys  # noqa: E402

START_MONTH = 2016 * 12 + 9  # 2016-10, as the real data
PARTITIONS = 4
COUNTERPARTIES = 30
_EPOCH = dt.date(1970, 1, 1)


def _month_first_day(month: int) -> int:
    return (dt.date(month // 12, month % 12 + 1, 1) - _EPOCH).days


def synthetic_batches(n_enterprises: int, n_invoices: int, n_months: int, batch: int, seed: int):  # type: ignore[no-untyped-def]
    """Micro-batches of :class:`InvoiceColumns` in event-time order (numpy draws; hashes by streams.hashing)."""
    rng = np.random.default_rng(seed)
    offsets = np.zeros(PARTITIONS, dtype=np.int64)
    names = np.array([f"S{e}" for e in range(n_enterprises)], dtype=object)
    per_month = n_invoices // n_months
    made = 0
    for m in range(n_months):
        month = START_MONTH + m
        day0 = _month_first_day(month)
        count = per_month if m < n_months - 1 else n_invoices - made
        for start in range(0, count, batch):
            k = min(batch, count - start)
            ents = rng.integers(0, n_enterprises, k)
            cps = rng.integers(0, COUNTERPARTIES, k)
            out = rng.integers(0, 2, k).astype(bool)
            void = rng.random(k) < 0.05
            cents = rng.integers(-20_000, 2_000_000, k)
            seq = range(made + start, made + start + k)
            eid = names[ents]
            event_ids = np.array([f"{e}-{i}" for e, i in zip(eid.tolist(), seq)], dtype=object)
            cp = np.array([f"C{e}x{c}" for e, c in zip(ents.tolist(), cps.tolist())], dtype=object)
            part = ents % PARTITIONS
            # Kafka-like offsets: each partition's messages numbered in order
            offs = np.empty(k, dtype=np.int64)
            for p in range(PARTITIONS):
                at = np.flatnonzero(part == p)
                offs[at] = offsets[p] + np.arange(len(at))
                offsets[p] += len(at)
            yield InvoiceColumns(
                topic="invoices", row=np.arange(k, dtype=np.int64), enterprise_id=eid, counterparty_id=cp, out=out,
                void=void, day=(day0 + rng.integers(0, 28, k)).astype(np.int32),
                month=np.full(k, month, dtype=np.int32), amount_cents=cents, total_cents=cents + cents // 10,
                id_hash=id_keys(event_ids), content_hash=content_hashes(event_ids + "|c"),
                name=np.full(k, None, dtype=object), partition=part.astype(np.int64), offset=offs)
        made += count


def real_batches(batch: int):  # type: ignore[no-untyped-def]
    """The real rows as the messages ``riskmon replay`` publishes, in event-time order, as polled batches."""
    from streams.columns import RecordBatch
    from streams.replay import replay_records

    records = replay_records()
    offsets = [0] * PARTITIONS
    partition: dict[str, int] = {}
    parts, offs = [], []
    for r in records:
        p = partition.setdefault(r.key, len(partition) % PARTITIONS)
        parts.append(p)
        offs.append(offsets[p])
        offsets[p] += 1
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        yield RecordBatch("invoices", [r.value for r in chunk], [r.key.encode() for r in chunk],
                          parts[start : start + batch], offs[start : start + batch], [0] * len(chunk))


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


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec) of the server so far (commands a script runs are counted under their own names)."""
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in client.info("commandstats").items()}


def commandstats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    out = {}
    for name, (calls, usec) in sorted(after.items(), key=lambda kv: -kv[1][1]):
        c0, u0 = before.get(name, (0, 0))
        if calls > c0:
            out[name] = {"calls": calls - c0, "usec": usec - u0, "usec_per_call": round((usec - u0) / (calls - c0), 2)}
    return out


def run(client: redis.Redis, batches: Any, *, window: int, label: str, real: bool = False) -> dict[str, Any]:
    """Fold every batch into a fresh prefix through the worker's store stack; time, bytes and server stats."""
    prefix = f"bench-state-{label}-{uuid.uuid4().hex[:6]}"
    mem0 = used_memory(client)
    stats0 = commandstats(client)
    store = CachedFeatureStore(RedisFeatureStore(client, prefix, dedup_window_months=window), max_entries=200_000)
    if real:
        from streams.adapters.memory import InMemoryRegistry
        from streams.pipeline import fold_records

        registry, now = InMemoryRegistry(), dt.datetime.now(dt.UTC)
    n = applied = batches_n = touched_total = dead = 0
    store_s = load_s = 0.0
    t_wall = time.perf_counter()
    for batch in batches:
        t0 = time.perf_counter()
        if real:
            outcome = fold_records(batch, store, registry, now=now)
            touched = sorted(outcome.applied.touched)
            applied += outcome.applied.applied
            dead += len(outcome.dead_letters)
        else:
            write = store.apply_columns(batch)
            touched = list(write.counters)
            applied += int((write.letters == ord("a")).sum())
        t1 = time.perf_counter()
        store.load_many(touched)
        t2 = time.perf_counter()
        store_s += t2 - t0
        load_s += t2 - t1
        n += len(batch)
        batches_n += 1
        touched_total += len(touched)
    wall = time.perf_counter() - t_wall
    mem1 = used_memory(client)
    stats = commandstats_delta(stats0, commandstats(client))
    inner = store.inner
    ids = sorted(inner.enterprise_ids())
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(ids, size=min(2000, len(ids)), replace=False).tolist())
    kinds = bytes_by_kind(client, prefix, sample, window)
    scale = len(ids) / len(sample)
    result = {
        "label": label, "enterprises": len(ids), "invoices": n, "applied": applied,
        "store_seconds": round(store_s, 2), "load_many_seconds": round(load_s, 2), "wall_seconds": round(wall, 2),
        "invoices_per_s_store": round(n / store_s), "touched_per_batch": round(touched_total / max(1, batches_n), 1),
        "used_memory_delta_bytes": mem1 - mem0,
        "bytes_per_enterprise": round((mem1 - mem0) / len(ids), 1),
        "bytes_per_invoice": round((mem1 - mem0) / max(1, applied), 2),
        "memory_usage_by_kind_estimate": {k: round(v * scale) for k, v in kinds.items()},
        "memory_usage_by_kind_per_enterprise": {k: round(v / len(sample), 1) for k, v in kinds.items()},
        "cache_hits": store.hits, "cache_misses": store.misses, "dedup_window_months": window,
        "commandstats": stats, "load_average_end": os.getloadavg(),
    }
    if real:
        result["dead_letters"] = dead
        result["note"] = "messages decoded and validated by fold_records: the time includes decoding"
    print(json.dumps({k: v for k, v in result.items() if k != "commandstats"}), flush=True)
    print(json.dumps({"label": label, "commandstats_top": dict(list(stats.items())[:8])}), flush=True)
    clear_prefix(client, prefix)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="Redis URL (default: the settings' RISKMON_REDIS__URL)")
    parser.add_argument("--enterprises", type=int, default=100_000)
    parser.add_argument("--invoices", type=int, default=10_000_000)
    parser.add_argument("--baseline-invoices", type=int, default=2_000_000)
    parser.add_argument("--months", type=int, default=40)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument("--growth", action="store_true", help="also the 1x/2x/4x invoices memory runs")
    parser.add_argument("--growth-per-month", type=int, default=5,
                        help="--growth's 1x invoices per enterprise and month (2 000 enterprises, 24 months)")
    parser.add_argument("--real", action="store_true", help="also the real data set")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", default="artifacts/bench_state.json")
    args = parser.parse_args()
    from streams.settings import Settings

    settings = Settings().redis
    if args.redis:
        settings = settings.model_copy(update={"url": args.redis})
    client = connect(settings)
    out: dict[str, Any] = {"started": dt.datetime.now(dt.UTC).isoformat(), "load_average": os.getloadavg(),
                           "args": vars(args), "layout": KEY_VERSION,
                           "redis_version": client.info("server")["redis_version"]}
    if args.real:
        out["real"] = run(client, real_batches(args.batch), window=args.window, label="real", real=True)
    if not args.skip_scale:
        base = run(client, synthetic_batches(425, args.baseline_invoices, args.months, args.batch, 1),
                   window=args.window, label="baseline-425")
        scale = run(client, synthetic_batches(args.enterprises, args.invoices, args.months, args.batch, 2),
                    window=args.window, label=f"scale-{args.enterprises}")
        out["baseline"], out["scale"] = base, scale
        out["throughput_ratio_scale_over_baseline"] = round(scale["invoices_per_s_store"] / base["invoices_per_s_store"], 3)
        print(f"throughput ratio {out['throughput_ratio_scale_over_baseline']}", flush=True)
    if args.growth:
        out["growth"] = [run(client, synthetic_batches(2_000, 2_000 * 24 * args.growth_per_month * k, 24, args.batch, 3 + k), window=3,
                             label=f"growth-{k}x") for k in (1, 2, 4)]
    out["finished"] = dt.datetime.now(dt.UTC).isoformat()
    out["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
