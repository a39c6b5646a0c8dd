"""Cross-fitting: no enterprise is scored by a model that saw its label.

The labeled training enterprises are split into ``K`` folds (stratified by rating, so the
folds do not depend on the default labels). Member ``k`` of the bundle is fitted on every
labeled enterprise *outside* fold ``k``. At scoring time an enterprise in fold ``k`` is
scored by member ``k`` alone; every other enterprise (unlabeled, held out, or new) by the
mean of all ``K`` members' probabilities (:func:`member_weights`).

Inside each member, the served default probability is a *nested* stack: the member's own
training rows are split again (``inner_splits``), each inner fold predicted by nets that did
not see it, and two small maps are fitted on those held-out predictions only:

- invoice-only: Platt scaling of the invoice net (:class:`models.calibration.Platt`);
- rating-aware: :class:`RatingStack`, a logistic regression on
  ``[logit(rating-aware net), logit(per-rating default rate)]``. It shrinks the net toward
  the per-rating base rate: where the net adds nothing its weight goes to ~0 and the
  probability is the (calibrated) base rate of the rating.

Examples
--------
>>> import numpy as np
>>> rates = rating_rates(np.array([0, 0, 1, 1, 3, 3]), np.array([0, 0, 0, 1, 1, 1]))
>>> [round(r, 3) for r in rates]
[0.167, 0.5, 0.5, 0.833]
>>> folds = assign_folds(["E1", "E2", "E3", "E4"], np.array([0, 0, 1, 1]), n_folds=2, seed=0)
>>> sorted(sum(folds, ()))
['E1', 'E2', 'E3', 'E4']
>>> member_weights(["E1", "X9"], folds).tolist() in ([[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]])
True
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from models.calibration import Platt, RatingStack
from models.default_net import DefaultNet, DefaultNetConfig
from models.schema import RATINGS

#: Pseudo-count of the prior (the overall default rate) in each rating's default rate.
RATE_PRIOR_STRENGTH = 1.0


def one_hot_ratings(rating_index: np.ndarray) -> np.ndarray:
    """(n,) indices 0..3 -> (n, 4) one-hot float64.

    Examples
    --------
    >>> one_hot_ratings(np.array([0, 3])).tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    """
    return np.eye(len(RATINGS))[np.asarray(rating_index, dtype=np.int64)]


def rating_rates(rating_index: np.ndarray, defaulted: np.ndarray,
                 prior_strength: float = RATE_PRIOR_STRENGTH) -> tuple[float, ...]:
    """Per-rating default rate, shrunk toward the overall rate: ``(d_r + s·p) / (n_r + s)``.

    Never 0 or 1 (a rating with no defaults in the training rows still gets a small rate).
    """
    r = np.asarray(rating_index, dtype=np.int64)
    y = np.asarray(defaulted, dtype=np.float64)
    overall = float(np.clip(y.mean(), 0.01, 0.99)) if len(y) else 0.5
    return tuple(float((y[r == k].sum() + prior_strength * overall) / ((r == k).sum() + prior_strength))
                 for k in range(len(RATINGS)))


@dataclass(frozen=True, slots=True)
class DefaultMember:
    """The default-probability part of one member: two nets and their nested maps."""

    net_invoice: DefaultNet
    net_rated: DefaultNet
    platt_invoice: Platt
    stack_rated: RatingStack
    rates: tuple[float, ...]  # per-rating default rate of the member's training rows

    def invoice_only(self, x_sel: np.ndarray) -> np.ndarray:
        """Calibrated invoice-only default probability, (n,)."""
        return self.platt_invoice.apply(self.net_invoice.predict_proba(x_sel))

    def rated(self, x_sel: np.ndarray, rating_vec: np.ndarray) -> np.ndarray:
        """Served default probability given a (soft) one-hot rating vector (n, 4), (n,)."""
        rate = np.asarray(rating_vec, dtype=np.float64) @ np.asarray(self.rates)
        return self.stack_rated.apply(self.net_rated.predict_proba(np.hstack([x_sel, rating_vec])), rate)

    def rated_torch(self, x_sel: torch.Tensor, rating_vec: torch.Tensor) -> torch.Tensor:
        """:meth:`rated` as a differentiable torch function of ``x_sel`` (n, d) -> (n,)."""
        rate = rating_vec.double() @ torch.as_tensor(self.rates, dtype=torch.float64)
        logits = self.net_rated.module(torch.cat([x_sel, rating_vec.to(x_sel.dtype)], dim=1).float())  # (n, 2)
        p_net = torch.softmax(logits, dim=1)[:, 1].double()
        return self.stack_rated.apply_torch(p_net, rate)

    def maps_to_dict(self) -> dict[str, Any]:
        return {"platt_invoice": self.platt_invoice.to_dict(), "stack_rated": self.stack_rated.to_dict(),
                "rates": list(self.rates)}


def fit_default_member(x_sel: np.ndarray, rating_index: np.ndarray, y: np.ndarray, seed: int,
                       config: DefaultNetConfig, inner_splits: int = 4) -> DefaultMember:
    """Fit both nets on all given rows, and their maps on inner out-of-fold predictions only."""
    y = np.asarray(y, dtype=np.int64)
    r = np.asarray(rating_index, dtype=np.int64)
    x_rated = np.hstack([x_sel, one_hot_ratings(r)])
    net_invoice = DefaultNet.fit(x_sel, y, config, seed=seed)
    net_rated = DefaultNet.fit(x_rated, y, config, seed=seed)
    oof_inv, oof_rat, oof_rate = np.full(len(y), np.nan), np.full(len(y), np.nan), np.full(len(y), np.nan)
    n_inner = int(min(inner_splits, np.bincount(y, minlength=2).min()))
    if n_inner >= 2:
        folds = StratifiedKFold(n_splits=n_inner, shuffle=True, random_state=seed)
        for j, (tr, te) in enumerate(folds.split(x_sel, y)):
            s = seed + 7919 * (j + 1)
            oof_inv[te] = DefaultNet.fit(x_sel[tr], y[tr], config, seed=s).predict_proba(x_sel[te])
            oof_rat[te] = DefaultNet.fit(x_rated[tr], y[tr], config, seed=s).predict_proba(x_rated[te])
            inner_rates = np.asarray(rating_rates(r[tr], y[tr]))
            oof_rate[te] = inner_rates[r[te]]
    if np.isnan(oof_inv).any():
        platt, stack = Platt.identity(), RatingStack(0.0, 1.0, 0.0)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            platt, stack = Platt.fit(oof_inv, y), RatingStack.fit(oof_rat, oof_rate, y)
    return DefaultMember(net_invoice, net_rated, platt, stack, rating_rates(r, y))


def assign_folds(ids: Sequence[str], rating_index: np.ndarray, n_folds: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """``n_folds`` disjoint groups of ids, stratified by rating (never by the default label)."""
    r = np.asarray(rating_index, dtype=np.int64)
    n_splits = int(min(n_folds, np.bincount(r).max())) if len(r) else 0
    if n_splits < 2:
        raise ValueError(f"cross-fitting needs at least 2 labeled enterprises of one rating, got {len(r)} rows")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rating rarer than n_folds only warns
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(r)), r)
        return tuple(tuple(sorted(str(ids[i]) for i in test)) for _, test in splits)


def member_weights(ids: Sequence[str], folds: Sequence[Sequence[str]]) -> np.ndarray:
    """(n, K) weights: one-hot on the member that did not see the enterprise's label, else 1/K."""
    where = {eid: k for k, fold in enumerate(folds) for eid in fold}
    k_members = len(folds)
    w = np.full((len(ids), k_members), 1.0 / k_members)
    for i, eid in enumerate(ids):
        k = where.get(str(eid))
        if k is not None:
            w[i] = 0.0
            w[i, k] = 1.0
    return w


def folds_hash(folds: Sequence[Sequence[str]]) -> str:
    """sha256 (16 hex) of the fold membership, recorded in the manifest beside the lists."""
    return hashlib.sha256(json.dumps([list(f) for f in folds]).encode()).hexdigest()[:16]
