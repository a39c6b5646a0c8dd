"""``riskmon schema``: the JSON Schema of the wire events, for producers and subscribers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streams.events import WIRE_SCHEMAS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("schema", help="print or write the JSON Schema of the wire events")
    parser.add_argument("name", nargs="?", choices=sorted(WIRE_SCHEMAS), help="one event (default: all)")
    parser.add_argument("--out", type=Path, help="write one <Name>.schema.json per event into this folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else sorted(WIRE_SCHEMAS)
    schemas = {name: WIRE_SCHEMAS[name].model_json_schema() for name in names}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (args.out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        return 0
    print(json.dumps(schemas if len(names) > 1 else schemas[names[0]], indent=2, ensure_ascii=False))
    return 0
