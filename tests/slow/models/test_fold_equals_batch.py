"""The fold (``to_vector`` over folded states) equals an independent vectorised pandas computation.

Over the whole real invoice table, for all 425 enterprises, as of the last invoice date:
sales / cost / profit / income per trailing year and their growth, counts and rates of
valid, void and returned invoices, return amount share, counterparties and top shares,
activity, months since first/last invoice, and monthly sales variation; each to 1e-9 relative.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from models.schema import NUMERIC_FEATURES
from streams.dataset import DEFAULT_DATA_DIR

pytestmark = pytest.mark.slow

AS_OF = dt.date(2020, 2, 21)


def _growth(new: pd.Series, old: pd.Series) -> pd.Series:
    return ((new - old) / old.abs()).where(old.abs() >= 1.0)


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num / den).where(den > 0)


def independent_features(ids: list[str]) -> pd.DataFrame:
    inv = pd.read_csv(DEFAULT_DATA_DIR / "invoices.csv.gz", dtype={"invoice_no": str, "amount": str, "tax": str, "total": str})
    for col in ("amount", "tax", "total"):  # to fen, exactly
        inv[col + "_c"] = np.rint(inv[col].astype(float) * 100).astype(np.int64)
    inv["status"] = inv["status"].str.strip().str.lower()
    inv = inv[(inv["amount_c"] + inv["tax_c"] - inv["total_c"]).abs() <= 1]  # the validation rule (0.01 yuan)
    day = pd.to_datetime(inv["date"])
    inv = inv[day.dt.date <= AS_OF]
    day = pd.to_datetime(inv["date"])
    end = AS_OF.year * 12 + AS_OF.month - 1
    inv["age"] = end - (day.dt.year * 12 + day.dt.month - 1)  # months before the as-of month
    valid = inv["status"] == "valid"
    inv["valid"] = valid.astype(int)
    inv["void"] = (~valid).astype(int)
    inv["ret"] = (valid & (inv["amount_c"] < 0)).astype(int)
    inv["retamt"] = np.where(valid & (inv["amount_c"] < 0), -inv["amount_c"], 0)
    inv["gross"] = np.where(valid & (inv["amount_c"] > 0), inv["amount_c"], 0)
    inv["amt"] = np.where(valid, inv["amount_c"], 0)
    inv["tot"] = np.where(valid, inv["total_c"], 0)
    inv["year"] = inv["age"] // 12

    out = pd.DataFrame(index=pd.Index(ids, name="enterprise_id"))
    g = inv.groupby(["enterprise_id", "direction"])
    per_dir = g[["valid", "void", "ret", "retamt", "gross"]].sum().unstack("direction").fillna(0)
    counts = g.size().unstack("direction").fillna(0).reindex(ids).fillna(0)
    per_dir = per_dir.reindex(ids).fillna(0)
    yearly = inv[inv["year"] < 3].groupby(["enterprise_id", "direction", "year"])[["amt", "tot"]].sum()

    def year(metric: str, d: str, k: int) -> pd.Series:
        try:
            s = yearly[metric].xs((d, k), level=("direction", "year"))
        except KeyError:
            s = pd.Series(dtype=float)
        return s.reindex(ids).fillna(0) / 100

    sales = [year("amt", "out", k) for k in range(3)]
    cost = [year("amt", "in", k) for k in range(3)]
    profit = [s - c for s, c in zip(sales, cost, strict=True)]
    income = [year("tot", "out", k) for k in range(3)]

    def avg_growth(v: list[pd.Series]) -> pd.Series:
        return pd.concat([_growth(v[0], v[1]), _growth(v[1], v[2])], axis=1).mean(axis=1, skipna=True)

    n_in, n_out = counts.get("in", 0), counts.get("out", 0)
    valid_in, valid_out = per_dir[("valid", "in")], per_dir[("valid", "out")]
    void_in, void_out = per_dir[("void", "in")], per_dir[("void", "out")]
    ret_in, ret_out = per_dir[("ret", "in")], per_dir[("ret", "out")]
    out["sales_y0"], out["cost_y0"], out["profit_y0"] = sales[0], cost[0], profit[0]
    out["margin_y0"] = (profit[0] / sales[0].abs()).where(sales[0].abs() >= 1.0)
    out["sales_growth"], out["cost_growth"] = _growth(sales[0], sales[1]), _growth(cost[0], cost[1])
    out["profit_growth"], out["income_growth"] = _growth(profit[0], profit[1]), _growth(income[0], income[1])
    out["avg_sales_growth"], out["avg_cost_growth"], out["avg_profit_growth"] = avg_growth(sales), avg_growth(cost), avg_growth(profit)
    out["n_valid"], out["n_void"], out["n_return"] = valid_in + valid_out, void_in + void_out, ret_in + ret_out
    out["n_invoices"], out["n_out"], out["n_in"] = n_in + n_out, n_out, n_in
    out["void_rate"] = _ratio(out["n_void"], out["n_invoices"])
    out["return_rate"] = _ratio(out["n_return"], out["n_valid"])
    out["n_valid_out"], out["n_void_out"], out["n_return_out"] = valid_out, void_out, ret_out
    out["void_rate_out"], out["return_rate_out"] = _ratio(void_out, n_out), _ratio(ret_out, valid_out)
    out["void_rate_in"], out["return_rate_in"] = _ratio(void_in, n_in), _ratio(ret_in, valid_in)
    out["return_amount_share_out"] = _ratio(per_dir[("retamt", "out")], per_dir[("gross", "out")])
    out["log_sales_y0"] = np.sign(sales[0]) * np.log1p(sales[0].abs())
    out["log_cost_y0"] = np.sign(cost[0]) * np.log1p(cost[0].abs())

    cp = inv.groupby(["enterprise_id", "direction"])["counterparty_id"].nunique().unstack("direction").reindex(ids).fillna(0)
    out["n_buyers"], out["n_sellers"] = cp.get("out", 0), cp.get("in", 0)
    per_cp = inv.groupby(["enterprise_id", "direction", "counterparty_id"])["gross"].sum()
    top = per_cp.groupby(level=["enterprise_id", "direction"]).agg(["max", "sum"])
    for d, name in (("out", "top_buyer_share"), ("in", "top_seller_share")):
        t = top.xs(d, level="direction").reindex(ids)
        out[name] = _ratio(t["max"].fillna(0), t["sum"].fillna(0))

    monthly = inv[inv["direction"] == "out"].groupby(["enterprise_id", "age"])["amt"].sum().unstack("age")
    monthly = monthly.reindex(index=ids, columns=range(36)).fillna(0) / 100
    for n, name in ((12, "sales_cv_12m"), (24, "sales_cv_24m")):
        block = monthly[list(range(n))]
        mean = block.mean(axis=1)
        out[name] = (block.std(axis=1, ddof=0) / mean).where(mean > 0)
    active = inv[inv["age"] < 12].groupby("enterprise_id")["age"].nunique().reindex(ids).fillna(0)
    out["active_months_share_12m"] = active / 12.0
    ages = inv.groupby("enterprise_id")["age"].agg(["max", "min"]).reindex(ids)
    out["months_since_first"], out["months_since_last"] = ages["max"], ages["min"]
    return out


def test_fold_equals_independent_batch_on_full_real_data() -> None:
    from tests.bundle_fixture import get_test_feature_table

    table = get_test_feature_table()  # the fold over all 1.1 M invoices (cached)
    ids = list(table.enterprise_ids)  # type: ignore[attr-defined]
    assert len(ids) == 425
    fold = pd.DataFrame(table.numeric, index=ids, columns=list(NUMERIC_FEATURES))  # type: ignore[attr-defined]
    batch = independent_features(ids)
    assert set(batch.columns) == set(NUMERIC_FEATURES)  # every feature is checked
    for name in NUMERIC_FEATURES:
        a, b = fold[name].to_numpy(), batch[name].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN pattern of {name}")
        ok = ~np.isnan(a)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9, err_msg=name)
