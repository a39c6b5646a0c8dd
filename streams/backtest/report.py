"""The backtest report: ``summary.json``, CSV tables, and one self-contained ``report.html``.

Plots are matplotlib figures (Agg backend) embedded as base64 PNG ``<img>`` tags inside
``<figure id="...">`` elements; there is no external script, style sheet or font, so the
file opens offline. Every plot's table is written beside it as CSV.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import multiprocessing
import pickle
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streams.alerts import count_by_rule
from streams.backtest.analysis import group_table, vintage_table
from streams.backtest.run import BacktestResult, RunResult

#: The figure ids every report contains (the report test checks each one).
FIGURES: tuple[str, ...] = (
    "lines-by-rating",
    "lines-by-segment",
    "lent-vs-budget",
    "profit",
    "roc",
    "auc-ks",
    "psi",
    "drift-alarms",
    "profit-by-rating",
)
SCENARIO_FIGURE = "scenario-diff"
_MILLION = 1e6


def lines_table(run: RunResult) -> pd.DataFrame:
    """One row per (as-of date, scored enterprise): score, line and reasons."""
    rows = []
    for d in run.dates:
        for eid, score in sorted(d.decision.scores.items()):
            line = d.decision.lines.get(eid)
            rows.append({
                "as_of": d.as_of.isoformat(), "enterprise_id": eid, "rating": score.rating,
                "rating_known": score.rating_known, "default_probability": score.default_probability,
                "challenger_default_probability": score.challenger_default_probability,
                "segment": score.segment, "industry": score.industry,
                "amount_yuan": line.amount_yuan if line else 0.0, "rate": line.rate if line else 0.0,
                "expected_profit_yuan": line.expected_profit_yuan if line else 0.0,
                "reasons": ";".join(line.reasons) if line else "",
                "change_reasons": ";".join(line.change_reasons) if line else "",
                "risk_factors": " | ".join(score.risk_factors),
            })
    return pd.DataFrame(rows)


def summary_table(run: RunResult) -> pd.DataFrame:
    return pd.DataFrame([d.row() for d in run.dates])


def challenger_frame(result: BacktestResult) -> pd.DataFrame:
    """Served default probability vs the shadow challenger on the labeled enterprises, per date."""
    cols = ["as_of", "n_labeled_scored", "auc", "auc_challenger", "log_loss", "log_loss_challenger"]
    return pd.DataFrame([{c: d.row()[c] for c in cols} for d in result.base.dates], columns=cols)


def psi_frame(result: BacktestResult) -> pd.DataFrame:
    rows = [{"from": a.isoformat(), "to": b.isoformat(), "feature": f, "psi": v}
            for (a, b), table in result.drift.psi.items() for f, v in table.items()]
    return pd.DataFrame(rows, columns=["from", "to", "feature", "psi"])


def _month_label(m: int) -> str:
    return f"{m // 12:04d}-{m % 12 + 1:02d}"


def alarms_frame(result: BacktestResult) -> pd.DataFrame:
    rows = [{"series": str(a.key), "detector": a.detector, "month": _month_label(int(a.t)),  # type: ignore[call-overload]
             "signed_log_sales": a.value, "n_seen": a.n_seen} for a in result.drift.alarms]
    return pd.DataFrame(rows, columns=["series", "detector", "month", "signed_log_sales", "n_seen"])


def scenario_frame(result: BacktestResult) -> pd.DataFrame:
    """Per (as-of, enterprise) line in the base run and the shocked run, where they differ."""
    if result.shocked is None:
        return pd.DataFrame()
    rows = []
    for base, shock in zip(result.base.dates, result.shocked.dates, strict=True):
        ids = sorted(set(base.decision.lines) | set(shock.decision.lines))
        for eid in ids:
            b, s = base.decision.lines.get(eid), shock.decision.lines.get(eid)
            ba, sa = (b.amount_yuan if b else 0.0), (s.amount_yuan if s else 0.0)
            br, sr = (b.rate if b else 0.0), (s.rate if s else 0.0)
            if ba != sa or br != sr:
                score = base.decision.scores.get(eid) or shock.decision.scores.get(eid)
                rows.append({"as_of": base.as_of.isoformat(), "enterprise_id": eid,
                             "industry": score.industry if score else "", "base_amount_yuan": ba,
                             "scenario_amount_yuan": sa, "base_rate": br, "scenario_rate": sr})
    return pd.DataFrame(rows, columns=["as_of", "enterprise_id", "industry", "base_amount_yuan",
                                       "scenario_amount_yuan", "base_rate", "scenario_rate"])


def early_flags_frame(result: BacktestResult) -> pd.DataFrame:
    """Each defaulter's first flag date, with its known rating given to the model and hidden from it."""
    blind = result.first_flags_blind
    rows = [{"enterprise_id": e, "rating": result.outcomes[e].rating,
             "first_flagged": d.isoformat() if d else "",
             "first_flagged_rating_hidden": (b.isoformat() if (b := blind.get(e)) else "")}
            for e, d in sorted(result.first_flags.items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else 0)]
    return pd.DataFrame(rows, columns=["enterprise_id", "rating", "first_flagged", "first_flagged_rating_hidden"])


def vintages_frame(result: BacktestResult) -> pd.DataFrame:
    """Lines opened per as-of date and how they turned out (:func:`streams.backtest.analysis.vintage_table`)."""
    if result.churn is None:
        return pd.DataFrame()
    return vintage_table(result.base, result.outcomes, result.churn, lgd=result.config.lgd)


def groups_frame(result: BacktestResult) -> pd.DataFrame:
    """Lines and profit by rating and segment per as-of date (:func:`streams.backtest.analysis.group_table`)."""
    if result.churn is None:
        return pd.DataFrame(columns=["as_of", "by", "group", "expected_profit_yuan", "realised_profit_yuan"])
    return group_table(result.base, result.outcomes, result.churn, lgd=result.config.lgd)


def summary_json(result: BacktestResult, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``summary.json``."""
    out: dict[str, Any] = {
        "config": asdict(result.config),
        "as_of_dates": [d.isoformat() for d in result.as_of_dates],
        "dates": [d.row() for d in result.base.dates],
        "events_applied": result.base.replay.n_events,
        "duplicates": result.base.replay.n_duplicates,
        "early_flags": {
            "threshold": result.config.flag_threshold,
            "defaulters": len(result.first_flags),
            "flagged": sum(1 for d in result.first_flags.values() if d is not None),
            "flagged_rating_hidden": sum(1 for d in result.first_flags_blind.values() if d is not None),
            "first_flagged": {e: (d.isoformat() if d else None) for e, d in result.first_flags.items()},
        },
        "drift": {
            "alarms": len(result.drift.alarms),
            "max_psi": {f"{a}..{b}": max(t.values()) for (a, b), t in result.drift.psi.items() if t},
        },
        "alerts": {"n": len(result.alerts), "by_rule": count_by_rule(result.alerts)},
        "timings_s": result.timings_s,
        "label_caveat": "ratings and defaults are known as of the data set's end (2020-02), not per as-of date; "
                        "the bundle is cross-fitted: each labeled enterprise is scored by the member that never "
                        "saw its label (out of fold), holdout and unlabeled enterprises by all members.",
    }
    if result.shocked is not None and result.scenario is not None:
        out["scenario"] = {
            "name": result.scenario.name,
            "description": result.scenario.description,
            "dates": [d.row() for d in result.shocked.dates],
            "delta_total_lent": [s.total_lent_yuan - b.total_lent_yuan
                                 for b, s in zip(result.base.dates, result.shocked.dates, strict=True)],
        }
    if extra:
        out.update(extra)
    return out


def _table_html(frame: pd.DataFrame, max_rows: int = 40) -> str:
    shown = frame.head(max_rows)
    text: str = shown.to_html(index=False, float_format=lambda v: f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}",
                         border=0, classes="t")
    more = f"<p class='note'>{len(frame) - max_rows} more rows in the CSV.</p>" if len(frame) > max_rows else ""
    return text + more


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
table.t{border-collapse:collapse;font-size:.8em}table.t td,table.t th{padding:2px 8px;text-align:right}
table.t tr:nth-child(even){background:#f4f4f4}.note{font-size:.85em;color:#666}
"""


def render_html(result: BacktestResult, figures: Mapping[str, str], title: str = "riskmon backtest") -> str:
    """The single self-contained HTML page."""
    esc = html.escape
    summary = summary_table(result.base)
    cfg = result.config

    def fig(fid: str, caption: str, csv: str) -> str:
        return (f'<figure id="{fid}"><img alt="{esc(caption)}" src="data:image/png;base64,{figures[fid]}">'
                f"<figcaption>{esc(caption)} (table: <code>{esc(csv)}</code>)</figcaption></figure>")

    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>As-of dates: {esc(', '.join(d.isoformat() for d in result.as_of_dates))}. Budget "
        f"{cfg.budget_yuan / _MILLION:,.1f} M yuan, solver <code>{esc(cfg.solver)}</code>, seed {cfg.seed}, "
        f"LGD {cfg.lgd}. {result.base.replay.n_events:,} invoice events folded, point in time.</p>",
        "<p class='note'>Realised profit: a line of z at rate r earns w&middot;r&middot;z if the enterprise did not "
        "default and loses w&middot;LGD&middot;z if it did, with w = 1 &minus; churn(r, rating) the expected "
        "retention. Baselines on the same scores and budget: paper 000's rules (A/B/C at 5.45/5.85/6.25%, D "
        f"nothing) and lending the same amount to every non-D enterprise at a flat {cfg.flat_rate:.2%}. "
        "<b>Label caveat</b>: ratings and defaults are known for the 123 labeled enterprises only, as of the "
        "data set's end, not per date. The default model is cross-fitted: each labeled enterprise is scored "
        "by the bundle member that never saw its label, so realised figures are out-of-sample for the default "
        "model (the per-rating rates inside it and the segments come from the other members' labels). lines.csv "
        "carries the per-rating-rate challenger, scored in shadow, and each enterprise's risk factors. Because defaults concentrate in rating D, a model given the known rating separates "
        "defaulters almost trivially; the <i>rating hidden</i> curves score the same labeled enterprises "
        "with their ratings withheld, so the model must rate them itself, as it does for unrated clients.</p>",
        "<h2>Summary per as-of date</h2>", _table_html(summary), "<p class='note'>summary.csv</p>",
        "<h2>Credit lines</h2>",
        fig("lines-by-rating", "Credit lines by rating over time", "lines.csv"),
        fig("lines-by-segment", "Credit lines by segment over time", "lines.csv"),
        fig("lent-vs-budget", "Total lent vs budget, riskmon and both baselines", "summary.csv"),
        "<h3>Vintages: lines opened per date and how they turned out</h3>",
        "<p class='note'>A line is opened at a date when it has a positive amount and had none at the previous "
        "date. Defaults are the data set's end-of-history labels (labeled enterprises only).</p>",
        _table_html(vintages_frame(result)),
        "<h2>Profit</h2>",
        fig("profit", "Expected vs realised profit", "summary.csv"),
        fig("profit-by-rating", "Expected and realised profit by rating over time", "by_group.csv"),
        "<h3>Lines and profit by rating and segment</h3>",
        _table_html(groups_frame(result), max_rows=60),
        "<h2>Default model</h2>",
        fig("roc", "ROC of the default probability as of each date", "roc.csv"),
        fig("auc-ks", "AUC and KS as of each date", "summary.csv"),
        "<h3>Served vs challenger</h3>",
        "<p class='note'>The challenger is the per-rating default rate of each scoring member's training rows, "
        "scored in shadow beside the served probability (<code>challenger_default_probability</code> in "
        "lines.csv and in every score event). Both on the labeled enterprises with their known ratings; "
        "lower log loss is better.</p>",
        _table_html(challenger_frame(result)),
        f"<h3>Early warning (threshold {cfg.flag_threshold})</h3>",
        _table_html(early_flags_frame(result)),
        "<h2>Drift</h2>",
        fig("psi", "PSI per feature between consecutive as-of dates", "psi.csv"),
        fig("drift-alarms", "River drift-detector alarms on monthly sales", "drift_alarms.csv"),
        "<h2>Early-warning alerts (the worker's rules, replayed)</h2>",
        _table_html(pd.DataFrame([count_by_rule(result.alerts)])),
        _table_html(alerts_frame(result), max_rows=20), "<p class='note'>alerts.csv</p>",
    ]
    if result.shocked is not None and SCENARIO_FIGURE in figures:
        name = result.scenario.name if result.scenario else "scenario"
        parts += [f"<h2>Scenario: {esc(name)}</h2>",
                  f"<p>{esc(result.scenario.description if result.scenario else '')}</p>",
                  fig(SCENARIO_FIGURE, "Base vs scenario", "scenario_summary.csv"),
                  _table_html(scenario_frame(result))]
    parts.append("</body></html>")
    return "\n".join(parts)


def alerts_frame(result: BacktestResult) -> pd.DataFrame:
    """One row per replayed alert: as-of date, rule, subject, values before and after, reasons."""
    columns = ["as_of", "rule", "subject", "enterprise_id", "value_before", "value_after", "label_before",
               "label_after", "reasons", "alert_id"]
    return pd.DataFrame([{"as_of": a.as_of, "rule": a.rule, "subject": a.subject, "enterprise_id": a.enterprise_id,
                          "value_before": a.value_before, "value_after": a.value_after, "label_before": a.label_before,
                          "label_after": a.label_after, "reasons": " | ".join(a.reasons), "alert_id": a.alert_id}
                         for a in result.alerts],
                        columns=columns)


def roc_frame(result: BacktestResult) -> pd.DataFrame:
    rows = [{"as_of": d.as_of.isoformat(), "ratings": which, "fpr": f, "tpr": t}
            for d in result.base.dates
            for which, disc in (("known", d.discrimination), ("hidden", d.discrimination_blind))
            for f, t in zip(disc.fpr, disc.tpr, strict=True)]
    return pd.DataFrame(rows, columns=["as_of", "ratings", "fpr", "tpr"])


#: Starts drawing a result's figures and returns how to wait for them (:meth:`FigureProcess.submit`).
StartFigures = Callable[[BacktestResult], Callable[[], dict[str, str]]]


def write_report(result: BacktestResult, out_dir: Path, extra: Mapping[str, Any] | None = None, *,
                 figures: StartFigures | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``summary.json`` and the CSV tables into ``out_dir``; returns the paths.

    ``figures`` (e.g. a :class:`FigureProcess`'s ``submit``) draws the figures elsewhere while the
    tables are written; without it they are drawn here (:func:`streams.backtest.figures.render_figures`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    wait_for_figures = figures(result) if figures is not None else None
    paths: dict[str, Path] = {}

    def csv(name: str, frame: pd.DataFrame) -> None:
        path = out_dir / name
        frame.to_csv(path, index=False)
        paths[name] = path

    csv("summary.csv", summary_table(result.base))
    csv("lines.csv", lines_table(result.base))
    csv("roc.csv", roc_frame(result))
    csv("psi.csv", psi_frame(result))
    csv("drift_alarms.csv", alarms_frame(result))
    csv("early_flags.csv", early_flags_frame(result))
    csv("vintages.csv", vintages_frame(result))
    csv("by_group.csv", groups_frame(result))
    csv("alerts.csv", alerts_frame(result))
    if result.shocked is not None:
        csv("scenario_summary.csv", summary_table(result.shocked))
        csv("scenario_lines.csv", lines_table(result.shocked))
        csv("scenario_diff.csv", scenario_frame(result))
    summary = summary_json(result, extra)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    paths["summary.json"] = out_dir / "summary.json"
    if wait_for_figures is not None:
        pngs = wait_for_figures()
    else:
        from streams.backtest.figures import render_figures

        pngs = render_figures(result)
    (out_dir / "report.html").write_text(render_html(result, pngs), encoding="utf-8")
    paths["report.html"] = out_dir / "report.html"
    return paths


def _json_default(value: object) -> object:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class _ReplayCounts:
    """What the figures and the page read of a run's replay: its counts (not its states)."""

    n_events: int
    n_duplicates: int


def for_figures(result: BacktestResult) -> BacktestResult:
    """``result`` without the replays' states and scoring inputs, which no figure reads (smaller to send)."""

    def slim(run: RunResult) -> RunResult:
        return RunResult(_ReplayCounts(run.replay.n_events, run.replay.n_duplicates), run.dates)  # type: ignore[arg-type]

    return dataclasses.replace(result, base=slim(result.base),
                               shocked=slim(result.shocked) if result.shocked is not None else None)


class FigureProcess:
    """Draws a backtest's figures in a process forked now, which imports matplotlib while this one works.

    Start it early (before the data work); :meth:`submit` sends the finished result (pickled,
    through a pipe, never to disk) and returns a function that waits for the PNGs. The
    figures are :func:`streams.backtest.figures.render_figures`'s: the same pictures, though their PNG
    bytes are not promised equal to those drawn in another process. A process that is never sent a
    result ends when :meth:`close` is called or this one exits.
    """

    def __init__(self, *, parallel: bool = True) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe(duplex=True)
        # not a daemon: it forks a second drawing process of its own
        self._process = context.Process(target=_draw_in_child, args=(child, self._conn, parallel),
                                        name="backtest-figures")
        self._process.start()
        child.close()
        self.drew_there = False  # whether the last result was sent to the process (not drawn here)

    def submit(self, result: BacktestResult) -> Callable[[], dict[str, str]]:
        try:
            data = pickle.dumps(for_figures(result))
        except (pickle.PicklingError, AttributeError, TypeError):  # e.g. a churn function defined in a function
            self.close()
            from streams.backtest.figures import render_figures

            return lambda: render_figures(result)
        self._conn.send_bytes(data)
        self.drew_there = True

        def wait() -> dict[str, str]:
            try:
                figures: dict[str, str] = receive_outcome(self._conn, self._process, "the process drawing the figures")
                return figures
            finally:
                self.close()

        return wait

    def close(self) -> None:
        self._conn.close()  # a child still waiting for a result reads EOF and exits
        self._process.join()


def _draw_in_child(conn: Any, parent_end: Any, parallel: bool) -> None:
    parent_end.close()  # the fork's copy: the parent closing its end must reach this process as EOF
    from streams.backtest.figures import render_figures  # matplotlib: imported here, beside the parent's work

    try:
        result = conn.recv()
    except EOFError:  # never sent a result
        return
    send_outcome(conn, render_figures, result, parallel=parallel)


def start_forked(fn: Callable[..., Any], *args: Any, what: str, name: str | None = None) -> Callable[[], Any]:
    """Start ``fn(*args)`` in a forked child process (its arguments reach it by the fork, not pickled); the
    function returned waits for its value, or raises its exception here (:func:`receive_outcome`, ``what``
    naming the child), and joins it. ``name``: the process's name."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=send_outcome, args=(send, fn, *args), name=name)
    child.start()
    send.close()

    def wait() -> Any:
        try:
            return receive_outcome(receive, child, what)
        finally:
            receive.close()
            child.join()

    return wait


def send_outcome(conn: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """In a forked child: send ``(True, fn(...))`` through ``conn``, or ``(False, the exception)``; then close it."""
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException as exc:  # handed to the parent, which raises it (receive_outcome)
        conn.send((False, exc))
    finally:
        conn.close()


def receive_outcome(conn: Any, process: Any, what: str) -> Any:
    """In the parent: what :func:`send_outcome` sent from ``process``, or its exception raised here; a child that
    died before sending is a one-line ``RuntimeError`` naming ``what`` and the exit code."""
    try:
        ok, value = conn.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"{what} died (exit {process.exitcode})") from None
    if not ok:
        raise value
    return value
