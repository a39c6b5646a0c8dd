"""Outcome evaluation: what an allocation would have earned, given who defaulted.

Realised profit replaces the default *probability* of the allocator's expected profit
by the known outcome. For a line of ``z`` yuan at rate ``r`` to an enterprise of rating
``g``, with retention ``w = 1 - churn(r, g)`` (the chance the client takes the loan at
that rate; who actually churned is unknown, so the expected retention is used):

- defaulted: ``-w * LGD * z`` (the principal lost, if the client took the loan);
- repaid: ``w * r * z`` (the interest).

This is the allocator's expected profit ``w * (r * (1 - p) - LGD * p) * z`` with ``p``
set to 1 or 0, so expected and realised profit are directly comparable.

Label caveat: ratings and default flags exist for the 123 labeled enterprises only and
are known as of the data set's end, not per date; an allocation as of 2018 is judged
by outcomes observed in 2020. Lines to unlabeled enterprises have no realised profit
and are counted apart (``lent_unlabeled_yuan``).

Examples
--------
>>> outcomes = {"E1": Outcome("E1", "A", False), "E2": Outcome("E2", "C", True)}
>>> lines = [LineView("E1", 1_000_000, 0.05, "A"), LineView("E2", 200_000, 0.06, "C"),
...          LineView("E9", 500_000, 0.05, "B")]
>>> r = realised_profit(lines, outcomes, churn=lambda rate, rating: 0.2)
>>> round(r.interest_yuan, 6), r.loss_yuan, round(r.profit_yuan, 6), r.lent_unlabeled_yuan
(40000.0, 160000.0, -120000.0, 500000.0)
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streams.dataset import parse_rating

ChurnFn = Callable[[float, str], float]

#: Paper 000's middle class rate (B), used as the flat rate of the lend-to-everyone baseline.
DEFAULT_FLAT_RATE = 0.0585


@dataclass(frozen=True, slots=True)
class Outcome:
    """What is known about a labeled enterprise at the data set's end."""

    enterprise_id: str
    rating: str
    defaulted: bool


@dataclass(frozen=True, slots=True)
class LineView:
    """The part of a credit line the evaluation needs (amount 0 = no line)."""

    enterprise_id: str
    amount_yuan: float
    rate: float
    rating: str


@dataclass(frozen=True, slots=True)
class Realised:
    """Realised profit of a set of lines over the labeled enterprises."""

    profit_yuan: float
    interest_yuan: float
    loss_yuan: float
    lent_labeled_yuan: float
    lent_unlabeled_yuan: float
    n_lines_labeled: int
    n_lines_defaulted: int


def outcomes_from_enterprises(frame: pd.DataFrame) -> dict[str, Outcome]:
    """The labeled enterprises of ``enterprises.csv`` (rating A-D and a 0/1 default flag).

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"enterprise_id": ["E1", "E2"], "rating": ["A", None], "defaulted": [0.0, float("nan")]})
    >>> outcomes_from_enterprises(f)
    {'E1': Outcome(enterprise_id='E1', rating='A', defaulted=False)}
    """
    out: dict[str, Outcome] = {}
    for eid, rating, defaulted in zip(frame["enterprise_id"], frame["rating"].astype(object), frame["defaulted"],
                                      strict=True):
        known = parse_rating(rating)
        if known is not None and defaulted == defaulted:
            out[str(eid)] = Outcome(str(eid), known, bool(int(defaulted)))
    return out


def realised_profit(
    lines: Iterable[LineView],
    outcomes: Mapping[str, Outcome],
    *,
    churn: ChurnFn,
    lgd: float = 1.0,
    churn_multiplier: Callable[[str], float] | None = None,
) -> Realised:
    """Realised profit of ``lines`` under the known defaults (see the module docstring).

    ``churn_multiplier(enterprise_id)`` scales the churn of a line (a scenario's shock);
    retention is then ``1 - min(1, m * churn)``.
    """
    interest = loss = lent_lab = lent_unlab = 0.0
    n_lab = n_def = 0
    for line in lines:
        if line.amount_yuan <= 0:
            continue
        outcome = outcomes.get(line.enterprise_id)
        if outcome is None:
            lent_unlab += line.amount_yuan
            continue
        c = churn(line.rate, line.rating)
        if churn_multiplier is not None:
            c = min(1.0, c * churn_multiplier(line.enterprise_id))
        w = 1.0 - c
        lent_lab += line.amount_yuan
        n_lab += 1
        if outcome.defaulted:
            n_def += 1
            loss += w * lgd * line.amount_yuan
        else:
            interest += w * line.rate * line.amount_yuan
    return Realised(interest - loss, interest, loss, lent_lab, lent_unlab, n_lab, n_def)


def flat_allocation(
    candidates: Sequence[tuple[str, str]],
    budget_yuan: float,
    *,
    rate: float = DEFAULT_FLAT_RATE,
    min_loan_yuan: int = 100_000,
    max_loan_yuan: int = 1_000_000,
    step_yuan: int = 10_000,
) -> list[LineView]:
    """The lend-to-everyone baseline: every non-D candidate gets the same line at one flat rate.

    ``candidates`` are ``(enterprise_id, rating)`` (the rating the bank acts on: known, else
    the model's). The budget is split equally, rounded down to the step and capped at
    ``max_loan_yuan``; if the equal share is below ``min_loan_yuan``, the minimum loan goes to
    as many candidates as the budget allows, in id order (no risk ranking: that is the point).

    Examples
    --------
    >>> [(l.enterprise_id, l.amount_yuan) for l in flat_allocation([("E1", "A"), ("E2", "D"), ("E3", "C")], 1_000_000)]
    [('E1', 500000), ('E3', 500000)]
    >>> [l.amount_yuan for l in flat_allocation([("E1", "A"), ("E2", "B"), ("E3", "C")], 250_000)]
    [100000, 100000]
    """
    lendable = sorted((eid, rating) for eid, rating in candidates if rating != "D")
    if not lendable or budget_yuan < min_loan_yuan:
        return []
    share = int(budget_yuan // len(lendable) // step_yuan) * step_yuan
    share = min(share, max_loan_yuan)
    if share >= min_loan_yuan:
        return [LineView(eid, share, rate, rating) for eid, rating in lendable]
    n = int(budget_yuan // min_loan_yuan)
    return [LineView(eid, min_loan_yuan, rate, rating) for eid, rating in lendable[:n]]


@dataclass(frozen=True, slots=True)
class Discrimination:
    """How well default probabilities rank the known defaults at one date."""

    auc: float
    ks: float
    fpr: np.ndarray
    tpr: np.ndarray
    n: int
    n_defaulted: int


def roc_ks(default_probability: Sequence[float] | np.ndarray, defaulted: Sequence[bool] | np.ndarray) -> Discrimination:
    """ROC AUC and the Kolmogorov-Smirnov statistic (max TPR - FPR); NaN with one class only.

    Examples
    --------
    >>> d = roc_ks([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    >>> d.auc, d.ks
    (0.75, 0.5)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    p = np.asarray(default_probability, dtype=np.float64)
    y = np.asarray(defaulted, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return Discrimination(math.nan, math.nan, np.array([0.0, 1.0]), np.array([0.0, 1.0]), int(y.size), n_pos)
    fpr, tpr, _ = roc_curve(y, p)
    return Discrimination(float(roc_auc_score(y, p)), float(np.max(tpr - fpr)), fpr, tpr, int(y.size), n_pos)


def log_loss(default_probability: Sequence[float] | np.ndarray, defaulted: Sequence[bool] | np.ndarray) -> float:
    """Mean log loss of default probabilities against the outcomes (clipped at 1e-6); NaN without rows.

    Examples
    --------
    >>> round(log_loss([0.9, 0.2], [True, False]), 4)
    0.1643
    """
    from sklearn.metrics import log_loss as sk_log_loss

    p = np.clip(np.asarray(default_probability, dtype=np.float64), 1e-6, 1 - 1e-6)
    if p.size == 0:
        return math.nan
    return float(sk_log_loss(np.asarray(defaulted, dtype=int), p, labels=[0, 1]))


def first_flag_dates(
    history: Mapping[dt.date, Mapping[str, float]],
    outcomes: Mapping[str, Outcome],
    threshold: float = 0.5,
) -> dict[str, dt.date | None]:
    """For each defaulted enterprise, the first as-of date its default probability reached ``threshold``.

    ``history`` maps an as-of date to the default probabilities scored that day; None
    means never flagged (or never scored).

    Examples
    --------
    >>> h = {dt.date(2019, 3, 31): {"E1": 0.2, "E2": 0.7}, dt.date(2019, 6, 30): {"E1": 0.6, "E2": 0.8}}
    >>> o = {"E1": Outcome("E1", "D", True), "E2": Outcome("E2", "A", False), "E3": Outcome("E3", "D", True)}
    >>> first_flag_dates(h, o)
    {'E1': datetime.date(2019, 6, 30), 'E3': None}
    """
    flagged: dict[str, dt.date | None] = {eid: None for eid, o in sorted(outcomes.items()) if o.defaulted}
    for as_of in sorted(history):
        for eid, p in history[as_of].items():
            if eid in flagged and flagged[eid] is None and p >= threshold:
                flagged[eid] = as_of
    return flagged
