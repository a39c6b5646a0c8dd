"""Small explicit test doubles and event factories for the backtest's unit tests.

The scorer double derives its outputs from the features it is given (so any feature
leak shows in the scores); the allocator double is a plain greedy rule. The e2e and
slow tests use the real model bundle and the real allocator.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.schema import NUMERIC_FEATURES
from models.scoring import ReasonsWanted, Score, ScoringBatch, reasons_mask
from streams.adapters.memory import InMemoryRegistry
from streams.events import EnterpriseScore, InvoiceEvent
from streams.pipeline import AllocationDecision, LineDecision
from streams.ports import EnterpriseInfo

_SALES = NUMERIC_FEATURES.index("sales_y0")
_N = NUMERIC_FEATURES.index("n_invoices")
_RATE = {"A": 0.02, "B": 0.05, "C": 0.1, "D": 0.9}  # the double's shadow challenger: a per-rating rate


class FeatureScorer:
    """Default probability falls with sales; segment by invoice count; rating known or from the probability.

    Reasons (where asked) name the sales and the rating the scorer was given, so a test sees from
    which inputs they came; ``explained`` counts the rows it was asked to explain.
    """

    version = "test-double-1"

    def __init__(self) -> None:
        self.explained = 0

    def score_many(self, batch: ScoringBatch, *, reasons: ReasonsWanted = True) -> list[Score]:
        out = []
        explain = reasons_mask(reasons, len(batch.enterprise_ids))
        self.explained += int(explain.sum())
        for i, eid in enumerate(batch.enterprise_ids):
            sales = float(np.nan_to_num(batch.numeric[i, _SALES]))
            n = float(np.nan_to_num(batch.numeric[i, _N]))
            p = 1.0 / (1.0 + math.exp(math.log1p(max(sales, 0.0)) - 6.0))
            known = batch.known_ratings[i]
            rating = known or ("A" if p < 0.2 else "B" if p < 0.5 else "C" if p < 0.8 else "D")
            why = (f"sales_y0: {sales:.2f}", f"known_rating: {known}") if explain[i] else None
            out.append(Score(eid, rating, known is not None, {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}, p,
                             "big" if n >= 5 else "small", reasons=why,
                             challenger_default_probability=_RATE[rating]))
        return out


def greedy_allocate(scores: Sequence[EnterpriseScore], *, budget_yuan: float, solver: str, seed: int
                    ) -> AllocationDecision:
    """Lowest default probability first, 500 000 yuan each at 5 %, never D."""
    left = budget_yuan
    lines = {}
    for s in sorted(scores, key=lambda s: (s.default_probability, s.enterprise_id)):
        amount = 500_000.0 if s.rating != "D" and left >= 500_000 else 0.0
        left -= amount
        lines[s.enterprise_id] = LineDecision(s.enterprise_id, amount, 0.05 if amount else 0.0,
                                              amount * (0.05 * (1 - s.default_probability) - s.default_probability),
                                              ("lent",) if amount else ("budget_exhausted",))
    total = sum(d.amount_yuan for d in lines.values())
    return AllocationDecision(lines, total, sum(d.expected_profit_yuan for d in lines.values()), solver, 0.0)


def registry(*ids: str, ratings: dict[str, str] | None = None) -> InMemoryRegistry:
    names = ["***建筑工程有限公司", "***电器销售有限公司", "个体经营{}"]
    ratings = ratings or {}
    return InMemoryRegistry(EnterpriseInfo(e, names[i % 3].format(e), ratings.get(e)) for i, e in enumerate(ids))


def invoice(eid: str, day: dt.date, k: int, amount: int = 1000, direction: str = "out", status: str = "valid",
            counterparty: str = "B1") -> InvoiceEvent:
    tax = round(amount * 0.13, 2)
    return InvoiceEvent(
        event_id=f"{eid}-{direction}-{k}-0", enterprise_id=eid, direction=direction, invoice_no=str(k),
        issue_date=day, counterparty_id=counterparty, amount=f"{amount:.2f}", tax=f"{tax:.2f}",
        total=f"{amount + tax:.2f}", status=status,
        produced_at=dt.datetime.combine(day, dt.time(10), tzinfo=dt.UTC),
    )


def write_slice(src: Path, dst: Path, ids: set[str]) -> Path:
    """A data set folder with every invoice of ``ids`` in the source order (same events, same ids)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "enterprises.csv", dst / "enterprises.csv")
    shutil.copy(src / "churn.csv", dst / "churn.csv")
    with gzip.open(src / "invoices.csv.gz", "rt", encoding="utf-8", newline="") as fin, \
            open(dst / "invoices.csv", "w", encoding="utf-8", newline="") as fout:
        reader = csv.reader(fin)
        writer = csv.writer(fout)
        header = next(reader)
        writer.writerow(header)
        col = header.index("enterprise_id")
        for row in reader:
            if row[col] in ids:
                writer.writerow(row)
    return dst
