"""``riskmon watermark show|set DATE``: the portfolio's event-time watermark, seen and corrected by an operator.

``show`` prints the watermark, the quorum that moves it (``RISKMON_INGEST__WATERMARK_QUORUM``)
and the clients holding the most recent latest dates (who would push it next). ``set DATE``
moves it to DATE, back or forth (e.g. after a client's clock ran ahead), and lowers every
client's recorded latest date above DATE to DATE, so the quorum does not push it straight back.
A running worker scores as of the new watermark from its next micro-batch on.
"""

from __future__ import annotations

import argparse
import datetime as dt

from streams.cli import UserError, load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("watermark", help="show or set the portfolio's event-time watermark")
    parser.add_argument("action", choices=("show", "set"))
    parser.add_argument("date", nargs="?", help="the new watermark (YYYY-MM-DD), for set")
    parser.add_argument("--top", type=int, default=5, help="how many clients' latest dates to show (default 5)")
    parser.set_defaults(func=run)


def parse_date(text: str | None) -> dt.date:
    """A YYYY-MM-DD date, or a one-line UserError."""
    if not text:
        raise UserError("set needs a date: riskmon watermark set YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"not a date: {text!r} (expected YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    from streams.adapters.redis_store import RedisFeatureStore, connect
    from streams.errors import StreamError

    settings = load_settings()
    day = parse_date(args.date) if args.action == "set" else None
    if args.action == "show" and args.date:
        raise UserError("show takes no date (did you mean: riskmon watermark set DATE?)")
    store = RedisFeatureStore(connect(settings.redis), settings.redis.prefix)
    try:
        if day is not None:
            before = store.watermark()
            lowered = store.set_watermark(day)
            print(f"watermark {before} -> {day}; {lowered} client latest date(s) lowered to {day}")
            return 0
        current = store.watermark()
        print(f"watermark: {current if current is not None else 'none (no client event applied yet)'}")
        print(f"quorum: {settings.ingest.watermark_quorum} clients")
        for eid, latest in store.latest_dates(max(args.top, 0)):
            print(f"  {eid}\t{latest}")
    except StreamError as exc:
        raise UserError(f"Redis at {settings.redis.url}: {exc}") from None
    return 0
