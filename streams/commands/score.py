"""``riskmon score``: score every enterprise of a data set with a trained bundle, as a CSV.

Columns: ``enterprise_id, rating, rating_known, rating_p_A..rating_p_D, default_probability,
default_probability_invoice_only, challenger_default_probability, segment, industry, legal_form, strength, stability, risk_factors``
(``risk_factors``: the invoice factors that raised the default probability most, ``" | "``-separated).

- ``rating``: the known rating, else the CNN's; ``default_probability``: the rating-aware
  net stacked with the rating's default rate (see :mod:`models.bundle`);
  ``default_probability_invoice_only``: the net without rating; ``challenger_default_probability``:
  the per-rating default rate, scored in shadow. Both are cross-fitted: a labeled
  enterprise is scored by the bundle member that did not see its label.
- ``strength`` (0..1, for the allocator's rule strategy): mean of the percentile ranks,
  among the scored enterprises, of ``log_sales_y0`` and ``profit_y0``.
- ``stability`` (0..1): 1 - percentile rank of ``sales_cv_24m`` (lower variation of monthly
  sales = more stable); an enterprise with no sales in 24 months gets 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from models.schema import NUMERIC_FEATURES, RATINGS
from models.scoring import ScoringBatch
from streams.cli import UserError, add_bundle_trust_arguments, load_trusted_bundle
from streams.dataset import DEFAULT_DATA_DIR


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("score", help="score every enterprise with a trained bundle, write a CSV")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder written by `riskmon train`")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="data set folder (default: the project's copy)")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, help="feature date (default: last invoice, 2020-02-21)")
    parser.add_argument("--ignore-known-ratings", action="store_true", help="rate every enterprise with the CNN")
    add_bundle_trust_arguments(parser)
    parser.set_defaults(func=run)


def _percentile(values: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] (NaN stays NaN)."""
    return np.asarray(pd.Series(values).rank(pct=True).to_numpy())


def strength_stability(numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rule strategy's strength and stability scores of a batch (see module doc).

    Examples
    --------
    >>> x = np.zeros((3, len(NUMERIC_FEATURES)))
    >>> x[:, NUMERIC_FEATURES.index("log_sales_y0")] = [1, 2, 3]
    >>> x[:, NUMERIC_FEATURES.index("profit_y0")] = [1, 2, 3]
    >>> x[:, NUMERIC_FEATURES.index("sales_cv_24m")] = [0.5, np.nan, 0.1]
    >>> s, t = strength_stability(x)
    >>> s.round(2).tolist(), t.round(2).tolist()
    ([0.33, 0.67, 1.0], [0.0, 0.0, 0.5])
    """
    col = {name: numeric[:, NUMERIC_FEATURES.index(name)] for name in ("log_sales_y0", "profit_y0", "sales_cv_24m")}
    strength = np.nan_to_num((_percentile(col["log_sales_y0"]) + _percentile(col["profit_y0"])) / 2, nan=0.0)
    stability = np.nan_to_num(1.0 - _percentile(col["sales_cv_24m"]), nan=0.0)
    return strength, stability


def score_frame(bundle: object, batch: ScoringBatch) -> pd.DataFrame:
    """Score a batch with a loaded bundle into the CSV's frame (one row per enterprise)."""
    scores = bundle.score_many(batch)  # type: ignore[attr-defined]
    strength, stability = strength_stability(np.asarray(batch.numeric))
    rows = []
    for i, s in enumerate(scores):
        row: dict[str, object] = {"enterprise_id": s.enterprise_id, "rating": s.rating, "rating_known": s.rating_known}
        row |= {f"rating_p_{r}": round(s.rating_probabilities[r], 6) for r in RATINGS}
        row |= {
            "default_probability": round(s.default_probability, 6),
            "default_probability_invoice_only": (None if s.default_probability_invoice_only is None
                                                 else round(s.default_probability_invoice_only, 6)),
            "challenger_default_probability": (None if s.challenger_default_probability is None
                                               else round(s.challenger_default_probability, 6)),
            "segment": s.segment,
            "industry": batch.categorical[i][0],
            "legal_form": batch.categorical[i][1],
            "strength": round(float(strength[i]), 6),
            "stability": round(float(stability[i]), 6),
            "risk_factors": " | ".join(s.reasons),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def run(args: argparse.Namespace) -> int:
    import torch

    from models.errors import ModelError
    from streams.features.batch import LAST_INVOICE_DATE, build_feature_table

    torch.set_num_threads(1)  # tiny nets: one thread is ~5x faster than two (no sync overhead)
    try:
        bundle = load_trusted_bundle(args)
    except ModelError as exc:
        raise UserError(str(exc)) from exc
    if not (args.data / "enterprises.csv").is_file():
        raise UserError(f"no enterprises.csv in {args.data}")
    table = build_feature_table(args.data, args.as_of or LAST_INVOICE_DATE)
    batch = ScoringBatch(list(table.enterprise_ids), table.numeric, list(table.categorical), table.sequences,
                         [None if args.ignore_known_ratings else r for r in table.ratings])
    frame = score_frame(bundle, batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"{len(frame)} enterprises scored with bundle {bundle.version} -> {args.out}")
    return 0
