"""The human-readable training report: ``report.md`` plus PNG figures (matplotlib, Agg backend).

Figures: ROC curves of the default models (out-of-fold, first CV repeat, both settings),
the rating CNN's confusion matrix (out-of-fold), the k-prototypes elbow curve, and the
segment profiles (mean cleaned feature per segment).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import fmt
from models.schema import RATINGS

DEFAULT_METRICS = ("auc", "brier", "log_loss", "ece", "accuracy", "precision", "recall", "f1")
RATING_METRICS = ("accuracy", "macro_f1", "within_one")


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table.

    Examples
    --------
    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def cv_tables(metrics: Mapping[str, Any]) -> str:
    """The measured CV tables (default: both settings and the 7:3 split; rating) as markdown."""
    out: list[str] = []
    cv = metrics.get("cv", {})
    if "default_cv" in metrics:
        for setting, title in (("invoice_only", "invoice features only"), ("with_rating", "with the known rating (one-hot)")):
            rows = [[m] + [fmt(s[k]) for k in DEFAULT_METRICS] for m, s in metrics["default_cv"][setting].items()]
            out.append(f"### Default, {title}: {cv.get('n_splits')}x{cv.get('n_repeats')} repeated stratified CV, "
                       f"mean ± sd over folds (n = {metrics.get('n_labeled')}, {metrics.get('n_defaulted')} defaulted)\n")
            out.append(markdown_table(["model", *DEFAULT_METRICS], rows) + "\n")
    if "calibration_by_rating" in metrics:
        rows = []
        for m, per in metrics["calibration_by_rating"].items():
            rows.append([m] + [f"{per[r]['mean_probability']:.3f} / {per[r]['observed']:.3f} (n={per[r]['n']})"
                               if r in per else "n/a" for r in RATINGS])
        out.append("### Calibration per rating, with the known rating: mean out-of-fold probability / observed "
                   "default rate, pooled over all repeats\n")
        out.append(markdown_table(["model", *RATINGS], rows) + "\n")
    if "default_split_73" in metrics:
        rows = []
        for setting, per_model in metrics["default_split_73"].items():
            rows += [[f"{m} ({setting})"] + [f"{s[k]:.3f}" for k in DEFAULT_METRICS] for m, s in per_model.items()]
        out.append("### Default, the paper's single stratified 7:3 split (one draw; noisy)\n")
        out.append(markdown_table(["model", *DEFAULT_METRICS], rows) + "\n")
    if "shuffled_control_auc" in metrics:
        rows = [[m, fmt(s)] for m, s in metrics["shuffled_control_auc"].items()]
        out.append("### Control: shuffled default labels (AUC should be near 0.5)\n")
        out.append(markdown_table(["model", "auc"], rows) + "\n")
    if "rating_cv" in metrics:
        rows = [[m] + [fmt(s[k]) for k in RATING_METRICS] for m, s in metrics["rating_cv"].items()]
        out.append(f"### Rating (A/B/C/D): {cv.get('n_splits')}x{cv.get('n_repeats')} repeated stratified CV\n")
        out.append(markdown_table(["model", *RATING_METRICS], rows) + "\n")
    return "\n".join(out)


def _plots(out_dir: Path, metrics: Mapping[str, Any], plots: Mapping[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, roc_curve

    figures: list[tuple[str, str]] = []
    if "default_oof" in plots:
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        y = plots["y_default"]
        for ax, (setting, per_model) in zip(axes, plots["default_oof"].items(), strict=False):
            for model, p in per_model.items():
                ok = ~np.isnan(p)
                if len(np.unique(p[ok])) < 2:
                    continue  # a constant (base-rate) model has no ROC curve
                fpr, tpr, _ = roc_curve(y[ok], p[ok])
                ax.plot(fpr, tpr, label=model, lw=1.2)
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set(title=f"ROC, {setting} (out-of-fold, repeat 1)", xlabel="false positive rate", ylabel="true positive rate")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "roc.png", dpi=110)
        plt.close(fig)
        figures.append(("ROC curves of the default models", "roc.png"))
    if "default_oof_all" in plots:
        fig, axes = plt.subplots(1, 2, figsize=(11, 5))
        y = plots["y_default"]
        for ax, (setting, per_model) in zip(axes, plots["default_oof_all"].items(), strict=False):
            for model in ("served", "rating_rate", "base_rate", "bp_net", "random_forest", "lightgbm"):
                if model not in per_model:
                    continue
                p = per_model[model].ravel()
                yy = np.tile(y, per_model[model].shape[0])
                ok = ~np.isnan(p)
                bins = np.minimum((p[ok] * 10).astype(int), 9)
                xs = [p[ok][bins == b].mean() for b in np.unique(bins)]
                ys = [yy[ok][bins == b].mean() for b in np.unique(bins)]
                ax.plot(xs, ys, "o-", label=model, lw=1.2, ms=3)
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set(title=f"reliability, {setting} (out-of-fold, all repeats)", xlabel="mean predicted probability",
                   ylabel="observed default rate")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "reliability.png", dpi=110)
        plt.close(fig)
        figures.append(("Reliability diagram of the default models", "reliability.png"))
    if "rating_oof" in plots and "rating_cnn" in plots["rating_oof"]:
        pred = plots["rating_oof"]["rating_cnn"]
        ok = pred >= 0
        cm = confusion_matrix(plots["y_rating"][ok], pred[ok], labels=list(range(len(RATINGS))))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set(xticks=range(4), yticks=range(4), xticklabels=RATINGS, yticklabels=RATINGS,
               xlabel="predicted", ylabel="true", title="rating CNN, out-of-fold")
        fig.tight_layout()
        fig.savefig(out_dir / "confusion.png", dpi=110)
        plt.close(fig)
        figures.append(("Confusion matrix of the rating CNN", "confusion.png"))
    if "segment_costs" in plots:
        costs = plots["segment_costs"]
        ks = sorted(costs)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(ks, [costs[k] for k in ks], "o-")
        k = metrics.get("segments", {}).get("k")
        if k in costs:
            ax.axvline(k, color="r", ls="--", label=f"knee k = {k}")
            ax.legend()
        ax.set(xlabel="k", ylabel="k-prototypes cost", title="elbow curve")
        fig.tight_layout()
        fig.savefig(out_dir / "elbow.png", dpi=110)
        plt.close(fig)
        figures.append(("Elbow curve of k-prototypes", "elbow.png"))
    if "segment_matrix" in plots:
        x, labels, columns = plots["segment_matrix"]
        names = [p["segment"] for p in plots["segment_profiles"]]
        means = np.array([x[labels == i].mean(axis=0) if np.any(labels == i) else np.zeros(x.shape[1])
                          for i in range(len(names))])
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(columns)), 4))
        ax.imshow(means, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set(yticks=range(len(names)), yticklabels=names, xticks=range(len(columns)), title="segment profiles (mean scaled feature)")
        ax.set_xticklabels(columns, rotation=70, ha="right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "segments.png", dpi=110)
        plt.close(fig)
        figures.append(("Segment profiles", "segments.png"))
    return figures


def write_report(out_dir: Path, metrics: Mapping[str, Any], plots: Mapping[str, Any]) -> Path:
    """Write ``report.md`` and the figures into ``out_dir``; returns the report path."""
    out_dir = Path(out_dir)
    figures = _plots(out_dir, metrics, plots)
    parts = [f"# riskmon training report\n\nBundle `{metrics.get('bundle_version')}`, seed {metrics.get('seed')}, "
             f"features as of {metrics.get('as_of')}, {metrics.get('n_enterprises')} enterprises "
             f"({metrics.get('n_labeled')} labeled). Timings (s): {metrics.get('timings_s')}; "
             f"max RSS {metrics.get('max_rss_mb')} MB.\n",
             "## Cross-validated results\n", cv_tables(metrics)]
    if "invariants" in metrics:
        inv = metrics["invariants"]
        parts.append(f"## Invariants of the served default probability ({'ok' if inv['ok'] else 'VIOLATED'})\n\n"
                     f"Largest share of enterprises with one default probability (4 decimals): {inv['largest_share']:.1%} "
                     f"(allowed {inv['max_share_allowed']:.0%}). Mean by rating: "
                     + ", ".join(f"{r} {v:.3f}" for r, v in inv["mean_by_rating"].items()) + ".\n")
    if "training_rows_out_of_fold" in metrics:
        parts.append("## Training enterprises, scored out of fold by the bundle\n\n```\n"
                     + str(metrics["training_rows_out_of_fold"]) + "\n```\n")
    if "holdout" in metrics:
        parts.append("## Holdout\n\n```\n" + str(metrics["holdout"]) + "\n```\n")
    if "unlabeled" in metrics:
        u = metrics["unlabeled"]
        parts.append(f"## The {u['n']} unlabeled enterprises\n\nPredicted ratings: {u['predicted_ratings']}; "
                     f"mean default probability {_num(u['mean_default_probability'])} ({u['path']}).\n")
    sel = metrics.get("selection", {})
    if sel:
        parts.append(f"## Selected features ({len(sel['selected'])})\n\n" + ", ".join(f"`{c}`" for c in sel["selected"])
                     + "\n\nDropped as collinear (|r| > 0.98): " + (", ".join(sel["dropped_collinear"]) or "none") + "\n")
    seg = metrics.get("segments")
    if seg:
        rows = [[p["segment"], str(p["n"]), _num(p["mean_default_probability"]), _num(p["median_profit_growth"]),
                 " ".join(f"{r}:{n}" for r, n in p["ratings"].items()), " / ".join(p["prototype_categorical"])]
                for p in seg["profiles"]]
        parts.append(f"## Segments (k = {seg['k']}, {seg['knee_rule']})\n\n" + markdown_table(
            ["segment", "n", "mean default p", "median profit growth", "ratings", "prototype rating/industry/form"], rows) + "\n")
    parts += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
