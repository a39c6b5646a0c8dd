"""``riskmon topics create|list``: the topics of the settings (names, partitions, replication, compaction)."""

from __future__ import annotations

import argparse
import asyncio

from streams.cli import UserError, load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("topics", help="create or list riskmon's Kafka topics")
    parser.add_argument("action", choices=("create", "list"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streams.adapters.kafka import ensure_topics, topic_specs
    from streams.errors import StreamError

    settings = load_settings()
    if args.action == "list":
        for spec in topic_specs(settings.topics):
            configs = spec.topic_configs or {}
            cleanup = configs.get("cleanup.policy", "delete")
            insync = f"\tmin.insync.replicas={configs['min.insync.replicas']}" if "min.insync.replicas" in configs else ""
            print(f"{spec.name}\tpartitions={spec.num_partitions}\treplication={spec.replication_factor}\t{cleanup}{insync}")
        return 0
    try:
        created = asyncio.run(ensure_topics(settings.kafka, settings.topics))
    except StreamError as exc:
        raise UserError(str(exc)) from None
    print("created: " + (", ".join(created) if created else "none (all exist)"))
    return 0
