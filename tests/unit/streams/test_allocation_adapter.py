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


def test_declined_line_is_republished_when_its_reasons_change() -> None:
    # A D-rated enterprise is declined (rating_D); re-rated B with a high default probability it is
    # still declined, now for negative_expected_profit: same amount and rate, but the published
    # reasons must not stay "rating_D".
    churn = ChurnCurves.from_csv(DEFAULT_DATA_DIR / "churn.csv")
    registry = InMemoryRegistry.from_data_dir(DEFAULT_DATA_DIR)
    d_rated = _scores(["E1"])["E1"].model_copy(update={"rating": "D", "default_probability": 0.9})
    kw = {"budget_yuan": 5_000_000, "solver": "exact", "now": NOW, "bundle_version": "b"}
    first = run_allocation({"E1": d_rated}, {}, make_allocate(churn), registry, as_of=dt.date(2019, 11, 30),
                           allocation_id="a1", **kw)
    assert first.lines["E1"].reasons == ["rating_D"]
    re_rated = d_rated.model_copy(update={"rating": "B", "default_probability": 0.5})
    second = run_allocation({"E1": re_rated}, first.lines, make_allocate(churn), registry, as_of=dt.date(2019, 12, 31),
                            allocation_id="a2", **kw)
    line = second.lines["E1"]
    assert line.amount_yuan == 0 and line.reasons == ["negative_expected_profit"]
    assert [c.enterprise_id for c in second.changed] == ["E1"]
    assert line.change_reasons[0] == "reasons_changed" and "rating_changed:D->B" in line.change_reasons
    # and an unchanged decision is still not republished
    third = run_allocation({"E1": re_rated}, second.lines, make_allocate(churn), registry, as_of=dt.date(2019, 12, 31),
                           allocation_id="a3", **kw)
    assert third.changed == []
