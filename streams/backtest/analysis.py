"""Tables a risk analyst reads: vintages of credit lines, and lines and profit by rating and segment.

Pure pandas over a run's decisions; realised profit always comes from
:func:`streams.backtest.outcomes.realised_profit` (one rule for every table).

- **Vintages**: the lines *opened* at each as-of date (a positive amount where the
  previous date had none), how many and how much, and how they turned out: how many went
  to enterprises that defaulted, and the realised profit of that vintage at its opening
  terms. Outcomes are the data set's end-of-history labels, so only labeled enterprises
  are judged (the rest are counted as unlabeled).
- **By group**: per as-of date and rating (or segment): lines, amount, expected profit and
  realised profit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd

from streams.backtest.outcomes import ChurnFn, LineView, Outcome, realised_profit
from streams.backtest.run import RunResult

VINTAGE_COLUMNS = ("opened_as_of", "n_opened", "amount_opened_yuan", "n_labeled", "n_defaulted",
                   "default_share", "realised_profit_yuan", "lent_unlabeled_yuan", "n_still_open_at_end")
GROUP_COLUMNS = ("as_of", "by", "group", "n_lines", "amount_yuan", "expected_profit_yuan", "realised_profit_yuan",
                 "n_labeled", "n_defaulted")


def vintage_table(run: RunResult, outcomes: Mapping[str, Outcome], churn: ChurnFn, *, lgd: float = 1.0) -> pd.DataFrame:
    """One row per as-of date: the lines opened then and how they turned out."""
    rows = []
    previous: Mapping[str, float] = {}
    last_lines = run.dates[-1].decision.lines if run.dates else {}
    for d in run.dates:
        opened: list[LineView] = []
        for eid, line in sorted(d.decision.lines.items()):
            if line.amount_yuan > 0 and previous.get(eid, 0.0) <= 0:
                opened.append(LineView(eid, line.amount_yuan, line.rate, line.rating))
        realised = realised_profit(opened, outcomes, churn=churn, lgd=lgd)
        still = sum(1 for v in opened if (ln := last_lines.get(v.enterprise_id)) is not None and ln.amount_yuan > 0)
        rows.append({
            "opened_as_of": d.as_of.isoformat(), "n_opened": len(opened),
            "amount_opened_yuan": float(sum(v.amount_yuan for v in opened)),
            "n_labeled": realised.n_lines_labeled, "n_defaulted": realised.n_lines_defaulted,
            "default_share": (realised.n_lines_defaulted / realised.n_lines_labeled) if realised.n_lines_labeled else None,
            "realised_profit_yuan": realised.profit_yuan, "lent_unlabeled_yuan": realised.lent_unlabeled_yuan,
            "n_still_open_at_end": still,
        })
        previous = {eid: line.amount_yuan for eid, line in d.decision.lines.items()}
    return pd.DataFrame(rows, columns=list(VINTAGE_COLUMNS))


def group_table(run: RunResult, outcomes: Mapping[str, Outcome], churn: ChurnFn, *,
                by: Sequence[Literal["rating", "segment"]] = ("rating", "segment"), lgd: float = 1.0) -> pd.DataFrame:
    """Lines, amount, expected and realised profit per as-of date and rating / segment."""
    rows = []
    for d in run.dates:
        for key in by:
            groups: dict[str, list[Any]] = {}
            for eid, line in sorted(d.decision.lines.items()):
                if line.amount_yuan <= 0:
                    continue
                score = d.decision.scores.get(eid)
                group = line.rating if key == "rating" else (score.segment if score is not None else line.segment)
                groups.setdefault(str(group), []).append(line)
            for group, lines in sorted(groups.items()):
                views = [LineView(x.enterprise_id, x.amount_yuan, x.rate, x.rating) for x in lines]
                realised = realised_profit(views, outcomes, churn=churn, lgd=lgd)
                rows.append({
                    "as_of": d.as_of.isoformat(), "by": key, "group": group, "n_lines": len(lines),
                    "amount_yuan": float(sum(x.amount_yuan for x in lines)),
                    "expected_profit_yuan": float(sum(x.expected_profit_yuan for x in lines)),
                    "realised_profit_yuan": realised.profit_yuan, "n_labeled": realised.n_lines_labeled,
                    "n_defaulted": realised.n_lines_defaulted,
                })
    return pd.DataFrame(rows, columns=list(GROUP_COLUMNS))
