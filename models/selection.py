"""Feature selection as in paper 004: collinearity drop, then LightGBM cumulative importance.

1. Walk the columns in schema order; drop a column whose |Pearson r| with an
   earlier kept column exceeds ``corr_threshold`` (0.98). Constant columns are dropped.
2. Fit LightGBM ``n_runs`` times (10) with different seeds (row and column subsampling
   make the seeds matter), average the normalised gain importances, and keep the
   most important columns until their cumulative share reaches ``cumulative`` (95%).

Always fitted on training rows only (the evaluation calls it inside each fold).
Deterministic for a seed.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(80, 4)); x[:, 1] = x[:, 0] * 2.0 + 1e-6 * rng.normal(size=80)
>>> y = (x[:, 0] + 0.3 * rng.normal(size=80) > 0).astype(int)
>>> sel = select_features(x, y, ("a", "b", "c", "d"), seed=0, n_runs=3)
>>> "b" in sel.dropped_collinear and sel.selected[0] == "a"
True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Selection:
    """The surviving columns (by decreasing importance) and why the others went."""

    selected: tuple[str, ...]
    dropped_collinear: tuple[str, ...]
    importance: dict[str, float]  # mean normalised gain of the columns that passed step 1


def collinear_drop(x: np.ndarray, columns: Sequence[str], threshold: float = 0.98) -> tuple[list[int], list[int]]:
    """Indices kept and dropped by the |corr| > threshold rule (schema order decides which of a pair stays)."""
    std = x.std(axis=0)
    keep: list[int] = []
    drop: list[int] = []
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False) if x.shape[1] > 1 else np.ones((1, 1))
    for j in range(len(columns)):
        if std[j] == 0 or any(abs(corr[j, k]) > threshold for k in keep):
            drop.append(j)
        else:
            keep.append(j)
    return keep, drop


def lightgbm_importance(x: np.ndarray, y: np.ndarray, seed: int, n_runs: int = 10) -> np.ndarray:
    """Mean normalised gain importance over ``n_runs`` seeded LightGBM fits, shape (d,)."""
    import lightgbm as lgb

    total = np.zeros(x.shape[1])
    for run in range(n_runs):
        model = lgb.LGBMClassifier(
            n_estimators=60, learning_rate=0.08, num_leaves=8, min_child_samples=5,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8, importance_type="gain",
            random_state=seed * 1000 + run, deterministic=True, n_jobs=1, verbose=-1,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y)
        gain = np.asarray(model.feature_importances_, dtype=np.float64)
        if gain.sum() > 0:
            total += gain / gain.sum()
    return total / n_runs


def select_features(
    x: np.ndarray,
    y: np.ndarray,
    columns: Sequence[str],
    seed: int,
    n_runs: int = 10,
    corr_threshold: float = 0.98,
    cumulative: float = 0.95,
    min_features: int = 3,
) -> Selection:
    """Select columns of the cleaned training matrix ``x`` (n, d) for labels ``y``."""
    x = np.asarray(x, dtype=np.float64)
    keep, drop = collinear_drop(x, columns, corr_threshold)
    importance = lightgbm_importance(x[:, keep], np.asarray(y), seed, n_runs)
    order = np.argsort(-importance, kind="stable")
    chosen: list[int] = []
    share = 0.0
    for i in order:
        if share >= cumulative and len(chosen) >= min_features:
            break
        chosen.append(int(i))
        share += float(importance[i])
    return Selection(
        selected=tuple(columns[keep[i]] for i in chosen),
        dropped_collinear=tuple(columns[j] for j in drop),
        importance={columns[keep[i]]: round(float(importance[i]), 6) for i in range(len(keep))},
    )
