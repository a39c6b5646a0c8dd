"""The backtest report's figures: matplotlib (Agg) PNGs as base64, keyed by figure id.

Only this module imports matplotlib (about 1.4 s of CPU), and a backtest run from the command
line imports it in a process of its own, forked at its start (:class:`streams.backtest.report.FigureProcess`):
the import runs beside the main process's work, which never loads matplotlib. Drawing a figure
(Agg, text layout) is most of a report's time and one figure does not depend on another, so
every other figure is drawn in a second, forked process (:func:`render_figures`).
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from models.schema import RATINGS  # noqa: E402
from streams.backtest.report import (  # noqa: E402
    _MILLION,
    SCENARIO_FIGURE,
    _month_label,
    alarms_frame,
    groups_frame,
    lines_table,
    psi_frame,
    start_forked,
    summary_table,
)
from streams.backtest.run import BacktestResult  # noqa: E402


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Renderer:
    """Renders figures to base64 PNG: all of them (``share`` None), or only every other one (``share`` 0 or 1:
    the figures whose ordinal is odd, or even), closing the others undrawn."""

    def __init__(self, share: int | None) -> None:
        self._share = share
        self._n = 0

    def __call__(self, fig: Any) -> str | None:
        self._n += 1
        if self._share is not None and self._n % 2 != self._share:
            plt.close(fig)
            return None
        return _png(fig)


Rendered = str | None


def _draw(result: BacktestResult, share: int | None) -> dict[str, str]:
    """The figures of ``share`` (:class:`_Renderer`), keyed by figure id, in the report's order."""
    return {fid: png for fid, png in _figures(result, _Renderer(share)).items() if png is not None}


def render_figures(result: BacktestResult, *, parallel: bool = True) -> dict[str, str]:
    """Every figure of the report as base64 PNG, keyed by figure id (``parallel``: in two processes).

    Drawing a figure (Agg, text layout) is most of a report's time and one figure does not depend on
    another, so with two cores every other figure is drawn in a forked child process. Each process builds
    every figure and draws its half: a built figure is never sent between processes (figures pickled to a
    second process and drawn there came out differently about once in 60 reports, one figure by an RMS of
    52 of 255; the cause was not found), and the result reaches the child by the fork, not by pickling.
    """
    if not (parallel and (os.cpu_count() or 1) > 1 and "fork" in multiprocessing.get_all_start_methods()):
        return _draw(result, None)
    wait = start_forked(_draw, result, 0, what="the second process drawing the figures", name="backtest-figures-half")
    try:
        mine = _draw(result, 1)
    finally:
        theirs = wait()  # the child is joined even when this half failed
    # the report's order: ordinals 1, 2, 3, ... are mine[0], theirs[0], mine[1], ...
    return dict(pair for pairs in itertools.zip_longest(mine.items(), theirs.items()) for pair in pairs if pair)


def _stacked(render: _Renderer, table: pd.DataFrame, column: str, title: str,
             order: Sequence[str] | None = None) -> Rendered:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    lent = table[table["amount_yuan"] > 0]
    pivot = lent.pivot_table(index="as_of", columns=column, values="amount_yuan", aggfunc="sum", fill_value=0.0)
    pivot = pivot.reindex(sorted(table["as_of"].unique()), fill_value=0.0)
    cols = [c for c in (order or sorted(pivot.columns)) if c in pivot.columns]
    bottom = np.zeros(len(pivot))
    for c in cols:
        ax.bar(pivot.index, pivot[c] / _MILLION, bottom=bottom, label=str(c))
        bottom += pivot[c].to_numpy() / _MILLION
    ax.set_ylabel("million yuan")
    ax.set_title(title)
    if cols:
        ax.legend(fontsize=7, ncol=min(len(cols), 5))
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    return render(fig)


def _figures(result: BacktestResult, render: _Renderer) -> dict[str, Rendered]:
    run = result.base
    table = lines_table(run)
    summary = summary_table(run)
    figs: dict[str, Rendered] = {}
    figs["lines-by-rating"] = _stacked(render, table, "rating", "Credit lines by rating", RATINGS)
    figs["lines-by-segment"] = _stacked(render, table, "segment", "Credit lines by segment")

    x = summary["as_of"].tolist() if len(summary) else []
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if x:
        ax.plot(x, summary["total_lent"] / _MILLION, "o-", label="riskmon")
        ax.plot(x, summary["total_lent_rules"] / _MILLION, "s--", label="rules (paper 000)")
        ax.plot(x, summary["total_lent_flat"] / _MILLION, "^:", label="everyone, flat rate")
    ax.axhline(result.config.budget_yuan / _MILLION, color="k", lw=1, label="budget")
    ax.set_ylabel("million yuan")
    ax.set_title("Total lent vs budget")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs["lent-vs-budget"] = render(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    if x:
        ax.plot(x, summary["expected_profit"] / 1e4, "o-", label="riskmon expected (all lines)")
        ax.plot(x, summary["realised_profit"] / 1e4, "o--", label="riskmon realised (labeled)")
        ax.plot(x, summary["realised_profit_rules"] / 1e4, "s--", label="rules realised")
        ax.plot(x, summary["realised_profit_flat"] / 1e4, "^:", label="everyone realised")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("ten-thousand yuan")
    ax.set_title("Expected vs realised profit")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs["profit"] = render(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, attr, title in ((axes[0], "discrimination", "known rating given"),
                            (axes[1], "discrimination_blind", "rating hidden from the model")):
        for d in run.dates:
            disc = getattr(d, attr)
            if not math.isnan(disc.auc):
                ax.plot(disc.fpr, disc.tpr, lw=1, label=f"{d.as_of} AUC {disc.auc:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        ax.set_xlabel("false positive rate")
        ax.set_title(f"ROC, {title}", fontsize=9)
        ax.legend(fontsize=5)
    axes[0].set_ylabel("true positive rate")
    figs["roc"] = render(fig)

    fig, ax = plt.subplots(figsize=(8, 3.2))
    if x:
        ax.plot(x, summary["auc"].astype(float), "o-", label="AUC, known rating given")
        ax.plot(x, summary["ks"].astype(float), "s-", label="KS, known rating given")
        ax.plot(x, summary["auc_blind"].astype(float), "o--", label="AUC, rating hidden")
        ax.plot(x, summary["ks_blind"].astype(float), "s--", label="KS, rating hidden")
        ax.plot(x, summary["auc_challenger"].astype(float), "d:", label="AUC, challenger (per-rating rate)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Default model discrimination as of each date")
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    figs["auc-ks"] = render(fig)

    psi = psi_frame(result)
    fig, ax = plt.subplots(figsize=(9, 7))
    if len(psi):
        grid = psi.assign(step=psi["to"]).pivot_table(index="feature", columns="step", values="psi")
        im = ax.imshow(np.clip(grid.to_numpy(), 0, 1), aspect="auto", cmap="magma_r", vmin=0, vmax=1)
        ax.set_yticks(range(len(grid.index)), grid.index, fontsize=6)
        ax.set_xticks(range(len(grid.columns)), grid.columns, fontsize=6, rotation=45)
        fig.colorbar(im, ax=ax, label="PSI vs previous date (clipped at 1)")
    ax.set_title("Feature drift: PSI between consecutive as-of dates")
    figs["psi"] = render(fig)

    alarms = alarms_frame(result)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    months = list(result.drift.total_sales)
    labels = [_month_label(m) for m in months]
    ax1.plot(labels, [result.drift.total_sales[m] / _MILLION for m in months], "-", lw=1)
    for _, a in alarms[alarms["series"] == "total_sales"].iterrows():
        if a["month"] in labels:
            ax1.axvline(labels.index(a["month"]), color="r" if a["detector"] == "adwin" else "m", lw=1, ls="--")
    ax1.set_ylabel("total sales, M yuan")
    ax1.set_title("Monthly sales and River drift alarms (dashed: portfolio alarms)")
    per_month = alarms[alarms["series"] != "total_sales"].groupby("month").size()
    ax2.bar(labels, [int(per_month.get(m, 0)) for m in labels])
    ax2.set_ylabel("enterprise alarms")
    ax2.tick_params(axis="x", rotation=90, labelsize=6)
    figs["drift-alarms"] = render(fig)

    groups = groups_frame(result)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    by_rating = groups[groups["by"] == "rating"] if len(groups) else groups
    for rating in RATINGS:
        part = by_rating[by_rating["group"] == rating] if len(by_rating) else by_rating
        if len(part):
            ax1.plot(part["as_of"], part["expected_profit_yuan"] / 1e4, "o-", label=rating)
            ax2.plot(part["as_of"], part["realised_profit_yuan"] / 1e4, "o--", label=rating)
    ax1.set_title("Expected profit by rating")
    ax2.set_title("Realised profit by rating (labeled)")
    ax1.set_ylabel("ten-thousand yuan")
    for ax in (ax1, ax2):
        ax.axhline(0, color="k", lw=0.5)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.legend(fontsize=7)
    figs["profit-by-rating"] = render(fig)

    if result.shocked is not None:
        figs[SCENARIO_FIGURE] = _scenario_figure(result, render)
    return figs




def _scenario_figure(result: BacktestResult, render: _Renderer) -> Rendered:
    if result.shocked is None:
        raise ValueError("no scenario run to plot")
    base, shock = summary_table(result.base), summary_table(result.shocked)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(base["as_of"], base["total_lent"] / _MILLION, "o-", label="base")
    ax1.plot(shock["as_of"], shock["total_lent"] / _MILLION, "s--", label=result.scenario.name if result.scenario else "scenario")
    ax1.set_title("Total lent")
    ax1.set_ylabel("million yuan")
    ax1.legend(fontsize=7)
    ax1.tick_params(axis="x", rotation=45, labelsize=7)
    ax2.plot(base["as_of"], base["realised_profit"] / 1e4, "o-", label="base realised")
    ax2.plot(shock["as_of"], shock["realised_profit"] / 1e4, "s--", label="scenario realised")
    ax2.plot(shock["as_of"], shock["expected_profit"] / 1e4, "^:", label="scenario expected")
    ax2.set_title("Profit, ten-thousand yuan")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="x", rotation=45, labelsize=7)
    return render(fig)
