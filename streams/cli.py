"""The ``riskmon`` console script.

Each subcommand lives in its own module under :mod:`streams.commands` and exposes
``register(subparsers)``, which adds a parser whose ``func(args) -> int`` runs it.
Errors a user can fix (:class:`UserError`) print one line and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import streams.commands

if TYPE_CHECKING:
    from streams.settings import Settings


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""


def load_settings() -> Settings:
    """The settings tree from ``RISKMON_...`` variables; an invalid one is a one-line UserError."""
    from pydantic import ValidationError

    from streams.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"invalid RISKMON_ settings: {first['loc']}: {first['msg']}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskmon", description="Streaming credit-risk monitor for SME lending.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(streams.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"streams.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"riskmon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the canonical ``streams.cli`` module, not this ``__main__`` copy: the subcommands raise
    # ``streams.cli.UserError``, which a second copy of this module would not catch.
    from streams.cli import main as canonical_main

    sys.exit(canonical_main())
