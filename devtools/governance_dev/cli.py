"""``python -m governance_dev``: the development commands (demo, seed, embedded services, Airflow UI).

Same shape as ``python -m governance`` (:mod:`governance.cli`): each sub-command lives in its own
module exposing ``add_arguments(parser)`` and ``run(args) -> int``, imported only when its command
runs. The runtime commands (migrate, request, maintain, ...) stay in ``python -m governance``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("governance_dev.demo", "run every DAG once on the reference deployment and summarise (make demo)"),
    "seed": ("governance_dev.seed.command", "load the reference deployment (app schema, objects, processors)"),
    "services": ("governance_dev.services", "start, stop or inspect the embedded services (PostgreSQL, S3, processors)"),
    "airflow": ("governance_dev.standalone", "run the Airflow UI (airflow standalone) on the embedded services (make airflow)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m governance_dev", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m governance_dev {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args))
