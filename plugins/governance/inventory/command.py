"""``python -m governance validate-subprocessors [PATH]``: check the subprocessor file against the
data map and the reference data and print every problem placed (``FILE: PATH: MESSAGE (line N)``),
exit 1 when any; no traceback. Connections named by ``connection:`` channels are looked up as tasks
would (``--skip-connections`` where Airflow's connections are not reachable, e.g. in CI).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from governance.datamap import load_datamap
from governance.datamap.model import DataMapError
from governance.inventory.loader import load_reference, load_subprocessors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, default=None, help="default include/subprocessors.yaml")
    parser.add_argument("--datamap", type=Path, default=None, help="default GOVERNANCE_DATAMAP or include/datamap.yaml")
    parser.add_argument("--reference", type=Path, default=None, help="default include/reference")
    parser.add_argument("--skip-connections", action="store_true", help="do not look up connection: channels")


def run(args: argparse.Namespace) -> int:
    try:
        datamap = load_datamap(args.datamap)
        reference = load_reference(args.reference)
        declared = load_subprocessors(
            args.path, datamap=datamap, reference=reference,
            connection_exists=(lambda _conn_id: True) if args.skip_connections else None,
        )  # fmt: skip
    except DataMapError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s)", file=sys.stderr)
        return 1
    print(f"{declared.source}: valid (version {declared.version}, {len(declared.subprocessors)} subprocessors)")
    return 0
