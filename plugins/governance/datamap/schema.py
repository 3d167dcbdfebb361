"""The data map's JSON Schema, generated from its pydantic model, for editors.

``include/datamap.schema.json`` is what YAML editors use for completion and inline errors (the data
map's first line names it for the YAML language server). The model stays the authority: the schema
cannot express every rule the loader checks (references resolving, erasure order, retention
periods), so ``validate-datamap`` is still the check that counts. A test keeps the shipped file
equal to what the model generates; after changing the model, regenerate it:

    python -m governance datamap-schema --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from governance.config import INCLUDE_DIR
from governance.datamap.model import DataMap

SCHEMA_PATH = INCLUDE_DIR / "datamap.schema.json"
SCHEMA_ID = "https://aircalls.ai/schemas/governance/datamap.schema.json"


def datamap_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a data map file, as the model validates it."""
    schema = DataMap.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "aircalls governance data map",
    }


def render_schema() -> str:
    """The schema as the shipped file holds it (stable key order, trailing newline)."""
    return json.dumps(datamap_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_PATH.name} (default: print it)")
    group.add_argument("--check", action="store_true", help="exit 1 when the shipped file is not what the model generates")
    parser.add_argument("--path", type=Path, default=SCHEMA_PATH, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    text = render_schema()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(f"{args.path}: out of date: run `python -m governance datamap-schema --write`", file=sys.stderr)
            return 1
        print(f"{args.path}: up to date")
        return 0
    if args.write:
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    sys.stdout.write(text)
    return 0
