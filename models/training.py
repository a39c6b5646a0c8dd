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

from models.bundle import Member, ModelBundle, load_bundle, save_bundle
from models.signing import DEFAULT_KEY, public_key_path
from models.cleaning import Preprocessor
from models.crossfit import RATE_PRIOR_STRENGTH, assign_folds, fit_default_member, rating_rates
from models.default_net import DefaultNetConfig
from models.evaluation import (
    DEFAULT_MODELS,
    EvalConfig,
    as_jsonable,
    calibration_by_rating,
    default_cv,
    default_split,
    map_folds,
    rating_cv,
    reliability,
    shuffled_control,
)
from models.rating_cnn import RatingCNN, RatingCNNConfig, rating_metrics
from models.schema import NUMERIC_FEATURES, RATINGS
from models.scoring import Score, ScoringBatch
from models.segments import elbow, fit_segments, knee
from models.selection import select_features

Progress = Callable[[str], None]

#: At most this share of enterprises may share one default probability (to 4 decimals).
MAX_SHARED_PROBABILITY = 0.05


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
    n_members: int = 5  # cross-fitted members = folds of the labeled training enterprises

    @classmethod
    def fast(cls, seed: int = 0) -> TrainConfig:
        """Few epochs, 2x2 CV, 3 selection runs: for tests and the cached test bundle."""
        return cls(
            seed=seed,
            eval=EvalConfig(n_splits=2, n_repeats=2, selection_runs=3,
                            net=replace(DefaultNetConfig.paper(), epochs=15),
                            served_net=replace(DefaultNetConfig(), epochs=15, batch_size=32), inner_splits=2,
                            cnn=replace(RatingCNNConfig.original(), epochs=20),
                            default_models=("served", "rating_rate", "base_rate", "bp_net", "logistic_regression",
                                            "random_forest"),
                            rating_models=("rating_cnn", "random_forest", "majority")),
            segment_ks=(2, 3, 4, 5, 6),
            segment_n_init=1,
            split_73=False,
            control=False,
            n_members=3,
        )


@dataclass(frozen=True, slots=True)
class TrainResult:
    bundle_dir: Path
    bundle: ModelBundle
    metrics: dict[str, Any]
    plots: dict[str, Any]  # arrays for the report's figures


def _rating_index(ratings: Sequence[str | None], rows: np.ndarray) -> np.ndarray:
    return np.array([RATINGS.index(ratings[i]) for i in rows], dtype=np.int64)


def train(data: TrainingData, out_dir: Path, config: TrainConfig = TrainConfig(),
          holdout: Collection[str] = (), progress: Progress = _noop, signing_key: Path | None = None) -> TrainResult:
    """Fit everything on the non-holdout rows, evaluate, and write the bundle to ``out_dir``.

    The bundle is signed with ``signing_key`` (default: :data:`models.signing.DEFAULT_KEY`).
    """
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
        plots["default_oof_all"] = dcv.oof_all_repeats
        metrics["calibration_by_rating"] = {
            m: calibration_by_rating(y_def, y_rat, p) for m, p in dcv.oof_all_repeats["with_rating"].items()}
        metrics["reliability"] = {s: {m: reliability(y_def, p) for m, p in per.items()}
                                  for s, per in dcv.oof_all_repeats.items()}
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

    # --- cross-fitted members on the non-holdout labeled rows -----------------------------
    progress("fitting cross-fitted members")
    t = time.perf_counter()
    # cleaning is fitted on every non-holdout enterprise (unlabeled included: it uses no labels);
    # each member selects its features and fits its nets on the labeled rows outside its fold
    pre = Preprocessor.fit(data.numeric[fit_rows], NUMERIC_FEATURES)
    cleaned_lab = pre.transform(x_lab)
    folds = assign_folds([ids[i] for i in lab_rows], y_rat, config.n_members, seed)
    in_fold = [np.array([ids[i] in set(f) for i in lab_rows]) for f in folds]
    jobs = [(cleaned_lab, seq_lab, y_def, y_rat, np.flatnonzero(~mask), seed + 104729 * (k + 1), cfg)
            for k, mask in enumerate(in_fold)]
    members = tuple(map_folds(fit_member, jobs, cfg.n_jobs, progress, "cross-fitted member"))
    # the global selection only names the segments' inputs
    selection = select_features(cleaned_lab, y_def, NUMERIC_FEATURES, seed=seed, n_runs=cfg.selection_runs)
    sel_idx = [NUMERIC_FEATURES.index(c) for c in selection.selected]
    timings["final_models"] = time.perf_counter() - t
    metrics["selection"] = {"selected": list(selection.selected), "dropped_collinear": list(selection.dropped_collinear),
                            "importance": selection.importance,
                            "per_member": [list(m.selected) for m in members]}
    metrics["crossfit"] = {"k": len(folds), "fold_sizes": [len(f) for f in folds],
                           "fold_defaults": [int(y_def[m].sum()) for m in in_fold], "inner_splits": cfg.inner_splits,
                           "stacks": [m.default.maps_to_dict() for m in members]}

    # --- segments over every non-holdout enterprise (known rating, else the members' CNN) ----
    progress("segments")
    t = time.perf_counter()
    x_all = pre.transform(data.numeric[fit_rows])[:, sel_idx]
    scorer = ModelBundle({}, pre, selection.selected, members, folds, None)  # type: ignore[arg-type]
    out = scorer.member_outputs(data.batch(fit_rows, known=True))
    ratings_all, pd_all = out.ratings, out.mean(out.rated)
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
        "path": "rating = argmax of the members' mean CNN probabilities; default probability = mean over members of "
                "the rating-aware net fed the member CNN's A..D probabilities, stacked with the expected rating rate",
    }
    plots["segment_costs"] = costs
    plots["segment_profiles"] = profiles
    plots["segment_matrix"] = (x_all, labels, list(selection.selected))

    # --- bundle -----------------------------------------------------------------------------
    summary = _summary(metrics)
    bundle_dir = save_bundle(out_dir, preprocessor=pre, selected=selection.selected, members=members, folds=folds,
                             segmenter=segmenter, data_hash=data.content_hash(), metrics_summary=summary,
                             crossfit={"stratified_by": "rating", "inner_splits": cfg.inner_splits,
                                       "rate_prior_strength": RATE_PRIOR_STRENGTH},
                             extra={"seed": seed, "holdout_ids": sorted(set(holdout) & set(ids))},
                             signing_key=signing_key)
    bundle = load_bundle(bundle_dir, public_key=public_key_path(signing_key or DEFAULT_KEY))

    # --- holdout ------------------------------------------------------------------------------
    hold_lab = np.flatnonzero(labeled & hold)
    metrics["invariants"] = probability_invariants(bundle.score_many(data.batch(fit_rows, known=True), reasons=False))
    metrics["training_rows_out_of_fold"] = _scored_metrics(bundle, data, lab_rows, y_def, y_rat)
    if len(holdout):
        metrics["holdout"] = _holdout_metrics(bundle, data, hold_lab, y_def, y_rat)
    timings["total_models"] = time.perf_counter() - t0
    metrics["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return TrainResult(bundle_dir, bundle, as_jsonable(metrics), plots)


def fit_member(cleaned: np.ndarray, sequences: np.ndarray, y_def: np.ndarray, y_rat: np.ndarray, rows: np.ndarray,
               seed: int, cfg: EvalConfig) -> Member:
    """One cross-fitted member on ``rows`` of the labeled, cleaned features: selection, default nets
    with their nested maps (:func:`models.crossfit.fit_default_member`), rating CNN."""
    selection = select_features(cleaned[rows], y_def[rows], NUMERIC_FEATURES, seed=seed, n_runs=cfg.selection_runs)
    x = cleaned[rows][:, [NUMERIC_FEATURES.index(c) for c in selection.selected]]
    default = fit_default_member(x, y_rat[rows], y_def[rows], seed, cfg.served_net, cfg.inner_splits)
    cnn = RatingCNN.fit(sequences[rows], x, y_rat[rows], cfg.cnn, seed=seed)
    return Member(tuple(selection.selected), default, cnn)


def probability_invariants(scores: Sequence[Score]) -> dict[str, Any]:
    """What a bank checks before pricing with the probabilities.

    ``largest_share``: the largest fraction of enterprises sharing one default probability
    (to 4 decimals; must be <= 0.05); ``mean_by_rating``: mean default probability per
    rating (known, else predicted; must rise A < B < C < D).

    Examples
    --------
    >>> from models.scoring import Score
    >>> s = [Score(str(i), "ABCD"[i % 4], True, {}, 0.1 * (i % 4) + 0.001 * i, "x") for i in range(40)]
    >>> inv = probability_invariants(s)
    >>> inv["largest_share"], inv["ok"]
    (0.025, True)
    """
    p = np.array([round(s.default_probability, 4) for s in scores])
    _, counts = np.unique(p, return_counts=True)
    largest = float(counts.max() / len(p)) if len(p) else 0.0
    means = {r: float(np.mean([s.default_probability for s in scores if s.rating == r]))
             for r in RATINGS if any(s.rating == r for s in scores)}
    rising = all(means[a] < means[b] for a, b in zip(RATINGS, RATINGS[1:]) if a in means and b in means)
    return {"n": len(p), "largest_share": round(largest, 4), "max_share_allowed": MAX_SHARED_PROBABILITY,
            "mean_by_rating": {r: round(v, 4) for r, v in means.items()}, "rising_a_to_d": rising,
            "ok": bool(largest <= MAX_SHARED_PROBABILITY and rising)}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))


def _scored_metrics(bundle: ModelBundle, data: TrainingData, rows: np.ndarray, y_train: np.ndarray,
                    r_train: np.ndarray) -> dict[str, Any]:
    """AUC and log loss of the bundle's (cross-fitted) probabilities on labeled ``rows``, beside the
    per-rating and overall default rates of the training rows."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {"n": int(len(rows))}
    if len(rows) == 0:
        return out
    y = data.defaulted[rows].astype(np.int64)
    scores = bundle.score_many(data.batch(rows, known=True), reasons=False)
    p_inv = np.array([s.default_probability_invoice_only for s in scores], dtype=np.float64)
    p_rated = np.array([s.default_probability for s in scores])
    rates = np.asarray(rating_rates(r_train, y_train))
    p_rate = rates[_rating_index(data.ratings, rows)]
    p_overall = np.full(len(rows), float(np.mean(y_train)))
    two = len(np.unique(y)) == 2
    return out | {
        "default_auc": float(roc_auc_score(y, p_inv)) if two else None,
        "default_auc_with_rating": float(roc_auc_score(y, p_rated)) if two else None,
        "log_loss": _log_loss(y, p_rated),
        "log_loss_per_rating_rate": _log_loss(y, p_rate),
        "log_loss_invoice_only": _log_loss(y, p_inv),
        "log_loss_overall_rate": _log_loss(y, p_overall),
        "brier": float(np.mean((p_rated - y) ** 2)),
        "brier_per_rating_rate": float(np.mean((p_rate - y) ** 2)),
    }


def _holdout_metrics(bundle: ModelBundle, data: TrainingData, rows: np.ndarray, y_train: np.ndarray,
                     r_train: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(rows))}
    if len(rows) == 0:
        return out | {"default_auc": None, "default_auc_with_rating": None, "rating_accuracy": None}
    scores = bundle.score_many(data.batch(rows, known=True), reasons=False)
    pred = np.array([RATINGS.index(max(s.rating_probabilities, key=s.rating_probabilities.__getitem__)) for s in scores])
    truth = _rating_index(data.ratings, rows)
    m = _scored_metrics(bundle, data, rows, y_train, r_train)
    return out | m | {
        "rating_accuracy": rating_metrics(truth, pred)["accuracy"],
        "rating_within_one": rating_metrics(truth, pred)["within_one"],
        "done_when": {
            "served_log_loss_within_0.03_of_rating_rate": m["log_loss"] <= m["log_loss_per_rating_rate"] + 0.03,
            "invoice_only_log_loss_below_overall_rate": m["log_loss_invoice_only"] < m["log_loss_overall_rate"],
        },
    }


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The small part of the metrics that goes into the manifest."""
    out: dict[str, Any] = {"cv": metrics["cv"]}
    if "default_cv" in metrics:
        for key, model in (("", "bp_net"), ("served_", "served")):
            for setting, name in (("invoice_only", "invoice_only"), ("with_rating", "with_rating")):
                stats = metrics["default_cv"][setting].get(model)
                if stats:
                    out[f"{key}default_auc_{name}"] = stats["auc"]
                    out[f"{key}default_log_loss_{name}"] = stats["log_loss"]
        out["rating_accuracy"] = metrics["rating_cv"]["rating_cnn"]["accuracy"]
    summary: dict[str, Any] = as_jsonable(out)
    return summary
