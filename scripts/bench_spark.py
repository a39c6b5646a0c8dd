#!/usr/bin/env python
"""The Spark fold on a synthetic invoice history in local mode, with DuckDB on the same files as the baseline.

Writes a synthetic history (``--invoices`` rows, default 10 M, over ``--enterprises`` enterprises and
2016-01 .. 2020-12, the documented input columns, Parquet files of 1 M rows) under ``var/``, then
times, in the same run:

1. ``fold_spark`` in ``local[N]`` mode (session start included): the SQL fold of
   :mod:`streams.backtest.foldsql` at quarterly as-of dates, per-bin sums collected to the driver;
2. ``fold_duckdb`` over the same files (read into Arrow first, read time included);

and checks that both give the same tables. Prints invoices/s, invoices/s per core for Spark, and an
estimate for 1 B invoices from the per-core rate (linear scaling assumed: the fold is one shuffle of
a group-by; the estimate ignores cluster overheads and skew). Writes ``artifacts/bench_spark.json``.

Usage: ``scripts/bench_spark.py [--invoices 10000000] [--cores 2] [--keep]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_synthetic(folder: Path, n: int, n_enterprises: int, seed: int = 0, rows_per_file: int = 1_000_000) -> None:
    """``n`` synthetic invoices as Parquet files with the documented columns (amounts as decimal strings)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    start = dt.date(2016, 1, 1).toordinal()
    days = dt.date(2020, 12, 31).toordinal() - start + 1
    for f, lo in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - lo)
        ent = rng.zipf(1.3, m) % n_enterprises  # a few big enterprises, many small ones
        fen = np.round(rng.lognormal(9.0, 1.6, m)).astype(np.int64)
        fen[rng.random(m) < 0.03] *= -1  # returns
        tax = fen * 13 // 100
        total = fen + tax

        def yuan(x: np.ndarray) -> pa.Array:
            sign = np.where(x < 0, "-", "")
            a = np.abs(x)
            return pa.array(np.char.add(np.char.add(sign, (a // 100).astype(str)),
                                        np.char.add(".", np.char.zfill((a % 100).astype(str), 2))))

        issue = np.array(start + rng.integers(0, days, m), dtype="int64") - dt.date(1970, 1, 1).toordinal()
        table = pa.table({
            "event_id": pc.binary_join_element_wise(pa.array(np.full(m, f"s{f}-")),
                                                    pc.cast(pa.array(np.arange(m)), pa.string()), ""),
            "enterprise_id": pc.binary_join_element_wise(pa.array(np.full(m, "S")), pc.cast(pa.array(ent), pa.string()), ""),
            "direction": pa.array(np.where(rng.random(m) < 0.5, "in", "out")),
            "issue_date": pa.array(issue.astype("int32"), pa.int32()).cast(pa.date32()),
            "counterparty_id": pc.binary_join_element_wise(pa.array(np.full(m, "C")),
                                                           pc.cast(pa.array(rng.integers(0, 200_000, m)), pa.string()), ""),
            "amount": yuan(fen), "tax": yuan(tax), "total": yuan(total),
            "status": pa.array(np.where(rng.random(m) < 0.02, "void", "valid")),
        })
        pq.write_table(table, folder / f"part-{f:04d}.parquet")


def _canon(table: pa.Table, keys: list[str]) -> pa.Table:
    cols = [c for c in table.column_names]
    out = table.select(cols)
    for i, name in enumerate(cols):
        kind = out.schema.field(name).type
        if pa.types.is_integer(kind):
            out = out.set_column(i, name, pc.cast(out.column(name), pa.int64()))
        elif not pa.types.is_string(kind):
            out = out.set_column(i, name, pc.cast(out.column(name), pa.string()))
    return out.sort_by([(k, "ascending") for k in keys])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=10_000_000)
    parser.add_argument("--enterprises", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_spark.json")
    args = parser.parse_args(argv)
    from streams.backtest.asof import parse_as_of
    from streams.backtest.columnar import fold_duckdb
    from streams.backtest.spark import fold_spark, spark_session

    folder = ROOT / "var" / f"synthetic-{args.invoices}"
    t = time.perf_counter()
    if not folder.exists():  # written under a temporary name: an interrupted run never leaves half a history
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_synthetic(tmp, args.invoices, args.enterprises)
        tmp.rename(folder)
    gen_s = time.perf_counter() - t
    size_mb = sum(p.stat().st_size for p in folder.glob("*.parquet")) / 1e6
    dates = parse_as_of("quarterly", dt.date(2016, 1, 1), dt.date(2020, 12, 31))
    print(f"{args.invoices:,} synthetic invoices, {size_mb:,.0f} MB Parquet ({gen_s:.0f} s to write)", flush=True)
    result: dict[str, Any] = {"invoices": args.invoices, "enterprises": args.enterprises, "as_of_dates": len(dates),
                              "parquet_mb": round(size_mb, 1),
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "load_average_at_start": os.getloadavg()}}
    t = time.perf_counter()
    session = spark_session(f"local[{args.cores}]", conf={"spark.driver.memory": "4g",
                                                         "spark.sql.shuffle.partitions": str(4 * args.cores)})
    start_s = time.perf_counter() - t
    try:
        t = time.perf_counter()
        spark = fold_spark(session, str(folder), dates)
        fold_s = time.perf_counter() - t
    finally:
        session.stop()
    rate = args.invoices / fold_s
    result["spark"] = {"master": f"local[{args.cores}]", "session_start_s": round(start_s, 1),
                       "fold_s": round(fold_s, 1), "invoices_per_s": round(rate),
                       "invoices_per_s_per_core": round(rate / args.cores),
                       "monthly_rows_back": spark.monthly.num_rows, "counterparty_rows_back": spark.counterparties.num_rows,
                       "rows": spark.n_rows, "rejected": spark.n_rejected}
    per_core = rate / args.cores
    result["estimate_1b"] = {
        "core_hours": round(1e9 / per_core / 3600, 1),
        "hours_on_64_cores": round(1e9 / per_core / 64 / 3600, 2),
        "method": "1e9 / (measured invoices per second per core), linear scaling assumed",
    }
    print(f"spark local[{args.cores}]: {fold_s:.1f} s ({rate:,.0f} invoices/s, {per_core:,.0f}/s per core); "
          f"session start {start_s:.1f} s", flush=True)
    if not args.skip_duckdb:
        t = time.perf_counter()
        table = pq.read_table(folder)
        duck = fold_duckdb(table, dates)
        duck_s = time.perf_counter() - t
        del table
        result["duckdb"] = {"fold_s_including_read": round(duck_s, 1), "invoices_per_s": round(args.invoices / duck_s)}
        same = (_canon(spark.monthly, ["enterprise_id", "bin", "month", "direction"]).equals(
                    _canon(duck.monthly, ["enterprise_id", "bin", "month", "direction"]))
                and _canon(spark.counterparties, ["enterprise_id", "direction", "bin"]).equals(
                    _canon(duck.counterparties, ["enterprise_id", "direction", "bin"])))
        result["duckdb"]["tables_equal_spark"] = bool(same)
        print(f"duckdb: {duck_s:.1f} s including the Parquet read; tables equal: {same}", flush=True)
    result["peak_rss_mb_driver_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_average_at_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(result["estimate_1b"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
