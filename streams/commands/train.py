"""``riskmon train``: features from the data set, every model, CV metrics, the bundle and the report.

Writes into ``--out``: the bundle (``manifest.json`` + ``*.pt``), ``metrics.json``,
``report.md`` and its PNG figures. ``--holdout FILE`` (one enterprise id per line) keeps
those enterprises out of all fitting and adds ``metrics["holdout"]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import time
from dataclasses import replace
from collections.abc import Collection
from pathlib import Path

from streams.cli import UserError, load_settings
from streams.dataset import DEFAULT_DATA_DIR


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("train", help="train the credit models and write a bundle, metrics.json and report.md")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="data set folder (default: the project's copy)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the bundle, metrics and report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=Path, help="file of enterprise ids (one a line) excluded from all fitting")
    parser.add_argument("--cv-repeats", type=int, help="repeats of the 5-fold CV (default 5; 2 with --fast)")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, help="feature date (default: last invoice, 2020-02-21)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the CV folds (default 2)")
    parser.add_argument("--fast", action="store_true", help="few epochs and 2x2 CV (tests, smoke runs)")
    parser.add_argument("--no-report", action="store_true", help="skip report.md and the figures")
    parser.add_argument("--nets", choices=("paper", "tuned"), default="paper",
                        help="paper: paper 004's BP net and the original CNN (default); tuned: the pre-registered "
                             "candidates chosen in docs/models_tuning.md (no better on the reporting CV)")
    parser.add_argument("--signing-key", type=Path, default=None,
                        help="Ed25519 key that signs the bundle, created on first use (default: RISKMON_BUNDLE_SIGNING_KEY, "
                             "var/keys/bundle-signing.key); loaders trust its .pub")
    parser.set_defaults(func=run)


def read_holdout(path: Path | None, known_ids: Collection[str]) -> list[str]:
    """Enterprise ids from a holdout file (blank lines and ``#`` comments ignored)."""
    if path is None:
        return []
    if not path.is_file():
        raise UserError(f"holdout file not found: {path}")
    ids = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    unknown = sorted(set(ids) - set(known_ids))
    if unknown:
        raise UserError(f"holdout file {path} names unknown enterprises: {', '.join(unknown[:5])}")
    return ids


def training_data(table: object) -> object:
    """A :class:`models.training.TrainingData` from a :class:`streams.features.batch.FeatureTable`."""
    from models.training import TrainingData

    return TrainingData(table.enterprise_ids, table.numeric, table.categorical, table.sequences,  # type: ignore[attr-defined]
                        table.ratings, table.defaulted)  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from models.training import TrainConfig, train
    from streams.features.batch import LAST_INVOICE_DATE, build_feature_table

    torch.set_num_threads(1)  # tiny nets: one thread is ~5x faster than two (no sync overhead)
    if not (args.data / "enterprises.csv").is_file():
        raise UserError(f"no enterprises.csv in {args.data} (expected a folder laid out like data/cumcm2020c)")
    console = Console(stderr=True)
    config = TrainConfig.fast(args.seed) if args.fast else TrainConfig(seed=args.seed)
    if args.cv_repeats is not None and args.cv_repeats < 1:
        raise UserError("--cv-repeats must be at least 1")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    repeats = config.eval.n_repeats if args.cv_repeats is None else args.cv_repeats
    config = replace(config, eval=replace(config.eval, n_repeats=repeats, n_jobs=args.jobs))
    if args.nets == "tuned":
        from models.default_net import DefaultNetConfig
        from models.rating_cnn import RatingCNNConfig

        net, cnn = DefaultNetConfig(), RatingCNNConfig()
        if args.fast:
            net, cnn = replace(net, epochs=config.eval.net.epochs), replace(cnn, epochs=config.eval.cnn.epochs)
        config = replace(config, eval=replace(config.eval, net=net, cnn=cnn))
    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task("features: folding invoices", total=None)
        try:
            table = build_feature_table(args.data, args.as_of or LAST_INVOICE_DATE)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from exc
        t_features = time.perf_counter() - t0
        holdout = read_holdout(args.holdout, table.enterprise_ids)
        result = train(training_data(table), args.out, config, holdout,  # type: ignore[arg-type]
                       progress=lambda msg: progress.update(task, description=msg),
                       signing_key=args.signing_key or load_settings().bundle_signing_key)
        progress.update(task, description="done")
    metrics = result.metrics
    metrics["timings_s"]["features"] = round(t_features, 1)
    metrics["timings_s"]["total"] = round(time.perf_counter() - t0, 1)
    metrics["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    metrics["as_of"] = table.as_of.isoformat()
    metrics["bundle_version"] = result.bundle.version
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if not args.no_report:
        from models.report import write_report

        write_report(args.out, metrics, result.plots)
    inv = metrics["invariants"]
    console.print(f"invariants ({'ok' if inv['ok'] else 'VIOLATED'}): largest share of enterprises with one default "
                  f"probability {inv['largest_share']:.1%} (max {inv['max_share_allowed']:.0%}); mean by rating "
                  + " < ".join(f"{r} {v:.3f}" for r, v in inv["mean_by_rating"].items())
                  + ("" if inv["rising_a_to_d"] else " (NOT rising)"))
    console.print(f"bundle {result.bundle.version} written to {args.out} in {metrics['timings_s']['total']} s")
    return 0
