"""``riskmon compare``: do the live stream's credit lines equal the in-process backtest's?

Reads the compacted ``credit-lines`` topic from the beginning to its current end (the
latest line per enterprise is what the bank holds), reads the backtest's ``lines.csv``
at its final as-of date (or ``--as-of``), and compares amounts and rates per enterprise.
Exit 0 when they agree within the tolerances, 1 with a table of the differences.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from streams.cli import UserError

if TYPE_CHECKING:
    from streams.settings import KafkaSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("compare", help="check the credit-lines topic against an in-process backtest")
    parser.add_argument("--bootstrap", default=None,
                        help="Kafka bootstrap HOST:PORT (default: RISKMON_KAFKA__BOOTSTRAP; TLS/SASL from the settings)")
    parser.add_argument("--topic", default="credit-lines", help="credit lines topic (default: %(default)s)")
    parser.add_argument("--backtest", type=Path, required=True, help="a backtest's --out folder (lines.csv)")
    parser.add_argument("--as-of", default=None, help="backtest date to compare (default: its last as-of date)")
    parser.add_argument("--amount-tol", type=float, default=0.5, help="amount tolerance in yuan (default 0.5)")
    parser.add_argument("--rate-tol", type=float, default=1e-6, help="rate tolerance (default 1e-6)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="give up reading Kafka after this long")
    parser.set_defaults(func=run)


def backtest_lines(folder: Path, as_of: str | None = None) -> tuple[str, dict[str, tuple[float, float]]]:
    """The lines of one as-of date of a backtest report folder: ``(as_of, {id: (amount, rate)})``."""
    import pandas as pd

    path = folder / "lines.csv"
    if not path.exists():
        raise UserError(f"{path} not found: run riskmon backtest --out {folder} first")
    frame = pd.read_csv(path, dtype={"as_of": str, "enterprise_id": str})
    if frame.empty:
        raise UserError(f"{path} has no lines")
    date = as_of or str(frame["as_of"].max())
    day = frame[frame["as_of"] == date]
    if day.empty:
        raise UserError(f"{path} has no lines as of {date} (dates: {', '.join(sorted(frame['as_of'].unique()))})")
    return date, {str(r.enterprise_id): (float(r.amount_yuan), float(r.rate)) for r in day.itertuples(index=False)}


async def read_latest(kafka: KafkaSettings, topic: str, timeout_s: float) -> tuple[dict[str, tuple[float, float]], int, int]:
    """The latest CreditLine per key of ``topic`` up to its end offsets; also messages read and undecodable."""
    from streams.adapters.kafka import read_topic
    from streams.errors import StreamError
    from streams.events import CreditLine

    try:
        records = await read_topic(kafka, topic, timeout_s=timeout_s, strict=True)
    except StreamError as exc:
        raise UserError(str(exc)) from None
    latest: dict[str, tuple[float, float]] = {}
    bad = 0
    for key, value, _ in records:
        if not value:  # a tombstone: the line was deleted
            if key is not None:
                latest.pop(key, None)
            continue
        try:
            line = CreditLine.model_validate_json(value)
        except ValueError:
            bad += 1
            continue
        latest[line.enterprise_id] = (line.amount_yuan, line.rate)
    return latest, len(records), bad


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from streams.backtest.compare import compare_lines

    as_of, expected = backtest_lines(args.backtest, args.as_of)
    from streams.cli import load_settings

    kafka = load_settings().kafka
    if args.bootstrap:
        kafka = kafka.model_copy(update={"bootstrap": args.bootstrap})
    actual, n, bad = asyncio.run(read_latest(kafka, args.topic, args.timeout_s))
    diffs = compare_lines(expected, actual, amount_tol_yuan=args.amount_tol, rate_tol=args.rate_tol)
    console = Console(file=sys.stdout)
    lent_e = sum(a for a, _ in expected.values())
    lent_a = sum(a for a, _ in actual.values())
    console.print(f"backtest as of {as_of}: {sum(1 for a, _ in expected.values() if a > 0)} lines, "
                  f"{lent_e:,.0f} yuan; {args.topic}: {sum(1 for a, _ in actual.values() if a > 0)} lines, "
                  f"{lent_a:,.0f} yuan ({n} messages, {bad} undecodable)")
    if not diffs and bad == 0:
        console.print(f"[green]agree[/green]: {len(set(expected) | set(actual))} enterprises compared")
        return 0
    table = Table(title=f"{len(diffs)} differences")
    for col in ("enterprise", "what", "backtest amount", "stream amount", "backtest rate", "stream rate"):
        table.add_column(col, justify="right")
    for d in diffs[:200]:
        table.add_row(d.enterprise_id, d.kind, f"{d.expected_amount_yuan:,.0f}", f"{d.actual_amount_yuan:,.0f}",
                      f"{d.expected_rate:.4f}", f"{d.actual_rate:.4f}")
    console.print(table)
    return 1
