#!/usr/bin/env python3
"""What locking Kafka down costs: produce and consume throughput, SASL/SCRAM over TLS vs plain text, same run.

The locked-down broker is the one the project's settings point at (``scripts/services up``, the
default). This script starts a second, plain-text instance of the same Kafka on other ports
(``RISKMON_SERVICES_SECURITY=plaintext scripts/services up`` with its own state dir), then, for
``--rounds`` rounds, alternates between the two: create a 4-partition topic, produce the same
``--limit`` real invoices (``benchlib.produce``, acks=1, no compression), read them back with a plain
aiokafka consumer (``benchlib.consume_baseline``, getmany, no decoding), delete the topic. Both
brokers run on this machine at the same time with the same heap, so the load is shared; alternating
rounds spreads the load drift over both. It reports messages per second of each phase, the median
per mode and the ratio locked / plain. The plain-text instance is stopped at the end.

What this does not measure: the worker's end-to-end rate (its cost per invoice is dominated by
validation, the Redis fold and scoring, see docs/streaming.md), Redis AUTH (one command per
connection), connection set-up (TLS handshake and SCRAM login happen once per client).

    .venv/bin/python scripts/bench_security.py --limit 200000 --rounds 3 --out artifacts/bench_security.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import benchlib  # noqa: E402


@contextmanager
def plaintext_clients() -> Iterator[None]:
    """The project's client settings without the credentials file's Kafka section (plain text)."""
    saved = os.environ.get("RISKMON_KAFKA__SECURITY_PROTOCOL")
    os.environ["RISKMON_KAFKA__SECURITY_PROTOCOL"] = "PLAINTEXT"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RISKMON_KAFKA__SECURITY_PROTOCOL", None)
        else:
            os.environ["RISKMON_KAFKA__SECURITY_PROTOCOL"] = saved


def services(command: str, env: dict[str, str]) -> None:
    result = subprocess.run([str(REPO / "scripts" / "services"), command], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"scripts/services {command} (plain-text instance) failed: {result.stderr.strip()}")


async def one_round(bootstrap: str, records: list[tuple[bytes, bytes]]) -> dict[str, float]:
    topic = benchlib.fresh_topic_name("bench-security")
    await benchlib.create_topic(bootstrap, topic, 4)
    try:
        produced = await benchlib.produce(bootstrap, topic, records, acks=1)
        consumed = await benchlib.consume_baseline(bootstrap, topic, len(records))
    finally:
        await benchlib.delete_topic(bootstrap, topic)
    return {"produce_msgs_per_s": produced.msgs_per_s, "consume_msgs_per_s": consumed.msgs_per_s,
            "produce_s": produced.seconds, "consume_s": consumed.seconds}


def main(argv: list[str] | None = None) -> int:
    from streams.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200_000, help="invoices per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plain-port", type=int, default=None, help="plain-text broker port (default: locked port + 2)")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench_security.json")
    args = parser.parse_args(argv)

    locked = Settings().kafka
    if locked.security_protocol != "SASL_SSL":
        raise SystemExit("the project's Kafka settings are not SASL_SSL: start the services locked down first "
                         "(scripts/services up)")
    locked_port = int(locked.bootstrap.rpartition(":")[2])
    plain_port = args.plain_port or locked_port + 2
    plain_bootstrap = f"127.0.0.1:{plain_port}"
    plain_env = {"RISKMON_SERVICES_SECURITY": "plaintext", "RISKMON_VAR": str(REPO / "var" / "bench-plain-services"),
                 "RISKMON_KAFKA_PORT": str(plain_port), "RISKMON_KAFKA_CONTROLLER_PORT": str(plain_port + 1),
                 "RISKMON_REDIS_PORT": str(plain_port + 10000 if plain_port + 10000 < 65536 else plain_port - 1000)}
    records = benchlib.load_invoice_records(limit=args.limit)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    services("up", plain_env)
    try:
        for r in range(args.rounds):
            for mode in ("plain", "locked"):
                if mode == "plain":
                    with plaintext_clients():
                        row = asyncio.run(one_round(plain_bootstrap, records))
                else:
                    row = asyncio.run(one_round(locked.bootstrap, records))
                row |= {"round": r, "mode": mode, "load_average": os.getloadavg()[0]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        services("down", plain_env)

    def median(mode: str, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["mode"] == mode)

    summary = {key: {"plain": median("plain", key), "locked": median("locked", key),
                     "ratio_locked_over_plain": round(median("locked", key) / median("plain", key), 3)}
               for key in ("produce_msgs_per_s", "consume_msgs_per_s")}
    result = {"invoices_per_round": len(records), "rounds": args.rounds, "rows": rows, "summary": summary,
              "wall_s": round(time.time() - t0, 1),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_end": os.getloadavg()},
              "method": "same run, alternating rounds; acks=1, no compression, 4 partitions, getmany without decoding"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
