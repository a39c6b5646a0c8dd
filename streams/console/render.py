"""HTML of the console's pages: server-side rendered, every value escaped, charts as inline SVG.

No template engine and no JavaScript framework: the pages are plain HTML with one small
stylesheet and one small script (``static/console.js``: the live alerts feed over
server-sent events), all served from the package.

Examples
--------
>>> "<svg" in bar_chart([("2019-01", 1.0, 2.0)], ("sales", "purchases"))
True
>>> yuan(1234567.0)
'1,234,567'
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from streams.console.view import LinesPage, Portfolio
from streams.events import CreditLine, EnterpriseScore, RiskAlert

esc = html.escape


def yuan(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def layout(title: str, body: str, *, active: str = "", banner: str = "") -> str:
    nav = "".join(
        f'<a href="{href}"{" class=on" if key == active else ""}>{label}</a>'
        for key, href, label in (("portfolio", "/", "Portfolio"), ("lines", "/lines", "Credit lines"),
                                 ("alerts", "/alerts", "Alerts")))
    note = f'<div class="banner" role="status">{esc(banner)}</div>' if banner else ""
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)} · riskmon</title>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            '<link rel=stylesheet href="/static/console.css"></head><body>'
            f'<header><b>riskmon</b> console <nav>{nav}</nav></header>{note}<main><h1>{esc(title)}</h1>{body}</main>'
            '<script src="/static/console.js" defer></script></body></html>')


def error_page(status: int, message: str) -> str:
    what = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 503: "Unavailable"}.get(status, "Error")
    return layout(f"{status} {what}", f'<p class="error" id="error-message">{esc(message)}</p>'
                                      '<p><a href="/">Back to the portfolio</a></p>')


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, tid: str = "", numeric_from: int = 1) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i >= numeric_from else ''}>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<table{f" id={tid}" if tid else ""}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _figure(label: str, value: str, fid: str) -> str:
    return f'<div class=fig><div class=label>{esc(label)}</div><div class=value id="{fid}">{value}</div></div>'


def portfolio_page(p: Portfolio, alerts: Sequence[RiskAlert], *, banner: str = "") -> str:
    budget = p.budget_yuan
    used = (p.total_lent_yuan / budget) if budget else None
    figs = "".join([
        _figure("Total lent (yuan)", yuan(p.total_lent_yuan), "total-lent"),
        _figure("Budget (yuan)", yuan(budget), "budget"),
        _figure("Budget used", pct(used), "budget-used"),
        _figure("Credit lines", f"{p.n_lines:,}", "n-lines"),
        _figure("Enterprises decided", f"{p.n_enterprises:,}", "n-enterprises"),
        _figure("Expected profit (yuan)", yuan(p.expected_profit_yuan), "expected-profit"),
        _figure("Dead letters", f"{sum(p.dlq_by_reason.values()):,}", "dlq-total"),
        _figure("Drift alerts", f"{p.drift_alerts:,}", "drift-alerts"),
    ])
    bar = ""
    if used is not None:  # <progress>, not a styled div: the page's CSP allows no inline styles
        bar = f'<progress class=meter max=1 value="{min(1.0, used):.4f}" title="lent / budget"></progress>'


    def breakdown(rows: Sequence[Any], tid: str, label: str) -> str:
        return _table([label, "enterprises", "lines", "lent (yuan)", "expected profit (yuan)"],
                      [[esc(b.key), f"{b.n:,}", f"{b.n_lent:,}", yuan(b.amount_yuan), yuan(b.expected_profit_yuan)]
                       for b in rows], tid=tid)

    history = p.allocations[-200:]
    chart = line_chart([("lent", [(i, s.total_amount_yuan) for i, s in enumerate(history)]),
                        ("budget", [(i, s.budget_yuan) for i, s in enumerate(history)])],
                       [s.as_of.isoformat() for s in history], y_fmt=lambda v: f"{v / 1e6:,.0f} M") if history else ""
    alloc_rows = [[esc(s.allocation_id), s.as_of.isoformat(), yuan(s.total_amount_yuan), f"{s.n_lines:,}",
                   f"{s.n_changed:,}", yuan(s.expected_profit_yuan), esc(s.solver),
                   "–" if s.gap is None else f"{s.gap:.2e}", f"{s.runtime_s:.3f}"] for s in reversed(p.allocations[-15:])]
    dlq = _table(["reason", "messages"], [[esc(k), f"{v:,}"] for k, v in p.dlq_by_reason.items()], tid="dlq") \
        if p.dlq_by_reason else "<p class=muted>No dead letters.</p>"
    body = (f'<section class=figs>{figs}</section>{bar}'
            '<div class=cols><section><h2>Lines by rating</h2>' + breakdown(p.by_rating, "by-rating", "rating") +
            '</section><section><h2>Lines by segment</h2>' + breakdown(p.by_segment, "by-segment", "segment") +
            '</section></div>'
            f'<section><h2>Allocation history</h2>{chart}'
            + _table(["allocation", "as of", "lent (yuan)", "lines", "changed", "expected profit", "solver", "gap",
                      "runtime (s)"], alloc_rows, tid="allocations") +
            '</section><div class=cols><section><h2>Dead letters by reason</h2>' + dlq +
            '</section><section><h2>Latest alerts</h2>' + alerts_list(alerts, feed=True) + '</section></div>')
    return layout("Portfolio", body, active="portfolio", banner=banner)


def lines_page(page: LinesPage, names: Mapping[str, str], segments: Sequence[str], *, banner: str = "") -> str:
    q = page.query

    def link(**change: Any) -> str:
        return "/lines?" + esc(urlencode(q.params(**change)))

    def head(col: str, label: str) -> str:
        order = "asc" if q.sort == col and q.order == "desc" else "desc"
        mark = (" ▼" if q.order == "desc" else " ▲") if q.sort == col else ""
        return f'<a href="{link(sort=col, order=order, page=1)}" data-sort="{col}">{label}{mark}</a>'

    options = "".join(f'<option{" selected" if r == q.rating else ""}>{r}</option>' for r in ("", "A", "B", "C", "D"))
    seg_options = "".join(f'<option value="{esc(s)}"{" selected" if s == q.segment else ""}>{esc(s) or "any"}</option>'
                          for s in ["", *segments])
    status = "".join(f'<option{" selected" if s == q.status else ""}>{s}</option>' for s in ("all", "lent", "declined"))
    form = (f'<form method=get action=/lines class=filters><input name=q placeholder="id or name" value="{esc(q.q)}">'
            f'<label>rating <select name=rating>{options}</select></label>'
            f'<label>segment <select name=segment>{seg_options}</select></label>'
            f'<label>status <select name=status>{status}</select></label>'
            f'<input type=hidden name=sort value="{esc(q.sort)}"><input type=hidden name=order value="{esc(q.order)}">'
            '<button>Filter</button></form>')
    rows = [[f'<a href="/enterprise/{esc(x.enterprise_id)}">{esc(x.enterprise_id)}</a>',
             esc(names.get(x.enterprise_id, "")), esc(x.rating), pct(x.default_probability), esc(x.segment),
             yuan(x.amount_yuan), pct(x.rate, 2), yuan(x.expected_profit_yuan), esc(", ".join(x.reasons))]
            for x in page.rows]
    table = _table([head("enterprise", "enterprise"), "name", head("rating", "rating"), head("pd", "default prob."),
                    head("segment", "segment"), head("amount", "amount (yuan)"), head("rate", "rate"),
                    head("expected_profit", "expected profit"), "reasons"], rows, tid="lines", numeric_from=5)
    nav = (f'<p class=pager><span id=lines-total>{page.total:,}</span> enterprises · page {q.page} of {page.pages} '
           + (f'<a href="{link(page=q.page - 1)}" rel=prev>previous</a> ' if q.page > 1 else "")
           + (f'<a href="{link(page=q.page + 1)}" rel=next>next</a>' if q.page < page.pages else "") + "</p>")
    return layout("Credit lines", form + nav + table + nav, active="lines", banner=banner)


def enterprise_page(eid: str, name: str | None, score: EnterpriseScore | None, line: CreditLine | None,
                    history: Mapping[dt.date, tuple[str, float]], monthly: Sequence[tuple[str, float, float]],
                    features: Mapping[str, float] | None, alerts: Sequence[RiskAlert], *, note: str = "",
                    banner: str = "") -> str:
    parts = [f'<p class=muted>{esc(name or "not in the registry")}</p>']
    if note:
        parts.append(f"<p class=muted>{esc(note)}</p>")
    figs = []
    if score is not None:
        figs += [_figure("Rating", esc(score.rating) + ("" if score.rating_known else " (predicted)"), "rating"),
                 _figure("Default probability", pct(score.default_probability), "pd"),
                 _figure("Segment", esc(score.segment), "segment"),
                 _figure("Industry · legal form", f"{esc(score.industry)} · {esc(score.legal_form)}", "industry"),
                 _figure("Scored as of", score.as_of.isoformat(), "score-as-of")]
    if line is not None:
        figs += [_figure("Credit line (yuan)", yuan(line.amount_yuan), "line-amount"),
                 _figure("Rate", pct(line.rate, 2), "line-rate"),
                 _figure("Expected profit (yuan)", yuan(line.expected_profit_yuan), "line-profit")]
    parts.append(f"<section class=figs>{''.join(figs)}</section>")
    why = []
    if line is not None:
        prev = "" if line.previous_amount_yuan is None else f" (was {yuan(line.previous_amount_yuan)} yuan)"
        why.append(f"<li>credit line{prev}: <b>{esc(', '.join(line.reasons) or '–')}</b>; changed: "
                   f"{esc(', '.join(line.change_reasons) or 'unchanged')}; allocation {esc(line.allocation_id)}</li>")
    for source, obj in (("score", score), ("line", line)):
        extra = getattr(obj, "reasons", None) if source == "score" else None
        if extra:
            why.append(f"<li>score: {esc(', '.join(extra))}</li>")
    if score is not None:
        probs = ", ".join(f"{k} {v:.0%}" for k, v in sorted(score.rating_probabilities.items()))
        why.append(f"<li>rating probabilities: {esc(probs)}; bundle {esc(score.bundle_version)}</li>")
    parts.append("<section><h2>Reasons</h2><ul id=reasons>" + "".join(why) + "</ul></section>")
    if monthly:
        parts.append("<section><h2>Monthly sales and purchases (yuan, net of tax)</h2>"
                     + bar_chart(monthly, ("sales", "purchases")) + "</section>")
    if history:
        days = sorted(history)
        order = {"A": 0, "B": 1, "C": 2, "D": 3}
        parts.append("<section><h2>Default probability and rating over time</h2><div class=cols>"
                     + line_chart([("default probability", [(i, history[d][1]) for i, d in enumerate(days)])],
                                  [d.isoformat() for d in days], y_fmt=lambda v: f"{v:.0%}", y_min=0.0)
                     + line_chart([("rating (A top, D bottom)", [(i, 3 - order.get(history[d][0], 3))
                                                                for i, d in enumerate(days)])],
                                  [d.isoformat() for d in days], y_fmt=lambda v: "DCBA"[int(round(v))] if 0 <= v <= 3
                                  else "", y_min=0.0, y_max=3.0) + "</div></section>")
    if features:
        items = "".join(f"<div><dt>{esc(k)}</dt><dd>{f'{v:,.4g}' if v == v else '–'}</dd></div>"
                        for k, v in features.items())
        parts.append(f"<section><h2>Features (as of the watermark)</h2><dl class=features id=features>{items}</dl>"
                     "</section>")
    parts.append("<section><h2>Alerts</h2>" + alerts_list(alerts) + "</section>")
    return layout(f"Enterprise {eid}", "".join(parts), banner=banner)


def alert_item(a: RiskAlert) -> str:
    before = a.label_before if a.label_before is not None else _val(a.value_before, a.rule)
    after = a.label_after if a.label_after is not None else _val(a.value_after, a.rule)
    who = (f'<a href="/enterprise/{esc(a.enterprise_id)}">{esc(a.enterprise_id)}</a>' if a.enterprise_id
           else esc(a.subject))
    return (f'<li class="alert {esc(a.severity)}" data-alert-id="{esc(a.alert_id)}" data-rule="{esc(a.rule)}">'
            f'<span class=rule>{esc(a.rule)}</span> {who} <span class=vals>{esc(before)} → {esc(after)}</span> '
            f'<span class=muted>{esc(a.as_of.isoformat() if a.as_of else "")} · {esc("; ".join(a.reasons))}</span></li>')


def _val(v: float | None, rule: str) -> str:
    if v is None:
        return "–"
    if rule in ("pd_threshold", "pd_jump"):
        return pct(v)
    return f"{v:,.0f}"


def alerts_list(alerts: Sequence[RiskAlert], *, feed: bool = False) -> str:
    items = "".join(alert_item(a) for a in alerts)
    attr = " data-live=1" if feed else ""
    empty = "" if alerts else '<li class="muted empty">No alerts yet.</li>'
    return f'<ul class=alerts id=alerts{attr}>{items or empty}</ul>'


def alerts_page(alerts: Sequence[RiskAlert], counts: Mapping[str, int], *, banner: str = "") -> str:
    summary = " ".join(f"<span>{esc(k)} <b data-count='{esc(k)}'>{v:,}</b></span>" for k, v in counts.items())
    body = (f"<p id=alert-counts>{summary}</p><p class=muted>New alerts appear here as they are published "
            f"(live, <span id=feed-state>connecting…</span>).</p>" + alerts_list(alerts, feed=True))
    return layout("Alerts", body, active="alerts", banner=banner)


# ----------------------------------------------------------------------------- inline SVG charts

_W, _H, _PAD = 640, 220, 44
_COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1")


def line_chart(series: Sequence[tuple[str, Sequence[tuple[int, float]]]], x_labels: Sequence[str], *,
               y_fmt: Any = lambda v: f"{v:,.0f}", y_min: float | None = None, y_max: float | None = None) -> str:
    """Lines over a shared x index, with the first and last x label and min/max y ticks."""
    ys = [y for _, pts in series for _, y in pts]
    if not ys:
        return ""
    lo = min(ys) if y_min is None else y_min
    hi = max(ys) if y_max is None else y_max
    hi = hi if hi > lo else lo + 1.0
    n = max(1, len(x_labels) - 1)

    def x(i: float) -> float:
        return _PAD + (_W - 2 * _PAD) * i / n

    def y(v: float) -> float:
        return _H - _PAD + (-(_H - 2 * _PAD)) * (v - lo) / (hi - lo)

    paths = []
    for k, (label, pts) in enumerate(series):
        colour = _COLOURS[k % len(_COLOURS)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{x(i):.1f},{y(v):.1f}" for j, (i, v) in enumerate(pts))
        dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>' for i, v in pts) \
            if len(pts) <= 60 else ""
        paths.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.6"/>{dots}'
                     f'<text x="{_W - _PAD}" y="{14 + 14 * k}" text-anchor="end" fill="{colour}">{esc(label)}</text>')
    axes = (f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" class="axis"/>'
            f'<text x="{_PAD - 4}" y="{y(hi) + 4:.1f}" text-anchor="end">{esc(str(y_fmt(hi)))}</text>'
            f'<text x="{_PAD - 4}" y="{y(lo) + 4:.1f}" text-anchor="end">{esc(str(y_fmt(lo)))}</text>')
    if x_labels:
        axes += (f'<text x="{_PAD}" y="{_H - _PAD + 16}">{esc(x_labels[0])}</text>'
                 f'<text x="{_W - _PAD}" y="{_H - _PAD + 16}" text-anchor="end">{esc(x_labels[-1])}</text>')
    return f'<svg class=chart viewBox="0 0 {_W} {_H}" role=img>{axes}{"".join(paths)}</svg>'


def bar_chart(rows: Sequence[tuple[str, float, float]], labels: tuple[str, str]) -> str:
    """Two bars per month (e.g. sales and purchases); negative months (returns) go below the axis."""
    if not rows:
        return ""
    values = [v for _, a, b in rows for v in (a, b)]
    hi, lo = max(0.0, *values), min(0.0, *values)
    span = (hi - lo) or 1.0
    inner_w, inner_h = _W - 2 * _PAD, _H - 2 * _PAD
    step = inner_w / len(rows)
    bw = max(1.0, step * 0.4)

    def y(v: float) -> float:
        return _PAD + inner_h * (hi - v) / span

    bars = []
    for i, (month, a, b) in enumerate(rows):
        for k, v in enumerate((a, b)):
            top, bottom = sorted((y(v), y(0.0)))
            bars.append(f'<rect x="{_PAD + i * step + k * bw:.1f}" y="{top:.1f}" width="{bw:.1f}" '
                        f'height="{max(0.5, bottom - top):.1f}" fill="{_COLOURS[k]}"><title>{esc(month)} '
                        f'{labels[k]}: {v:,.0f}</title></rect>')
    axes = (f'<line x1="{_PAD}" y1="{y(0.0):.1f}" x2="{_W - _PAD}" y2="{y(0.0):.1f}" class="axis"/>'
            f'<text x="{_PAD - 4}" y="{y(hi) + 4:.1f}" text-anchor="end">{hi / 1e3:,.0f}k</text>'
            f'<text x="{_PAD}" y="{_H - _PAD + 16}">{esc(rows[0][0])}</text>'
            f'<text x="{_W - _PAD}" y="{_H - _PAD + 16}" text-anchor="end">{esc(rows[-1][0])}</text>'
            + "".join(f'<text x="{_W - _PAD}" y="{14 + 14 * k}" text-anchor="end" fill="{_COLOURS[k]}">{esc(lab)}</text>'
                      for k, lab in enumerate(labels)))
    return f'<svg class=chart id=sales-chart viewBox="0 0 {_W} {_H}" role=img>{axes}{"".join(bars)}</svg>'
