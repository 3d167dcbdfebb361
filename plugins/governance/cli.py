"""``python -m governance``: the project's command line.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``--help`` stays fast. Identities are never
taken from the command line (it lands in shell history and process listings): commands that need
one read it from standard input.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("governance.migrations", "create or upgrade the governance schema (idempotent)"),
    "grants": ("governance.grants", "print or apply (--apply) the database roles' grants the data map implies (idempotent)"),
    "request": ("governance.privacy_requests", "record a privacy request (identities from stdin), verify, reopen or show one"),
    "serve": ("governance.serve", "serve one recorded request locally end to end (dag.test), stopping at a pending human step"),
    "keys": ("governance.crypto", "generate key material for the keyed-hash and encryption connections"),
    "validate-datamap": ("governance.datamap.command", "validate the data map and print what is wrong"),
    "validate-subprocessors": ("governance.inventory.command", "validate include/subprocessors.yaml against the data map and the reference data"),
    "inventory-reference": ("governance.inventory.reference_command", "list the transfer reference data (--stale: entries last checked over a year ago)"),
    "datamap-schema": ("governance.datamap.schema", "print or write the data map's JSON Schema (generated from its model, for editors)"),
    "decrypt-bundle": ("governance.export.decrypt_command", "decrypt an export bundle (age, passphrase from stdin)"),
    "export-passphrase": ("governance.export.passphrase_command", "print an export bundle's passphrase for staff to send"),
    "export-link": ("governance.export.link_command", "issue a new download link for a completed export's bundle (written to result_uri)"),
    "reapply-suppressions": ("governance.erasure.reapply", "erase suppressed people again after a restore (only data from before their erasure)"),
    "scrub-run-confs": ("governance.run_confs", "remove identities typed into trigger forms from ended runs' configurations and the action log"),
    "maintain": ("governance.maintenance", "beside the scheduler: scrub ended runs' identities, reconcile and anchor the audit ledger (loops; --once)"),
    "verify-ledger": ("governance.ledger", "verify the audit ledger's hash chain and its anchors in the object store"),
}

# Development commands that moved to the development package (devtools/, ``python -m governance_dev``),
# which the Airflow image does not contain. They are not forwarded: the runtime never runs
# development code, so one name always means one thing; the error names the new command.
DEVELOPMENT_COMMANDS = ("demo", "seed", "services", "airflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m governance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DEVELOPMENT_COMMANDS:
        print(
            f"python -m governance: {argv[0]!r} is a development command; run "
            f"`python -m governance_dev {shlex.join(argv)}` (or its make target). The development package "
            "is installed by `make venv` (pip install -e devtools) and is not part of the Airflow image.",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m governance {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args))
