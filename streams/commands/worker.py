"""``riskmon worker``: one live worker (run N of them: they form one consumer group and split partitions).

Settings come from ``RISKMON_...`` environment variables (:mod:`streams.settings`); the
flags below override the most common ones. SIGTERM or Ctrl-C stops gracefully: the batch
in flight finishes and its offsets are committed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from streams.cli import UserError, load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("worker", help="run a live worker: invoices -> features -> scores -> credit lines")
    parser.add_argument("--bundle", type=Path, help="model bundle folder (default: RISKMON_BUNDLE_DIR or var/bundle)")
    parser.add_argument("--data", type=Path, help="data set folder for enterprises.csv and churn.csv")
    parser.add_argument("--metrics-port", type=int, help="port of /health and /metrics (0: none)")
    parser.add_argument("--interval", type=float, help="allocator interval in seconds")
    parser.add_argument("--budget", type=float, help="allocator budget in yuan")
    parser.add_argument("--solver", choices=("exact", "anneal", "rules"))
    parser.add_argument("--loglevel", choices=("debug", "info", "warn", "error"), default="info")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> object:
    settings = load_settings()
    update: dict[str, object] = {}
    if args.bundle is not None:
        update["bundle_dir"] = args.bundle
    if args.data is not None:
        update["data_dir"] = args.data
    if args.metrics_port is not None:
        update["worker"] = settings.worker.model_copy(update={"metrics_port": args.metrics_port})
    alloc = {k: v for k, v in (("interval_s", args.interval), ("budget_yuan", args.budget), ("solver", args.solver))
             if v is not None}
    if alloc:
        update["allocator"] = settings.allocator.model_copy(update=alloc)
    return settings.model_copy(update=update)


def run(args: argparse.Namespace) -> int:
    import faust

    from allocator import AllocatorError
    from models.errors import ModelError
    from streams.adapters.kafka import ensure_topics
    from streams.app import build_context, check_worker_settings, create_app
    from streams.errors import StreamError
    from streams.settings import Settings

    settings = settings_from_args(args)
    assert isinstance(settings, Settings)  # noqa: S101
    try:
        check_worker_settings(settings)
    except StreamError as exc:
        raise UserError(str(exc)) from None
    if not (settings.bundle_dir / "manifest.json").exists():
        raise UserError(f"no model bundle at {settings.bundle_dir}; train one: riskmon train --out {settings.bundle_dir}")
    import torch

    torch.set_num_threads(settings.worker.torch_threads)
    from models.reasons import preload

    preload()
    try:
        ctx = build_context(settings)
        created = asyncio.run(ensure_topics(settings.kafka, settings.topics))
    except (StreamError, ModelError, AllocatorError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    logging.getLogger("riskmon").info("topics created: %s", created or "none (all exist)")
    (settings.state_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    app = create_app(settings, ctx)
    worker = faust.Worker(app, loglevel=args.loglevel, redirect_stdouts=False, quiet=True)
    worker.execute_from_commandline()
    return 0
