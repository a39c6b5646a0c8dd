"""Honest evaluation: repeated stratified CV with all fitting (cleaning, selection, models) inside folds.

- :func:`default_cv`: the default models (BP net + baselines) in two settings,
  ``invoice_only`` and ``with_rating`` (the known rating one-hot appended), scored by
  accuracy, precision, recall, F1 (threshold 0.5) and AUC.
- :func:`default_split`: the same on the paper's single stratified 7:3 split.
- :func:`rating_cv`: the rating CNN vs the baselines, 4 classes: accuracy, macro-F1,
  within-one-grade accuracy.
- :func:`shuffled_control`: default CV on permuted labels; the AUC must sit near 0.5.

Every function is deterministic for its ``seed``.

Examples
--------
>>> summarise([{"auc": 0.8}, {"auc": 0.9}])["auc"]["mean"]
0.85
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from models.baselines import make_baselines
from models.cleaning import Preprocessor
from models.crossfit import fit_default_member, one_hot_ratings, rating_rates
from models.default_net import DefaultNet, DefaultNetConfig
from models.rating_cnn import RatingCNN, RatingCNNConfig, rating_metrics
from models.schema import RATINGS
from models.selection import Selection, select_features

DEFAULT_MODELS: tuple[str, ...] = ("served", "rating_rate", "base_rate", "bp_net", "naive_bayes", "logistic_regression", "decision_tree",
                                   "random_forest", "bagging", "lightgbm")
RATING_MODELS: tuple[str, ...] = ("rating_cnn", "naive_bayes", "logistic_regression", "decision_tree",
                                  "random_forest", "bagging", "lightgbm", "majority")
SETTINGS: tuple[str, ...] = ("invoice_only", "with_rating")

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """How much evaluation to run (``fast`` for tests)."""

    n_splits: int = 5
    n_repeats: int = 5
    selection_runs: int = 10
    # The paper's architectures by default (issue 2); the tuned candidates of docs/models_tuning.md
    # (``DefaultNetConfig()``, ``RatingCNNConfig()``) were no better on the reporting CV: ``--nets tuned``.
    net: DefaultNetConfig = field(default_factory=DefaultNetConfig.paper)
    cnn: RatingCNNConfig = field(default_factory=RatingCNNConfig.original)
    default_models: tuple[str, ...] = DEFAULT_MODELS
    rating_models: tuple[str, ...] = RATING_MODELS
    n_jobs: int = 1  # folds evaluated in this many worker processes (each fold is seeded on its own)
    # the bundle's members: small regularised nets (docs/models_tuning.md D1, mini-batches of 32 to keep
    # 5 members x (2 + 2 x 3 inner) fits cheap) whose maps are fitted on inner out-of-fold predictions
    served_net: DefaultNetConfig = field(default_factory=lambda: DefaultNetConfig(batch_size=32))
    inner_splits: int = 3


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def map_folds(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], n_jobs: int,
              progress: Progress, label: str) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in ``n_jobs`` forked processes when > 1; same results either way."""
    total = len(jobs)
    if n_jobs <= 1 or total <= 1:
        out = []
        for k, job in enumerate(jobs):
            progress(f"{label} fold {k + 1}/{total}")
            out.append(fn(*job))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("fork"), initializer=_init_worker) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        out = []
        for k, future in enumerate(futures):
            out.append(future.result())
            progress(f"{label} fold {k + 1}/{total}")
        return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the row-weighted mean |observed rate - mean probability| over ``n_bins`` equal-width bins.

    Examples
    --------
    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    0.0
    >>> round(expected_calibration_error(np.array([0, 0]), np.array([0.9, 0.9])), 2)
    0.9
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    return float(sum(abs(y[bins == b].mean() - p[bins == b].mean()) * np.sum(bins == b)
                     for b in np.unique(bins)) / len(y))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 at ``threshold``; AUC, Brier score, log loss and ECE of ``p``."""
    from sklearn.metrics import log_loss

    pred = (np.asarray(p) >= threshold).astype(int)
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": auc,
        "brier": float(np.mean((q - np.asarray(y)) ** 2)),
        "log_loss": float(log_loss(y, q, labels=[0, 1])),
        "ece": expected_calibration_error(y, q),
    }


def summarise(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over folds."""
    out: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": round(float(np.nanmean(values)), 4),
                    "sd": round(float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0, 4)}
    return out


def fit_inputs(x_train: np.ndarray, y_train: np.ndarray, columns: Sequence[str], seed: int,
               selection_runs: int) -> tuple[Preprocessor, Selection]:
    """Cleaning then selection, fitted on training rows only."""
    pre = Preprocessor.fit(x_train, columns)
    selection = select_features(pre.transform(x_train), y_train, columns, seed=seed, n_runs=selection_runs)
    return pre, selection


def _selected(pre: Preprocessor, selection: Selection, x: np.ndarray) -> np.ndarray:
    idx = [pre.columns.index(c) for c in selection.selected]
    return pre.transform(x)[:, idx]


def _fit_predict_default(name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, seed: int,
                         net_config: DefaultNetConfig) -> np.ndarray:
    if name == "bp_net":
        return DefaultNet.fit(x_tr, y_tr, net_config, seed=seed).predict_proba(x_te)
    model = make_baselines(seed)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_tr, y_tr)
        return np.asarray(model.predict_proba(x_te))[:, 1]


def _default_fold(numeric: np.ndarray, rating_index: np.ndarray, y: np.ndarray, train: np.ndarray,
                  test: np.ndarray, columns: Sequence[str], seed: int, config: EvalConfig,
                  settings: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    pre, selection = fit_inputs(numeric[train], y[train], columns, seed, config.selection_runs)
    x_tr, x_te = _selected(pre, selection, numeric[train]), _selected(pre, selection, numeric[test])
    out: dict[str, dict[str, np.ndarray]] = {}
    served = None
    if "served" in config.default_models:  # exactly the bundle member's procedure (models.crossfit)
        served = fit_default_member(x_tr, rating_index[train], y[train], seed, config.served_net, config.inner_splits)
    rates = np.asarray(rating_rates(rating_index[train], y[train]))
    for setting in settings:
        if setting == "with_rating":
            a, b = np.hstack([x_tr, one_hot_ratings(rating_index[train])]), np.hstack([x_te, one_hot_ratings(rating_index[test])])
        else:
            a, b = x_tr, x_te
        preds: dict[str, np.ndarray] = {}
        for m in config.default_models:
            if served is not None and m == "served":
                preds[m] = (served.rated(x_te, one_hot_ratings(rating_index[test])) if setting == "with_rating"
                            else served.invoice_only(x_te))
            elif m == "rating_rate":
                if setting == "with_rating":
                    preds[m] = rates[rating_index[test]]
            elif m == "base_rate":
                preds[m] = np.full(len(test), float(np.mean(y[train])))
            else:
                preds[m] = _fit_predict_default(m, a, y[train], b, seed, config.net)
        out[setting] = preds
    return out


@dataclass(frozen=True, slots=True)
class DefaultCVResult:
    """Per-setting, per-model summaries; and out-of-fold probabilities of the first repeat (for ROC plots)."""

    summary: dict[str, dict[str, dict[str, dict[str, float]]]]
    folds: dict[str, dict[str, list[dict[str, float]]]]
    oof_probability: dict[str, dict[str, np.ndarray]]
    oof_all_repeats: dict[str, dict[str, np.ndarray]]  # (n_repeats, n): every repeat's out-of-fold probabilities


def calibration_by_rating(y: np.ndarray, rating_index: np.ndarray, p_repeats: np.ndarray) -> dict[str, dict[str, float]]:
    """Per rating: n, observed default rate and mean out-of-fold probability pooled over repeats.

    Examples
    --------
    >>> calibration_by_rating(np.array([0, 1]), np.array([0, 3]), np.array([[0.1, 0.8], [0.2, 0.9]]))["D"]
    {'n': 1, 'observed': 1.0, 'mean_probability': 0.85}
    """
    out: dict[str, dict[str, float]] = {}
    for k, r in enumerate(RATINGS):
        rows = np.asarray(rating_index) == k
        if rows.any():
            out[r] = {"n": int(rows.sum()), "observed": round(float(np.mean(np.asarray(y)[rows])), 4),
                      "mean_probability": round(float(np.nanmean(p_repeats[:, rows])), 4)}
    return out


def reliability(y: np.ndarray, p_repeats: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability diagram data from pooled repeats: per non-empty bin, n, mean probability, observed rate."""
    p = np.asarray(p_repeats, dtype=np.float64).ravel()
    yy = np.tile(np.asarray(y, dtype=np.float64), p_repeats.shape[0])
    ok = ~np.isnan(p)
    p, yy = p[ok], yy[ok]
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    return [{"bin": int(b), "n": int(np.sum(bins == b)), "mean_probability": round(float(p[bins == b].mean()), 4),
             "observed": round(float(yy[bins == b].mean()), 4)} for b in np.unique(bins)]


def default_cv(numeric: np.ndarray, rating_index: np.ndarray, defaulted: np.ndarray, columns: Sequence[str],
               seed: int, config: EvalConfig, settings: Sequence[str] = SETTINGS,
               progress: Progress = _noop) -> DefaultCVResult:
    """Repeated stratified CV of every default model in each setting (labeled rows only)."""
    y = np.asarray(defaulted, dtype=np.int64)
    splitter = RepeatedStratifiedKFold(n_splits=config.n_splits, n_repeats=config.n_repeats, random_state=seed)
    folds: dict[str, dict[str, list[dict[str, float]]]] = {s: {} for s in settings}
    oof: dict[str, dict[str, np.ndarray]] = {s: {} for s in settings}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in settings}
    splits = list(splitter.split(numeric, y))
    jobs = [(numeric, rating_index, y, train, test, columns, seed + k, config, settings)
            for k, (train, test) in enumerate(splits)]
    all_preds = map_folds(_default_fold, jobs, config.n_jobs, progress, "default CV")
    for k, ((_, test), preds) in enumerate(zip(splits, all_preds, strict=True)):
        for s in settings:
            for m, p in preds[s].items():
                folds[s].setdefault(m, []).append(binary_metrics(y[test], p))
                oof[s].setdefault(m, np.full(len(y), np.nan))
                if k < config.n_splits:
                    oof[s][m][test] = p
                if k % config.n_splits == 0:
                    pooled[s].setdefault(m, []).append(np.full(len(y), np.nan))
                pooled[s][m][-1][test] = p
    summary = {s: {m: summarise(rows) for m, rows in folds[s].items()} for s in settings}
    oof_all = {s: {m: np.stack(v) for m, v in pooled[s].items()} for s in settings}
    return DefaultCVResult(summary, folds, oof, oof_all)


def default_split(numeric: np.ndarray, rating_index: np.ndarray, defaulted: np.ndarray, columns: Sequence[str],
                  seed: int, config: EvalConfig, test_size: float = 0.3) -> dict[str, dict[str, dict[str, float]]]:
    """The paper's single stratified 7:3 split: metrics per setting and model."""
    y = np.asarray(defaulted, dtype=np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
    preds = _default_fold(numeric, rating_index, y, np.sort(train), np.sort(test), columns, seed, config, SETTINGS)
    return {s: {m: {k: round(v, 4) for k, v in binary_metrics(y[np.sort(test)], p).items()} for m, p in preds[s].items()}
            for s in SETTINGS}


def shuffled_control(numeric: np.ndarray, defaulted: np.ndarray, columns: Sequence[str], seed: int,
                     config: EvalConfig, models: Sequence[str] = ("bp_net", "random_forest")) -> dict[str, dict[str, float]]:
    """Default CV (invoice only) after permuting the labels: AUC mean/sd per model, expected near 0.5."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.asarray(defaulted, dtype=np.int64))
    cfg = EvalConfig(config.n_splits, config.n_repeats, config.selection_runs, config.net, config.cnn, tuple(models),
                     n_jobs=config.n_jobs)
    result = default_cv(numeric, np.zeros(len(y), dtype=np.int64), y, columns, seed, cfg, settings=("invoice_only",))
    return {m: result.summary["invoice_only"][m]["auc"] for m in models}


@dataclass(frozen=True, slots=True)
class RatingCVResult:
    summary: dict[str, dict[str, dict[str, float]]]
    oof_prediction: dict[str, np.ndarray]  # first repeat, rating indices


def _fit_predict_rating(name: str, seq_tr: np.ndarray, x_tr: np.ndarray, y_tr: np.ndarray, seq_te: np.ndarray,
                        x_te: np.ndarray, seed: int, cnn_config: RatingCNNConfig) -> np.ndarray:
    if name == "rating_cnn":
        return np.asarray(RatingCNN.fit(seq_tr, x_tr, y_tr, cnn_config, seed=seed).predict_proba(seq_te, x_te).argmax(axis=1))
    if name == "majority":
        return np.full(len(x_te), np.bincount(y_tr, minlength=len(RATINGS)).argmax())
    model = make_baselines(seed)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_tr, y_tr)
        return np.asarray(model.predict(x_te))


def _rating_fold(numeric: np.ndarray, sequences: np.ndarray, y: np.ndarray, d: np.ndarray, train: np.ndarray,
                 test: np.ndarray, columns: Sequence[str], seed: int, config: EvalConfig) -> dict[str, np.ndarray]:
    pre, selection = fit_inputs(numeric[train], d[train], columns, seed, config.selection_runs)
    x_tr, x_te = _selected(pre, selection, numeric[train]), _selected(pre, selection, numeric[test])
    return {m: _fit_predict_rating(m, sequences[train], x_tr, y[train], sequences[test], x_te, seed, config.cnn)
            for m in config.rating_models}


def rating_cv(numeric: np.ndarray, sequences: np.ndarray, rating_index: np.ndarray, defaulted: np.ndarray,
              columns: Sequence[str], seed: int, config: EvalConfig, progress: Progress = _noop) -> RatingCVResult:
    """Repeated stratified CV (stratified by rating) of the rating CNN and the baselines.

    Static inputs are the cleaned features selected for default inside each training fold,
    exactly as the bundle's CNN gets them.
    """
    y = np.asarray(rating_index, dtype=np.int64)
    d = np.asarray(defaulted, dtype=np.int64)
    splitter = RepeatedStratifiedKFold(n_splits=config.n_splits, n_repeats=config.n_repeats, random_state=seed)
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in config.rating_models}
    oof = {m: np.full(len(y), -1) for m in config.rating_models}
    splits = list(splitter.split(numeric, y))
    jobs = [(numeric, sequences, y, d, train, test, columns, seed + k, config) for k, (train, test) in enumerate(splits)]
    all_preds = map_folds(_rating_fold, jobs, config.n_jobs, progress, "rating CV")
    for k, ((_, test), preds) in enumerate(zip(splits, all_preds, strict=True)):
        for m, pred in preds.items():
            rows[m].append(rating_metrics(y[test], pred))
            if k < config.n_splits:
                oof[m][test] = pred
    return RatingCVResult({m: summarise(r) for m, r in rows.items()}, oof)


def fmt(stat: dict[str, float]) -> str:
    """``mean ± sd`` with three decimals.

    Examples
    --------
    >>> fmt({"mean": 0.8791, "sd": 0.0832})
    '0.879 ± 0.083'
    """
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def results_table(summary: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str]) -> list[list[str]]:
    """Rows ``[model, metric1, ...]`` of mean ± sd strings."""
    return [[model] + [fmt(stats[m]) for m in metrics] for model, stats in summary.items()]


def as_jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays inside nested dicts/lists into plain Python."""
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return as_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
