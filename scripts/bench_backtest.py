#!/usr/bin/env python
"""Benchmark the in-process backtest on the full real data and collect the README numbers.

Runs ``riskmon backtest`` in a child process (so its peak RSS is its own) over all
1.1 M invoices with quarterly as-of dates, once over every enterprise (the live
worker's universe: speed and memory) and once over the 123 labeled enterprises (every
line has a known outcome: realised profit of riskmon vs the two baselines). Writes
``artifacts/bench_backtest.json``; if ``artifacts/bench_stream.json`` holds the Kafka
replay time of the same data, the speed ratio is computed from it.

Usage: ``python scripts/bench_backtest.py [--bundle DIR] [--budget YUAN] [--as-of SPEC]``
(the bundle defaults to ``var/bundle``, else the cached test bundle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_backtest(bundle: Path, out: Path, budget: float, as_of: str, universe: str, solver: str) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "import sys; from streams.cli import main; sys.exit(main(sys.argv[1:]))",
           "backtest", "--data", str(ROOT / "data" / "cumcm2020c"),
           "--bundle", str(bundle), "--as-of", as_of, "--budget", str(budget), "--solver", solver,
           "--universe", universe, "--out", str(out), "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"backtest failed with exit {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "command": "riskmon " + " ".join(cmd[3:]),
        "wall_s": round(wall, 2),
        # CPU time of the child: on a shared, loaded machine wall time overstates the cost
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "peak_rss_mb": round(summary.get("peak_rss_mb", after.ru_maxrss / 1024), 1),
        "timings_s": {k: round(v, 2) for k, v in summary.get("timings_s", {}).items()},
        "n_events": summary.get("n_events"),
        "n_enterprises": summary.get("n_enterprises"),
        "as_of_dates": summary.get("as_of_dates"),
        "dates": summary.get("dates"),
        "early_flags": {k: v for k, v in summary.get("early_flags", {}).items() if k != "first_flagged"},
        "bundle_version": summary.get("bundle_version"),
    }


def totals(dates: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("realised_profit", "realised_profit_rules", "realised_profit_flat", "expected_profit", "total_lent")
    return {k: round(sum(float(d[k]) for d in dates), 2) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=100_000_000.0, help="yuan (default: paper 000's 100 M)")
    parser.add_argument("--as-of", default="quarterly")
    parser.add_argument("--solver", default="exact")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_backtest.json")
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        bundle = ROOT / "var" / "bundle"
        if not (bundle / "manifest.json").exists():
            sys.path.insert(0, str(ROOT))
            from tests.bundle_fixture import get_test_bundle

            bundle = get_test_bundle()
    # build the validated event cache first (timed on its own), so the timed runs read it
    sys.path.insert(0, str(ROOT))
    from streams.backtest.eventcache import cache_key, load_cached_events

    data = ROOT / "data" / "cumcm2020c"
    cache = ROOT / "var" / "cache" / f"events-{cache_key(data)}.parquet"
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    was_cached = cache.exists()
    load_cached_events(data, ROOT / "var" / "cache")
    cache_build = {"already_cached": was_cached, "wall_s": round(time.perf_counter() - t0, 2),
                   "cpu_s": round(time.process_time() - cpu0, 2)}
    print(f"event cache: {cache_build}", flush=True)
    runs = {}
    for universe in ("all", "labeled"):
        out = ROOT / "var" / "bench-backtest" / universe
        print(f"backtest over {universe} enterprises ...", flush=True)
        runs[universe] = run_backtest(bundle, out, args.budget, args.as_of, universe, args.solver)
        runs[universe]["totals_over_dates"] = totals(runs[universe]["dates"] or [])
        print(f"  {runs[universe]['wall_s']} s wall, {runs[universe]['cpu_s']} s CPU, "
              f"peak RSS {runs[universe]['peak_rss_mb']} MB", flush=True)
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "bundle": str(bundle),
        "budget_yuan": args.budget,
        "solver": args.solver,
        "event_cache": cache_build,
        "runs": runs,
        "load_average_at_end": os.getloadavg(),
    }
    stream = ROOT / "artifacts" / "bench_stream.json"
    if stream.exists():
        data = json.loads(stream.read_text(encoding="utf-8"))
        kafka_s = _find_replay_seconds(data)
        if kafka_s:
            result["kafka_full_replay_s"] = kafka_s
            result["speedup_vs_kafka"] = round(kafka_s / runs["all"]["wall_s"], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({u: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                          **r["totals_over_dates"]}
                      for u, r in runs.items()}, indent=2))
    print(f"wrote {args.out}")
    return 0


def _find_replay_seconds(data: Any) -> float | None:
    """The full Kafka replay time in ``bench_stream.json`` (key names are the streams bench's)."""
    if isinstance(data, dict):
        for key in ("full_replay_s", "replay_s", "full_replay_seconds"):
            if isinstance(data.get(key), (int, float)):
                return float(data[key])
        for value in data.values():
            found = _find_replay_seconds(value)
            if found:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
