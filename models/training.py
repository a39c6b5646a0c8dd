"""Training end to end over arrays: fit the bundle's models, evaluate them, write the bundle.

The CLI (``riskmon train``) builds :class:`TrainingData` from the feature fold and calls
:func:`train`. Rows in ``holdout`` take no part in any fitting (cleaning, selection,
nets, segments); they are only scored at the end (``metrics["holdout"]``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.cleaning import Preprocessor
from models.calibration import Platt, out_of_fold
from models.default_net import DefaultNet, DefaultNetConfig
from models.evaluation import (
    DEFAULT_MODELS,
    EvalConfig,
    as_jsonable,
    default_cv,
    default_split,
    one_hot_ratings,
    rating_cv,
    shuffled_control,
)
from models.rating_cnn import RatingCNN, RatingCNNConfig, rating_metrics
from models.schema import NUMERIC_FEATURES, RATINGS
from models.scoring import ScoringBatch
from models.segments import elbow, fit_segments, knee
from models.selection import select_features

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class TrainingData:
    """All enterprises' raw inputs (rows aligned)."""

    enterprise_ids: tuple[str, ...]
    numeric: np.ndarray  # (n, len(NUMERIC_FEATURES)) raw, NaN allowed
    categorical: tuple[tuple[str, str], ...]  # (industry, legal_form)
    sequences: np.ndarray  # (n, C, T) float32
    ratings: tuple[str | None, ...]
    defaulted: np.ndarray  # (n,) 1/0/NaN

    def content_hash(self) -> str:
        """sha256 (16 hex) of every array and label: the bundle's ``data_hash``."""
        h = hashlib.sha256()
        h.update("|".join(self.enterprise_ids).encode())
        h.update(np.ascontiguousarray(np.nan_to_num(self.numeric, nan=-1e300)).tobytes())
        h.update(np.ascontiguousarray(self.sequences).tobytes())
        h.update(repr((self.categorical, self.ratings)).encode())
        h.update(np.nan_to_num(self.defaulted, nan=-1).tobytes())
        return h.hexdigest()[:16]

    def batch(self, rows: np.ndarray | None = None, known: bool = True) -> ScoringBatch:
        """The scoring batch of ``rows`` (all by default), with or without the known ratings."""
        idx = np.arange(len(self.enterprise_ids)) if rows is None else np.asarray(rows)
        return ScoringBatch(
            enterprise_ids=[self.enterprise_ids[i] for i in idx],
            numeric=self.numeric[idx],
            categorical=[self.categorical[i] for i in idx],
            sequences=self.sequences[idx],
            known_ratings=[self.ratings[i] if known else None for i in idx],
        )


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """What to train and how much to evaluate."""

    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)
    segment_ks: tuple[int, ...] = tuple(range(2, 11))
    segment_n_init: int = 3
    evaluate: bool = True
    split_73: bool = True
    control: bool = True

    @classmethod
    def fast(cls, seed: int = 0) -> TrainConfig:
        """Few epochs, 2x2 CV, 3 selection runs: for tests and the cached test bundle."""
        return cls(
            seed=seed,
            eval=EvalConfig(n_splits=2, n_repeats=2, selection_runs=3,
                            net=replace(DefaultNetConfig.paper(), epochs=15),
                            cnn=replace(RatingCNNConfig.original(), epochs=20),
                            default_models=("bp_net", "logistic_regression", "random_forest"),
                            rating_models=("rating_cnn", "random_forest", "majority")),
            segment_ks=(2, 3, 4, 5, 6),
            segment_n_init=1,
            split_73=False,
            control=False,
        )


@dataclass(frozen=True, slots=True)
class TrainResult:
    bundle_dir: Path
    bundle: ModelBundle
    metrics: dict[str, Any]
    plots: dict[str, Any]  # arrays for the report's figures


def _rating_index(ratings: Sequence[str | None], rows: np.ndarray) -> np.ndarray:
    return np.array([RATINGS.index(ratings[i]) for i in rows], dtype=np.int64)  # type: ignore[arg-type]


def train(data: TrainingData, out_dir: Path, config: TrainConfig = TrainConfig(),
          holdout: Collection[str] = (), progress: Progress = _noop) -> TrainResult:
    """Fit everything on the non-holdout rows, evaluate, and write the bundle to ``out_dir``."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seed = config.seed
    ids = data.enterprise_ids
    hold = np.array([eid in set(holdout) for eid in ids])
    labeled = np.array([r is not None for r in data.ratings]) & ~np.isnan(data.defaulted)
    fit_rows = np.flatnonzero(~hold)
    lab_rows = np.flatnonzero(labeled & ~hold)
    x_lab = data.numeric[lab_rows]
    y_def = data.defaulted[lab_rows].astype(np.int64)
    y_rat = _rating_index(data.ratings, lab_rows)
    seq_lab = data.sequences[lab_rows]
    cfg = config.eval

    metrics: dict[str, Any] = {"seed": seed, "n_enterprises": int(len(fit_rows)), "n_labeled": int(len(lab_rows)),
                               "n_defaulted": int(y_def.sum()),
                               "cv": {"n_splits": cfg.n_splits, "n_repeats": cfg.n_repeats,
                                      "selection_runs": cfg.selection_runs}}
    plots: dict[str, Any] = {"y_default": y_def, "y_rating": y_rat}

    # --- evaluation (all fitting inside folds) ---------------------------------------------
    if config.evaluate:
        t = time.perf_counter()
        dcv = default_cv(x_lab, y_rat, y_def, NUMERIC_FEATURES, seed, cfg, progress=progress)
        metrics["default_cv"] = dcv.summary
        plots["default_oof"] = dcv.oof_probability
        timings["default_cv"] = time.perf_counter() - t
        t = time.perf_counter()
        rcv = rating_cv(x_lab, seq_lab, y_rat, y_def, NUMERIC_FEATURES, seed, cfg, progress=progress)
        metrics["rating_cv"] = rcv.summary
        plots["rating_oof"] = rcv.oof_prediction
        timings["rating_cv"] = time.perf_counter() - t
        if config.split_73:
            progress("7:3 split")
            t = time.perf_counter()
            metrics["default_split_73"] = default_split(x_lab, y_rat, y_def, NUMERIC_FEATURES, seed, cfg)
            timings["split_73"] = time.perf_counter() - t
        if config.control:
            progress("shuffled-label control")
            t = time.perf_counter()
            control_cfg = replace(cfg, n_repeats=min(cfg.n_repeats, 2), selection_runs=min(cfg.selection_runs, 3),
                                  default_models=DEFAULT_MODELS)
            metrics["shuffled_control_auc"] = shuffled_control(x_lab, y_def, NUMERIC_FEATURES, seed, control_cfg)
            timings["shuffled_control"] = time.perf_counter() - t

    # --- final models on all non-holdout labeled rows ---------------------------------------
    progress("fitting final models")
    t = time.perf_counter()
    # cleaning is fitted on every non-holdout enterprise (unlabeled included: it uses no labels),
    # selection on the non-holdout labeled rows
    pre = Preprocessor.fit(data.numeric[fit_rows], NUMERIC_FEATURES)
    selection = select_features(pre.transform(x_lab), y_def, NUMERIC_FEATURES, seed=seed, n_runs=cfg.selection_runs)
    sel_idx = [NUMERIC_FEATURES.index(c) for c in selection.selected]
    x_sel = pre.transform(x_lab)[:, sel_idx]
    net_invoice = DefaultNet.fit(x_sel, y_def, cfg.net, seed=seed)
    x_rated = np.hstack([x_sel, one_hot_ratings(y_rat)])
    net_rated = DefaultNet.fit(x_rated, y_def, cfg.net, seed=seed)

    # calibration: the final nets separate their training rows perfectly, so their raw outputs are
    # 0 or 1; Platt scaling fitted on 5-fold out-of-fold predictions of the same configuration
    # turns them into usable default probabilities (monotone: rankings and AUC unchanged)
    def fit_predict(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, fold_seed: int) -> np.ndarray:
        return DefaultNet.fit(x_tr, y_tr, cfg.net, seed=fold_seed).predict_proba(x_te)

    calibration = {}
    for key, x_cal in (("net_invoice", x_sel), ("net_rated", x_rated)):
        oof = out_of_fold(fit_predict, x_cal, y_def, seed)
        calibration[key] = Platt.identity() if np.isnan(oof).any() else Platt.fit(oof, y_def)
    cnn = RatingCNN.fit(seq_lab, x_sel, y_rat, cfg.cnn, seed=seed)
    timings["final_models"] = time.perf_counter() - t
    metrics["selection"] = {"selected": list(selection.selected), "dropped_collinear": list(selection.dropped_collinear),
                            "importance": selection.importance}

    # --- segments over every non-holdout enterprise (known rating, else the CNN's) ------------
    progress("segments")
    t = time.perf_counter()
    x_all = pre.transform(data.numeric[fit_rows])[:, sel_idx]
    probs = cnn.predict_proba(data.sequences[fit_rows], x_all)
    rating_vec = probs.copy()
    ratings_all: list[str] = []
    for j, i in enumerate(fit_rows):
        known = data.ratings[i]
        if known is not None:
            rating_vec[j] = np.eye(len(RATINGS))[RATINGS.index(known)]
        ratings_all.append(known if known is not None else RATINGS[int(probs[j].argmax())])
    pd_all = calibration["net_rated"].apply(net_rated.predict_proba(np.hstack([x_all, rating_vec])))
    cats = [(r, data.categorical[i][0], data.categorical[i][1]) for r, i in zip(ratings_all, fit_rows, strict=True)]
    costs = elbow(x_all, cats, seed, config.segment_ks, config.segment_n_init)
    k = knee(costs)
    profit_growth = data.numeric[fit_rows, NUMERIC_FEATURES.index("profit_growth")]
    segmenter, labels, profiles = fit_segments(x_all, cats, selection.selected, k, pd_all, profit_growth, seed,
                                               config.segment_n_init)
    timings["segments"] = time.perf_counter() - t
    metrics["segments"] = {"costs": costs, "k": k, "knee_rule": "max distance below the chord of the scaled cost curve",
                           "profiles": profiles}
    unl = [j for j, i in enumerate(fit_rows) if data.ratings[i] is None]
    metrics["unlabeled"] = {
        "n": len(unl),
        "predicted_ratings": {r: sum(ratings_all[j] == r for j in unl) for r in RATINGS},
        "mean_default_probability": float(np.mean(pd_all[unl])) if unl else None,
        "path": "rating = CNN argmax; default probability = rating-aware net fed the CNN's A..D probabilities",
    }
    plots["segment_costs"] = costs
    plots["segment_profiles"] = profiles
    plots["segment_matrix"] = (x_all, labels, list(selection.selected))

    # --- bundle -----------------------------------------------------------------------------
    summary = _summary(metrics)
    bundle_dir = save_bundle(out_dir, preprocessor=pre, selected=selection.selected, net_invoice=net_invoice,
                             net_rated=net_rated, cnn=cnn, segmenter=segmenter, data_hash=data.content_hash(),
                             calibration=calibration,
                             metrics_summary=summary, extra={"seed": seed, "holdout_ids": sorted(set(holdout) & set(ids))})
    bundle = load_bundle(bundle_dir)

    # --- holdout ------------------------------------------------------------------------------
    hold_lab = np.flatnonzero(labeled & hold)
    if len(holdout):
        metrics["holdout"] = _holdout_metrics(bundle, data, hold_lab)
    timings["total_models"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return TrainResult(bundle_dir, bundle, as_jsonable(metrics), plots)


def _holdout_metrics(bundle: ModelBundle, data: TrainingData, rows: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {"n": int(len(rows))}
    if len(rows) == 0:
        return out | {"default_auc": None, "default_auc_with_rating": None, "rating_accuracy": None}
    y = data.defaulted[rows].astype(np.int64)
    batch = data.batch(rows, known=True)
    scores = bundle.score_many(batch)
    p_inv = bundle.default_probability_invoice_only(batch.numeric)
    p_rated = np.array([s.default_probability for s in scores])
    two = len(np.unique(y)) == 2
    pred = np.array([RATINGS.index(max(s.rating_probabilities, key=s.rating_probabilities.__getitem__)) for s in scores])
    truth = _rating_index(data.ratings, rows)
    return out | {
        "default_auc": float(roc_auc_score(y, p_inv)) if two else None,
        "default_auc_with_rating": float(roc_auc_score(y, p_rated)) if two else None,
        "rating_accuracy": rating_metrics(truth, pred)["accuracy"],
        "rating_within_one": rating_metrics(truth, pred)["within_one"],
    }


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The small part of the metrics that goes into the manifest."""
    out: dict[str, Any] = {"cv": metrics["cv"]}
    if "default_cv" in metrics:
        out["default_auc_invoice_only"] = metrics["default_cv"]["invoice_only"]["bp_net"]["auc"]
        out["default_auc_with_rating"] = metrics["default_cv"]["with_rating"]["bp_net"]["auc"]
        out["rating_accuracy"] = metrics["rating_cv"]["rating_cnn"]["accuracy"]
    return as_jsonable(out)
