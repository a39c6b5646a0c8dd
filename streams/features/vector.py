"""From counters to the feature vector and the monthly sequence, as of a date.

``as_of`` anchors the trailing windows at its month: ``y0`` is the 12 months ending
with the as-of month, ``y1`` the 12 before. Months after the as-of month are ignored.
Point-in-time correctness comes from what was folded: the backtest folds only the
invoices issued up to the as-of date (event-time replay), and the live worker folds
what it has received, which is never dated after its event-time watermark.

Undefined values (a growth rate over an empty year, a rate with no invoices) are NaN;
the model bundle's cleaning step imputes them.

Examples
--------
>>> import datetime as dt
>>> from streams.features.fold import EnterpriseState, summary_keys
>>> s = EnterpriseState("E1", {"m:201901:amt_out": 100_00, "m:201901:n_out": 1,
...     "m:201801:amt_out": 50_00, "m:201801:n_out": 1, "s:ncp_out": 1})
>>> v = to_vector(s, dt.date(2019, 6, 30))
>>> v["sales_y0"], v["sales_growth"], v["n_buyers"]
(100.0, 1.0, 1.0)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping

import numpy as np

from models.schema import NUMERIC_FEATURES, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from streams.features.fold import EnterpriseState, summary_keys

_METRICS = ("n", "void", "valid", "amt", "tot", "gross", "ret", "retamt")
_METRIC_INDEX = {f"{m}_{d}": i for i, (m, d) in enumerate((m, d) for d in ("in", "out") for m in _METRICS)}
_WINDOW_MONTHS = 36


def month_index(day: dt.date) -> int:
    """Months since year 0: consecutive months differ by one."""
    return day.year * 12 + day.month - 1


def _monthly(counters: Mapping[str, int], end_month: int) -> tuple[np.ndarray, np.ndarray, int | None, int | None]:
    """Counters per month for the window, cumulative totals, and first/last active month.

    Returns ``(window, totals, first, last)``: ``window`` is (metrics, 36) for the months
    ``end_month-35 .. end_month``; ``totals`` (metrics,) sums every month up to ``end_month``.
    """
    window = np.zeros((len(_METRIC_INDEX), _WINDOW_MONTHS), dtype=np.float64)
    totals = np.zeros(len(_METRIC_INDEX), dtype=np.float64)
    start = end_month - _WINDOW_MONTHS + 1
    first: int | None = None
    last: int | None = None
    for key, value in counters.items():
        if not key.startswith("m:"):
            continue
        ym, metric = key[2:8], key[9:]
        month = int(ym[:4]) * 12 + int(ym[4:]) - 1
        if month > end_month:
            continue
        row = _METRIC_INDEX[metric]
        totals[row] += value
        if month >= start:
            window[row, month - start] += value
        if metric.startswith("n_") and value:
            first = month if first is None or month < first else first
            last = month if last is None or month > last else last
    return window, totals, first, last


def _growth(new: float, old: float) -> float:
    return (new - old) / abs(old) if abs(old) >= 1.0 else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _cv(series: np.ndarray) -> float:
    mean = float(series.mean())
    return float(series.std()) / mean if mean > 0 else math.nan


def _signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def to_vector(state: EnterpriseState, as_of: dt.date) -> dict[str, float]:
    """The numeric features of :data:`models.schema.NUMERIC_FEATURES` as of ``as_of``."""
    end = month_index(as_of)
    window, totals, first, last = _monthly(state.counters, end)
    row = _METRIC_INDEX

    def year(metric: str, k: int) -> float:  # sum over the k-th trailing 12-month block, in yuan or counts
        block = window[row[metric], _WINDOW_MONTHS - 12 * (k + 1) : _WINDOW_MONTHS - 12 * k]
        return float(block.sum())

    sales = [year("amt_out", k) / 100 for k in range(3)]
    cost = [year("amt_in", k) / 100 for k in range(3)]
    profit = [s - c for s, c in zip(sales, cost, strict=True)]
    income = [year("tot_out", k) / 100 for k in range(3)]

    def avg_growth(values: list[float]) -> float:
        rates = [g for g in (_growth(values[0], values[1]), _growth(values[1], values[2])) if not math.isnan(g)]
        return float(np.mean(rates)) if rates else math.nan

    t = {name: float(totals[i]) for name, i in row.items()}
    n_in, n_out = t["n_in"], t["n_out"]
    n_inv = n_in + n_out
    n_valid = t["valid_in"] + t["valid_out"]
    n_void = t["void_in"] + t["void_out"]
    n_ret = t["ret_in"] + t["ret_out"]

    # counterparty summaries kept by the fold (streams.features.fold.fold_delta): no scan of counterparties
    c = state.counters
    cp_count, cpa_sum, cpa_max = {}, {}, {}
    for d in ("in", "out"):
        n_key, sum_key, max_key = summary_keys(d)
        cp_count[d], cpa_sum[d], cpa_max[d] = c.get(n_key, 0), c.get(sum_key, 0), c.get(max_key, 0)

    monthly_sales = window[row["amt_out"]] / 100
    active_12 = window[row["n_out"], -12:] + window[row["n_in"], -12:]
    features = {
        "sales_y0": sales[0],
        "cost_y0": cost[0],
        "profit_y0": profit[0],
        "margin_y0": profit[0] / abs(sales[0]) if abs(sales[0]) >= 1.0 else math.nan,
        "sales_growth": _growth(sales[0], sales[1]),
        "cost_growth": _growth(cost[0], cost[1]),
        "profit_growth": _growth(profit[0], profit[1]),
        "avg_sales_growth": avg_growth(sales),
        "avg_cost_growth": avg_growth(cost),
        "avg_profit_growth": avg_growth(profit),
        "income_growth": _growth(income[0], income[1]),
        "n_valid": n_valid,
        "n_void": n_void,
        "n_return": n_ret,
        "void_rate": _ratio(n_void, n_inv),
        "return_rate": _ratio(n_ret, n_valid),
        "n_valid_out": t["valid_out"],
        "n_void_out": t["void_out"],
        "n_return_out": t["ret_out"],
        "void_rate_out": _ratio(t["void_out"], n_out),
        "return_rate_out": _ratio(t["ret_out"], t["valid_out"]),
        "void_rate_in": _ratio(t["void_in"], n_in),
        "return_rate_in": _ratio(t["ret_in"], t["valid_in"]),
        "return_amount_share_out": _ratio(t["retamt_out"], t["gross_out"]),
        "n_invoices": n_inv,
        "n_out": n_out,
        "n_in": n_in,
        "log_sales_y0": _signed_log(sales[0]),
        "log_cost_y0": _signed_log(cost[0]),
        "n_buyers": float(cp_count["out"]),
        "n_sellers": float(cp_count["in"]),
        "top_buyer_share": _ratio(cpa_max["out"], cpa_sum["out"]),
        "top_seller_share": _ratio(cpa_max["in"], cpa_sum["in"]),
        "sales_cv_12m": _cv(monthly_sales[-12:]),
        "sales_cv_24m": _cv(monthly_sales[-24:]),
        "active_months_share_12m": float(np.count_nonzero(active_12)) / 12.0,
        "months_since_first": float(end - first) if first is not None else math.nan,
        "months_since_last": float(end - last) if last is not None else math.nan,
    }
    return {name: features[name] for name in NUMERIC_FEATURES}


def to_sequence(state: EnterpriseState, as_of: dt.date, n_months: int = SEQUENCE_MONTHS) -> np.ndarray:
    """The monthly invoice history ending with the as-of month, shape (channels, n_months).

    Channels are :data:`models.schema.SEQUENCE_CHANNELS`; months with no invoice are zeros.
    """
    if n_months > _WINDOW_MONTHS:
        raise ValueError(f"n_months must be at most {_WINDOW_MONTHS}")
    window, _, _, _ = _monthly(state.counters, month_index(as_of))
    w = window[:, -n_months:]
    row = _METRIC_INDEX

    def signed_log(x: np.ndarray) -> np.ndarray:
        return np.sign(x) * np.log1p(np.abs(x))


    n_all = w[row["n_in"]] + w[row["n_out"]]
    void_all = w[row["void_in"]] + w[row["void_out"]]
    valid_all = w[row["valid_in"]] + w[row["valid_out"]]
    ret_all = w[row["ret_in"]] + w[row["ret_out"]]
    channels = {
        "log_sales": signed_log(w[row["amt_out"]] / 100),
        "log_cost": signed_log(w[row["amt_in"]] / 100),
        "log_n_out": np.log1p(w[row["n_out"]]),
        "log_n_in": np.log1p(w[row["n_in"]]),
        "void_share": np.divide(void_all, n_all, out=np.zeros_like(n_all), where=n_all > 0),
        "return_share": np.divide(ret_all, valid_all, out=np.zeros_like(valid_all), where=valid_all > 0),
    }
    return np.stack([channels[name] for name in SEQUENCE_CHANNELS]).astype(np.float32)
