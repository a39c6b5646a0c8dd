#!/usr/bin/env python
"""How fast the console's credit-lines table and portfolio page are with N enterprises (default 100 000).

Builds a :class:`streams.console.view.ConsoleView` with N synthetic credit lines, then times, in
the same run, the console's own queries and an outside baseline doing the same work on the same
rows: a pandas DataFrame (filter, ``sort_values``, slice; group-by for the portfolio). Also times
the full HTTP request (aiohttp, rendering included) through the console app. Reports medians of
``--repeat`` runs and the console/pandas ratios. Wall times depend on the machine's load: quote
the ratios, with the load average printed at the end.

    .venv/bin/python scripts/bench_console.py [--n 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from streams.console.view import ConsoleView, parse_lines_query  # noqa: E402
from streams.events import CreditLine  # noqa: E402

NOW = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def build(n: int, seed: int) -> ConsoleView:
    rng = np.random.default_rng(seed)
    view = ConsoleView()
    ratings = rng.choice(list("ABCD"), n)
    pds = rng.uniform(0, 1, n)
    amounts = np.where(ratings == "D", 0.0, np.round(rng.uniform(1e5, 1e6, n), -3))
    segments = rng.choice(["steady", "potential", "risky", "dormant"], n)
    for i in range(n):
        view.apply_line(CreditLine(
            enterprise_id=f"E{i + 1}", allocation_id="a", as_of=dt.date(2019, 12, 31), amount_yuan=float(amounts[i]),
            rate=0.04 + 0.11 * float(pds[i]), expected_profit_yuan=float(amounts[i]) * 0.02,
            default_probability=float(pds[i]), rating=str(ratings[i]), segment=str(segments[i]), reasons=["optimal"],
            bundle_version="bench", solver="exact", decided_at=NOW))
    return view


def median_s(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    view = build(args.n, args.seed)
    build_s = time.perf_counter() - t0
    frame = pd.DataFrame([{"enterprise_id": x.enterprise_id, "amount_yuan": x.amount_yuan, "rate": x.rate,
                           "default_probability": x.default_probability, "rating": x.rating, "segment": x.segment,
                           "expected_profit_yuan": x.expected_profit_yuan} for x in view.lines.values()])
    q_sorted = parse_lines_query({"sort": "pd", "order": "desc", "page": "7"})
    q_filtered = parse_lines_query({"sort": "amount", "order": "desc", "rating": "B", "status": "lent", "page": "3"})

    def console_cold() -> None:
        view.lines_version += 1  # invalidates the sort cache: a sort from scratch, as after new lines
        view.lines_page(q_sorted)

    def pandas_sorted() -> None:
        frame.sort_values("default_probability", ascending=False).iloc[300:350]

    def pandas_filtered() -> None:
        f = frame[(frame.rating == "B") & (frame.amount_yuan > 0)]
        f.sort_values("amount_yuan", ascending=False).iloc[100:150]

    def pandas_portfolio() -> None:
        frame.groupby("rating").agg(n=("enterprise_id", "size"), amount=("amount_yuan", "sum"))
        frame.groupby("segment").agg(n=("enterprise_id", "size"), amount=("amount_yuan", "sum"))
        frame.amount_yuan.sum()

    rows = {
        "sort page, cold (after new lines)": (median_s(console_cold, args.repeat), median_s(pandas_sorted, args.repeat)),
        "sort page, warm (cached order)": (median_s(lambda: view.lines_page(q_sorted), args.repeat),
                                           median_s(pandas_sorted, args.repeat)),
        "filter + sort page (rating B, lent)": (median_s(lambda: view.lines_page(q_filtered), args.repeat),
                                                median_s(pandas_filtered, args.repeat)),
        "portfolio figures": (median_s(view.portfolio, args.repeat), median_s(pandas_portfolio, args.repeat)),
    }
    http = asyncio.run(http_times(view, args.repeat))
    print(f"{args.n:,} enterprises (built in {build_s:.1f} s); medians of {args.repeat} runs")
    print(f"{'query':40} {'console':>10} {'pandas':>10} {'ratio':>7}")
    for name, (ours, base) in rows.items():
        print(f"{name:40} {ours * 1e3:8.1f}ms {base * 1e3:8.1f}ms {ours / base:7.2f}")
    for name, seconds in http.items():
        print(f"HTTP {name:35} {seconds * 1e3:8.1f}ms (rendering included)")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


async def http_times(view: ConsoleView, repeat: int) -> dict[str, float]:
    from aiohttp.test_utils import TestClient, TestServer

    from streams.adapters.memory import InMemoryFeatureStore, InMemoryRegistry
    from streams.console.server import ConsoleApp
    from streams.settings import Settings

    app = ConsoleApp(Settings(_env_prefix="NOPE_"), stores=lambda: (InMemoryFeatureStore(), InMemoryRegistry()),
                     tail=False)
    app.view = view
    app._caught_up()  # noqa: SLF001
    out: dict[str, float] = {}
    async with TestClient(TestServer(app.make_app())) as client:
        for name, path in (("GET /lines?sort=pd (warm)", "/lines?sort=pd&order=desc&page=7"),
                           ("GET /lines?q=E123&rating=B", "/lines?q=E123&rating=B"),
                           ("GET / (portfolio)", "/")):
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = await client.get(path)
                await r.read()
                assert r.status == 200, (path, r.status)  # noqa: S101 - a benchmark script
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
