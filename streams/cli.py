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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def add_bundle_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """``--public-key`` and ``--accept-unsigned-bundle``, for every command that loads a bundle."""
    parser.add_argument("--public-key", type=Path, default=None,
                        help="trusted Ed25519 public key of the bundle's signer (default: RISKMON_BUNDLE_PUBLIC_KEY, "
                             "var/keys/bundle-signing.pub)")
    parser.add_argument("--accept-unsigned-bundle", action="store_true",
                        help="load a bundle that has no signature (development only; RISKMON_ACCEPT_UNSIGNED_BUNDLES=true)")


def load_trusted_bundle(args: argparse.Namespace) -> Any:
    """``load_bundle(args.bundle)`` with the signature policy of the flags and settings.

    Raises :class:`models.errors.ModelError` (callers turn it into their one-line error).
    """
    from models.bundle import load_bundle

    settings = load_settings()
    return load_bundle(args.bundle, public_key=args.public_key or settings.bundle_public_key,
                       accept_unsigned=bool(args.accept_unsigned_bundle or settings.accept_unsigned_bundles))


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
