"""From counters to the feature vector and the monthly sequence, as of a date.

``as_of`` anchors the trailing windows at its month: ``y0`` is the 12 months ending
with the as-of month, ``y1`` the 12 before. Months after the as-of month are ignored.
Point-in-time correctness comes from what was folded: the backtest folds only the
invoices issued up to the as-of date (event-time replay), and the live worker folds
what it has received, which is never dated after its event-time watermark.

The feature math lives once, in :func:`features_from_arrays` and
:func:`sequences_from_window`, over a batch of enterprises held as arrays
(:class:`MonthlyArrays`). :func:`to_vector` / :func:`to_sequence` read one
enterprise's counters into those arrays; the columnar backtest
(:mod:`streams.backtest.columnar`) builds them for thousands of enterprises and dates
at once, so both paths run the very same arithmetic.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.schema import NUMERIC_FEATURES, SEQUENCE_CHANNELS, SEQUENCE_MONTHS
from streams.features.fold import EnterpriseState, summary_keys

#: The monthly counter metrics, in array row order (``{metric}_{direction}``).
METRICS = ("n", "void", "valid", "amt", "tot", "gross", "ret", "retamt")
DIRECTIONS = ("in", "out")
METRIC_NAMES = tuple(f"{m}_{d}" for d in DIRECTIONS for m in METRICS)
_METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}
#: Months of history the features look at (three trailing years).
WINDOW_MONTHS = 36
_WINDOW_MONTHS = WINDOW_MONTHS


def month_index(day: dt.date) -> int:
    """Months since year 0: consecutive months differ by one."""
    return day.year * 12 + day.month - 1


@dataclass(frozen=True, slots=True)
class MonthlyArrays:
    """What the features of ``n`` enterprises are computed from, as of one month ``end``.

    Attributes
    ----------
    window : (n, 16, 36) float64, counters per metric (:data:`METRIC_NAMES`) for months ``end-35 .. end``.
    totals : (n, 16) float64, counters summed over every month up to ``end``.
    first, last : (n,) float64, first and last month index with an invoice (NaN without one).
    cp_count : (n, 2) float64, counterparties with an invoice, per direction (``in``, ``out``).
    cpa_max, cpa_sum : (n, 2) float64, the largest and the summed valid positive fen per counterparty.
    end : the as-of month index.
    """

    window: np.ndarray
    totals: np.ndarray
    first: np.ndarray
    last: np.ndarray
    cp_count: np.ndarray
    cpa_max: np.ndarray
    cpa_sum: np.ndarray
    end: int


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


def arrays_of(state: EnterpriseState, as_of: dt.date) -> MonthlyArrays:
    """One enterprise's counters as a batch of one."""
    return arrays_of_many([state], as_of)


def arrays_of_many(states: Sequence[EnterpriseState], as_of: dt.date) -> MonthlyArrays:
    """Many enterprises' counters as one batch (one pass over each enterprise's month counters)."""
    end = month_index(as_of)
    n = len(states)
    window = np.zeros((n, len(_METRIC_INDEX), _WINDOW_MONTHS), dtype=np.float64)
    totals = np.zeros((n, len(_METRIC_INDEX)), dtype=np.float64)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    # counterparty summaries kept by the fold (streams.features.fold.fold_delta): no scan of counterparties
    cp_count = np.zeros((n, 2))
    cpa_max = np.zeros((n, 2))
    cpa_sum = np.zeros((n, 2))
    for k, state in enumerate(states):
        w, t, f, l = _monthly(state.counters, end)
        window[k], totals[k] = w, t
        if f is not None:
            first[k], last[k] = f, l
        c = state.counters
        for i, d in enumerate(DIRECTIONS):
            n_key, sum_key, max_key = summary_keys(d)
            cp_count[k, i], cpa_sum[k, i], cpa_max[k, i] = c.get(n_key, 0), c.get(sum_key, 0), c.get(max_key, 0)
    return MonthlyArrays(window=window, totals=totals, first=first, last=last, cp_count=cp_count, cpa_max=cpa_max,
                         cpa_sum=cpa_sum, end=end)


def _growth(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(old) >= 1.0, (new - old) / np.abs(old), np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _cv(series: np.ndarray) -> np.ndarray:
    """Coefficient of variation of each row (rows are contiguous: numpy sums each the same way for any batch)."""
    series = np.ascontiguousarray(series)
    mean = series.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, series.std(axis=1) / mean, np.nan)


def _signed_log(x: np.ndarray) -> np.ndarray:
    # libm's log1p, value by value: numpy's vectorised log1p may differ in the last bit
    return np.array([math.copysign(math.log1p(abs(v)), v) for v in x.tolist()], dtype=np.float64)


def features_from_arrays(a: MonthlyArrays) -> np.ndarray:
    """The numeric features of :data:`models.schema.NUMERIC_FEATURES`, shape (n, features)."""
    window, row = a.window, _METRIC_INDEX

    def year(metric: str, k: int) -> np.ndarray:  # sum over the k-th trailing 12-month block
        return np.asarray(window[:, row[metric], _WINDOW_MONTHS - 12 * (k + 1): _WINDOW_MONTHS - 12 * k].sum(axis=1))

    sales = [year("amt_out", k) / 100 for k in range(3)]
    cost = [year("amt_in", k) / 100 for k in range(3)]
    profit = [s - c for s, c in zip(sales, cost, strict=True)]
    income = [year("tot_out", k) / 100 for k in range(3)]

    def avg_growth(values: list[np.ndarray]) -> np.ndarray:
        g1, g2 = _growth(values[0], values[1]), _growth(values[1], values[2])
        both = (g1 + g2) / 2
        return np.where(np.isnan(g1), g2, np.where(np.isnan(g2), g1, both))

    t = {name: a.totals[:, i] for name, i in row.items()}
    n_in, n_out = t["n_in"], t["n_out"]
    n_inv = n_in + n_out
    n_valid = t["valid_in"] + t["valid_out"]
    n_void = t["void_in"] + t["void_out"]
    n_ret = t["ret_in"] + t["ret_out"]
    monthly_sales = window[:, row["amt_out"]] / 100
    active_12 = window[:, row["n_out"], -12:] + window[:, row["n_in"], -12:]
    i_in, i_out = DIRECTIONS.index("in"), DIRECTIONS.index("out")
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(np.abs(sales[0]) >= 1.0, profit[0] / np.abs(sales[0]), np.nan)
    features = {
        "sales_y0": sales[0],
        "cost_y0": cost[0],
        "profit_y0": profit[0],
        "margin_y0": margin,
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
        "n_buyers": a.cp_count[:, i_out],
        "n_sellers": a.cp_count[:, i_in],
        "top_buyer_share": _ratio(a.cpa_max[:, i_out], a.cpa_sum[:, i_out]),
        "top_seller_share": _ratio(a.cpa_max[:, i_in], a.cpa_sum[:, i_in]),
        "sales_cv_12m": _cv(monthly_sales[:, -12:]),
        "sales_cv_24m": _cv(monthly_sales[:, -24:]),
        "active_months_share_12m": np.count_nonzero(active_12, axis=1) / 12.0,
        "months_since_first": a.end - a.first,
        "months_since_last": a.end - a.last,
    }
    return np.stack([np.asarray(features[name], dtype=np.float64) for name in NUMERIC_FEATURES], axis=1)


def to_vector(state: EnterpriseState, as_of: dt.date) -> dict[str, float]:
    """The numeric features of :data:`models.schema.NUMERIC_FEATURES` as of ``as_of``."""
    values = features_from_arrays(arrays_of(state, as_of))[0]
    return {name: float(v) for name, v in zip(NUMERIC_FEATURES, values, strict=True)}


def sequences_from_window(window: np.ndarray, n_months: int = SEQUENCE_MONTHS) -> np.ndarray:
    """The monthly invoice histories of a batch, shape (n, channels, n_months), from (n, 16, 36) windows."""
    if n_months > _WINDOW_MONTHS:
        raise ValueError(f"n_months must be at most {_WINDOW_MONTHS}")
    w = window[:, :, -n_months:]
    row = _METRIC_INDEX

    def signed_log(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.sign(x) * np.log1p(np.abs(x)))

    def ch(metric: str) -> np.ndarray:
        return w[:, row[metric]]

    n_all = ch("n_in") + ch("n_out")
    void_all = ch("void_in") + ch("void_out")
    valid_all = ch("valid_in") + ch("valid_out")
    ret_all = ch("ret_in") + ch("ret_out")
    channels = {
        "log_sales": signed_log(ch("amt_out") / 100),
        "log_cost": signed_log(ch("amt_in") / 100),
        "log_n_out": np.log1p(ch("n_out")),
        "log_n_in": np.log1p(ch("n_in")),
        "void_share": np.divide(void_all, n_all, out=np.zeros_like(n_all), where=n_all > 0),
        "return_share": np.divide(ret_all, valid_all, out=np.zeros_like(valid_all), where=valid_all > 0),
    }
    return np.stack([channels[name] for name in SEQUENCE_CHANNELS], axis=1).astype(np.float32)


def to_sequence(state: EnterpriseState, as_of: dt.date, n_months: int = SEQUENCE_MONTHS) -> np.ndarray:
    """The monthly invoice history ending with the as-of month, shape (channels, n_months).

    Channels are :data:`models.schema.SEQUENCE_CHANNELS`; months with no invoice are zeros.
    """
    if n_months > _WINDOW_MONTHS:
        raise ValueError(f"n_months must be at most {_WINDOW_MONTHS}")
    window, _, _, _ = _monthly(state.counters, month_index(as_of))
    return np.asarray(sequences_from_window(window[None], n_months)[0])


def monthly_yuan(counters: Mapping[str, int], metric: str = "amt_out") -> dict[int, float]:
    """One monthly counter in yuan per month index (``amt_out``: valid sales, ``amt_in``: purchases, net of tax).

    Examples
    --------
    >>> monthly_yuan({"m:201912:amt_out": 150_000, "m:201912:amt_in": 7, "m:202001:amt_out": 50})
    {24239: 1500.0, 24240: 0.5}
    >>> monthly_yuan({"m:201912:amt_in": 7}, "amt_in")
    {24239: 0.07}
    """
    suffix = ":" + metric
    out: dict[int, float] = {}
    for key, value in counters.items():
        if key.startswith("m:") and key.endswith(suffix):
            m = int(key[2:6]) * 12 + int(key[6:8]) - 1
            out[m] = out.get(m, 0.0) + value / 100.0
    return out
