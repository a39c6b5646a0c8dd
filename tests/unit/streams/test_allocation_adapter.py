"""The real allocator behind run_allocation: budget respected, D-rated and unknown enterprises get nothing."""

from __future__ import annotations

import datetime as dt

import numpy as np

from allocator import ChurnCurves
from streams.adapters.allocation import make_allocate
from streams.adapters.memory import InMemoryRegistry
from streams.dataset import DEFAULT_DATA_DIR
from streams.events import EnterpriseScore
from streams.pipeline import REASON_UNKNOWN_ENTERPRISE, run_allocation

NOW = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def _scores(ids: list[str], seed: int = 0) -> dict[str, EnterpriseScore]:
    rng = np.random.default_rng(seed)
    out = {}
    for eid in ids:
        rating = str(rng.choice(["A", "B", "C", "D"]))
        pd_ = float(rng.uniform(0.0, 0.3)) if rating != "D" else 0.9
        out[eid] = EnterpriseScore(
            enterprise_id=eid, as_of=dt.date(2019, 12, 31), rating=rating, rating_known=False,  # type: ignore[arg-type]
            rating_probabilities={"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}, default_probability=pd_,
            segment="s", industry="manufacturing", legal_form="limited_company", n_invoices=10,
            bundle_version="b", scored_at=NOW)
    return out


def test_real_allocator_through_run_allocation() -> None:
    churn = ChurnCurves.from_csv(DEFAULT_DATA_DIR / "churn.csv")
    registry = InMemoryRegistry.from_data_dir(DEFAULT_DATA_DIR)
    scores = _scores([f"E{i}" for i in range(1, 121)] + ["NEW1"])
    for solver in ("exact", "rules"):
        out = run_allocation(scores, {}, make_allocate(churn), registry, budget_yuan=20_000_000, solver=solver,
                             as_of=dt.date(2019, 12, 31), now=NOW, allocation_id="a", bundle_version="b")
        total = sum(line.amount_yuan for line in out.lines.values())
        assert 0 < total <= 20_000_000 and abs(total - out.summary.total_amount_yuan) < 1
        assert all(line.amount_yuan == 0 for line in out.lines.values() if line.rating == "D")
        assert all(line.amount_yuan == 0 or 100_000 <= line.amount_yuan <= 1_000_000 for line in out.lines.values())
        assert out.lines["NEW1"].reasons == [REASON_UNKNOWN_ENTERPRISE] and out.n_unknown == 1
        assert out.summary.solver == solver and len(out.changed) == 121
