"""``riskmon console [--host 127.0.0.1] [--port N]``: the read-only web console over the live state.

It reads the compacted topics and the alerts from Kafka and the features from Redis, with
the same ``RISKMON_...`` settings as the worker. It binds to loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.cli import UserError, load_settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("console", help="web console: portfolio, credit lines, enterprises, live alerts")
    parser.add_argument("--host", help="address to bind (default: RISKMON_CONSOLE__HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: RISKMON_CONSOLE__PORT or 8088; 0: any free port)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streams.console.server import is_loopback, serve

    settings = load_settings()
    host = args.host or settings.console.host
    port = settings.console.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (got {port})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(host):
        logging.getLogger("riskmon.console").warning(
            "binding to %s: the console has no login; anyone who reaches this address can read the portfolio", host)

    def ready(url: str) -> None:
        print(f"riskmon console on {url}", flush=True)

    try:
        asyncio.run(serve(settings, host=host, port=port, on_ready=ready))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
