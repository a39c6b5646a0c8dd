"""``riskmon replay``: publish the historical invoices to ``invoices`` in event-time order.

``--max`` (the default) sends as fast as the broker takes them; ``--rate N`` at most N
invoices per second; ``--speed X`` paces by event time, X days of invoices per second.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

from streams.cli import UserError, load_settings


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("replay", help="publish the historical invoices to Kafka in event-time order")
    parser.add_argument("--data", type=Path, help="data set folder (default: the project's copy)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--max", action="store_true", help="as fast as possible (default)")
    pace.add_argument("--rate", type=float, help="at most this many invoices per second")
    pace.add_argument("--speed", type=float, help="this many days of event time per second")
    parser.add_argument("--from", dest="start", type=_date, help="first issue date (inclusive)")
    parser.add_argument("--to", dest="end", type=_date, help="last issue date (inclusive)")
    parser.add_argument("--enterprises", help="comma-separated enterprise ids (default: all)")
    parser.add_argument("--limit", type=int, help="publish at most this many invoices")
    parser.add_argument("--topic", help="target topic (default: settings' invoices topic)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


async def publish(records: list[Any], settings: object, topic: str, *, rate: float | None, speed: float | None,
                  progress: bool) -> float:
    """Send the records in order with the chosen pacing; returns the seconds spent."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from streams.adapters.kafka import make_producer

    # acks=all (idempotent): with replicated topics an invoice acknowledged by a leader that then dies is not lost
    producer = make_producer(settings.kafka, linger_ms=20)  # type: ignore[attr-defined]
    await producer.start()
    t0 = time.perf_counter()
    first_day = next((r.issue_date for r in records if r.issue_date is not None), None)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:>9} inv/s"),
               TextColumn("{task.fields[day]}"), TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not progress) as bar:
            task = bar.add_task("replay", total=len(records), rate="", day="")
            pending = []
            for i, rec in enumerate(records):
                if rate is not None:
                    wait = t0 + i / rate - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                elif speed is not None and rec.issue_date is not None and first_day is not None:
                    wait = t0 + (rec.issue_date - first_day).days / speed - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                pending.append(await producer.send(topic, rec.value, key=rec.key.encode()))
                if len(pending) >= 20_000 or (rate is not None and len(pending) >= max(1, int(rate // 10))):
                    await asyncio.gather(*pending)
                    pending.clear()
                    elapsed = time.perf_counter() - t0
                    bar.update(task, completed=i + 1, rate=f"{(i + 1) / elapsed:,.0f}", day=str(rec.issue_date))
            await asyncio.gather(*pending)
            bar.update(task, completed=len(records))
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streams.adapters.kafka import ensure_topics
    from streams.dataset import DEFAULT_DATA_DIR
    from streams.errors import StreamError
    from streams.replay import replay_records

    settings = load_settings()
    data = args.data or DEFAULT_DATA_DIR
    if not (data / "invoices.csv.gz").exists() and not (data / "invoices.csv").exists():
        raise UserError(f"{data} holds no invoices.csv.gz or invoices.csv")
    for name in ("rate", "speed"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive")
    console = Console(stderr=True)
    wanted = {e.strip() for e in args.enterprises.split(",") if e.strip()} if args.enterprises else None
    t0 = time.perf_counter()
    records = replay_records(data, start=args.start, end=args.end, enterprises=wanted)
    if args.limit is not None:
        records = records[: args.limit]
    console.print(f"{len(records):,} invoices to replay (read and sorted in {time.perf_counter() - t0:.1f} s)")
    topic = args.topic or settings.topics.invoices
    try:
        asyncio.run(ensure_topics(settings.kafka, settings.topics))
        elapsed = asyncio.run(publish(records, settings, topic, rate=args.rate, speed=args.speed,
                                      progress=not args.no_progress))
    except StreamError as exc:
        raise UserError(str(exc)) from None
    console.print(f"published {len(records):,} invoices to {topic} in {elapsed:.1f} s "
                  f"({len(records) / max(elapsed, 1e-9):,.0f}/s)")
    return 0
