"""``riskmon allocate``: credit lines for a table of scores, by the allocator package.

The logic lives in :mod:`allocator`; this module only reads the CSV, builds the problem,
writes the JSON and turns every input error into one line (exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from allocator import SOLVERS, AllocatorError, Applicant, ChurnCurves, allocate, make_problem
from streams.cli import UserError
from streams.dataset import DEFAULT_DATA_DIR

REQUIRED_COLUMNS = ("enterprise_id", "rating", "default_probability", "segment")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("allocate", help="allocate credit lines under a budget from a CSV of scores")
    parser.add_argument("--scores", type=Path, required=True,
                        help="CSV with enterprise_id, rating, default_probability, segment (optional: industry, "
                             "strength, stability; other columns ignored)")
    parser.add_argument("--budget", type=float, required=True, help="total budget in yuan")
    parser.add_argument("--solver", choices=SOLVERS, default="exact")
    parser.add_argument("--policy", choices=("enterprise", "segment"), default="enterprise")
    parser.add_argument("--seed", type=int, default=0, help="annealing seed")
    parser.add_argument("--churn", type=Path, default=DEFAULT_DATA_DIR / "churn.csv", help="churn table CSV")
    parser.add_argument("--monotone-churn", action="store_true", help="fit isotonic (non-decreasing) churn curves")
    parser.add_argument("--rate-grid", choices=("observed", "continuous"), default="observed")
    parser.add_argument("--lgd", type=float, default=1.0, help="loss given default (default 1)")
    parser.add_argument("--segment-cap", type=float, default=None, help="max share of the budget per segment")
    parser.add_argument("--industry-cap", type=float, default=None, help="max share of the budget per industry")
    parser.add_argument("--moves-per-temperature", type=int, default=100, help="annealing moves per temperature")
    parser.add_argument("--out", type=Path, default=None, help="JSON output file (default: standard output)")
    parser.set_defaults(func=run)


def _optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return float(value)


def read_applicants(path: Path) -> list[Applicant]:
    """Read the scores CSV into applicants; every problem becomes a :class:`UserError`."""
    import pandas as pd

    if not path.is_file():
        raise UserError(f"scores file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype={"enterprise_id": str, "rating": str, "segment": str, "industry": str})
    except pd.errors.EmptyDataError:
        raise UserError(f"scores file {path} is empty") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read scores file {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"scores file {path} lacks column(s) {', '.join(missing)}")
    if frame.empty:
        raise UserError(f"scores file {path} has no rows")
    probabilities = pd.to_numeric(frame["default_probability"], errors="coerce")
    bad = frame.loc[probabilities.isna(), "enterprise_id"].tolist()
    if bad:
        raise UserError(f"default_probability is missing or not a number for {bad[0]} ({len(bad)} row(s))")
    applicants = []
    try:
        for i, row in enumerate(frame.to_dict("records")):
            segment = row.get("segment")
            industry = row.get("industry")
            applicants.append(Applicant(
                enterprise_id=str(row["enterprise_id"]).strip(),
                rating=str(row["rating"]).strip(),
                default_probability=float(probabilities.iloc[i]),
                segment="" if segment is None or segment != segment else str(segment),
                industry="" if industry is None or industry != industry else str(industry),
                strength=_optional_float(row.get("strength")),
                stability=_optional_float(row.get("stability")),
            ))
    except (AllocatorError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return applicants


def run(args: argparse.Namespace) -> int:
    applicants = read_applicants(args.scores)
    try:
        churn = ChurnCurves.from_csv(args.churn, monotone=args.monotone_churn)
        problem = make_problem(applicants, args.budget, churn, policy=args.policy, rate_grid=args.rate_grid,
                               lgd=args.lgd, segment_cap_share=args.segment_cap, industry_cap_share=args.industry_cap)
        options: dict[str, object] = {}
        if args.solver == "anneal":
            options["moves_per_temperature"] = args.moves_per_temperature
        result = allocate(problem, solver=args.solver, seed=args.seed, **options)
    except (AllocatorError, ValueError) as exc:
        raise UserError(str(exc)) from None
    payload = result.to_dict()
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror}") from None
        gap = f", gap {result.gap:.2e}" if result.gap is not None and result.solver == "anneal" else ""
        print(f"{result.solver}: {result.n_lines} lines, {result.total_amount_yuan:,} yuan lent, "
              f"expected profit {result.expected_profit_yuan:,.0f} yuan{gap} -> {args.out}", file=sys.stderr)
    return 0
