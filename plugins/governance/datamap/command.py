"""``python -m governance validate-datamap [PATH]``: check the data map, say what is wrong.

Exit status: 0 valid (one ``OK: ...`` summary line), 1 invalid (every issue, one per line, as
``FILE: PATH: MESSAGE``), 2 the file cannot be read. ``--explain`` also prints the erasure order
and the retention schedule computed from the map, which is what a reviewer of a map change wants
to see; ``--explain --sql`` every statement the workflows run (placeholders, never values).

``--live`` also compares the map with the systems it names (the databases' catalogues, the
buckets; connections as the workflows read them, e.g. after ``source .state/airflow.env``) with
the code the ``datamap_drift`` DAG runs, and prints each finding placed in the file read
(``FILE: PATH: blocking|warning: MESSAGE (line N)``); exit 1 when a finding is blocking (a
personal-looking column or prefix the map misses, a mapped table, column or bucket that is gone),
3 when a system cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.datamap import graph
from governance.datamap.loader import load_datamap
from governance.datamap.model import (
    DataMapError,
    DataMapUnreadable,
    Reference,
    ReferenceKind,
    TableRef,
    TableSpec,
)
from governance.datamap.plans import (
    build_erasure_plan,
    build_resolution_plan,
    build_retention_plan,
    cascade_of,
)
from governance.workflows.datamap_drift import classify, database_drift, object_store_drift

if TYPE_CHECKING:
    from governance.datamap.model import DataMap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", nargs="?", type=Path, default=None,
        help="data map to check (default: GOVERNANCE_DATAMAP or include/datamap.yaml)",
    )
    parser.add_argument("--explain", action="store_true", help="also print the erasure order and retention rules")
    parser.add_argument(
        "--live", action="store_true",
        help="also compare the map with the live systems it names (as the datamap_drift DAG does); "
        "exit 1 on a blocking finding",
    )
    parser.add_argument(
        "--sql", action="store_true",
        help="with --explain: also print every statement resolution, export, erasure and retention run "
        "(placeholders only; values are bound at run time)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        datamap = load_datamap(args.path)
    except DataMapUnreadable as exc:
        print(exc, file=sys.stderr)
        return 2
    except DataMapError as exc:
        print(exc)
        print(f"data map is invalid: {len(exc.issues)} issue(s)", file=sys.stderr)
        return 1
    counts = datamap.counts()
    print(
        f"OK: {counts['systems']} systems, {counts['tables']} tables, {counts['fields']} fields, "
        f"{counts['processors']} processors (version {datamap.version}, sha256 {datamap.version_hash})"
    )
    if getattr(args, "explain", False):
        _explain(datamap)
        if getattr(args, "sql", False):
            _print_statements(datamap)
    if getattr(args, "live", False):
        return _check_live(datamap)
    return 0


def _check_live(datamap: DataMap) -> int:
    """Drift findings against the live systems, placed in the map's file; 1 when any is blocking."""

    try:
        database = database_drift(datamap)
        objects = object_store_drift(datamap)
    except Exception as exc:  # a connection missing or a system down: say which, not a traceback
        print(f"{datamap.source}: cannot check the live systems: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    blocking, warnings = classify(database, objects)
    for finding in blocking + warnings:
        print(finding.placed(datamap))
    checked = ", ".join([*database.get("checked_systems", []), *objects.get("checked_systems", [])]) or "none"
    if blocking:
        print(f"{datamap.source}: {len(blocking)} blocking finding(s), {len(warnings)} warning(s) against the live "
              f"systems ({checked})", file=sys.stderr)  # fmt: skip
        return 1
    print(f"live: {checked} match the map ({len(warnings)} warning(s))")
    return 0


def _explain(datamap: DataMap) -> None:
    print("erasure order (children before parents):")
    for position, ref in enumerate(graph.erasure_order(datamap), start=1):
        table = datamap.table(ref)
        exception = datamap.legal_exception_for(ref)
        fate = (
            f"kept under {exception.name} ({exception.period.iso} after {exception.age_column}), minimised"
            if exception
            else ("rows deleted" if table.deletes_rows_on_erasure else "rows rewritten")
        )
        objects = ", ".join(p.prefix for p in datamap.prefixes_tied_to(ref))
        print(f"  {position:2}. {ref}: {fate}" + (f"; objects: {objects}" if objects else ""))
        for line in _mention_lines(table):
            print(f"      {line}")
    print("retention (a table's rules run generalise, null_fields, delete_objects, delete_rows):")
    for rule in datamap.retention:
        target = rule.table or rule.prefix
        age = f" after {rule.age_column}" if rule.age_column else " after last modification"
        print(f"  {rule.name}: {rule.action} {rule.system}.{target} {rule.period.iso}{age}")
        if rule.action == "delete_rows" and rule.table is not None:
            for line in _cascade_lines(datamap, TableRef(rule.system, rule.table)):
                print(f"      {line}")


def _orphan_words(reference: Reference) -> str:
    if reference.orphan_deletes_row:
        return "deleted"
    if reference.orphan_clears:
        return f"kept with {', '.join(reference.orphan_clears)} cleared"
    return "kept as they are"


def _mention_lines(table: TableSpec) -> list[str]:
    """Per mention: the reference cleared, and what becomes of mention-only rows (no owner set)."""
    owners = [r.field for r in table.references if r.kind is ReferenceKind.ownership]
    lines = []
    for reference in table.references:
        if reference.kind is not ReferenceKind.mention:
            continue
        only = f"no {' or '.join(owners)}" if owners else "every row"
        lines.append(
            f"mention {reference.field} -> {reference.to.table}: cleared; mention-only rows ({only}): "
            f"{_orphan_words(reference)}, {'in' if reference.exports_orphans else 'not in'} the person's export"
        )
    return lines


def _cascade_lines(datamap: DataMap, ref: TableRef) -> list[str]:
    """What a delete_rows rule on ``ref`` also deletes and clears (the retention cascade)."""

    owned, mentions = cascade_of(datamap, ref)
    lines = []
    for edge, depth in owned:
        objects = ", ".join(p.prefix for p in datamap.prefixes_tied_to(edge.child))
        lines.append(
            f"{'  ' * (depth - 1)}also deletes {edge.child} (owned through {edge.field})"
            + (f" with objects {objects} (every version)" if objects else "")
        )
    objects = ", ".join(p.prefix for p in datamap.prefixes_tied_to(ref))
    if objects:
        lines.insert(0, f"deletes objects {objects} (every version) before the rows")
    for e in mentions:
        reference = next(r for r in datamap.table(e.child).references if r.field == e.field)
        orphan = "" if reference.orphan == "keep" else f"; mention-only rows {_orphan_words(reference)}"
        lines.append(f"clears {e.child}.{e.field} (mention){orphan}")
    lines.append("keeps a row whose owned rows are under a legal hold or exception (counted as held)" if owned else "")
    return [line for line in lines if line]


def _print_statements(datamap: DataMap) -> None:
    """The statements the workflows execute, exactly as built by :mod:`governance.datamap.plans`."""

    def show(statement: Any) -> None:
        needs = ", ".join(statement.input_params) or "none"
        print(f"  -- {statement.purpose} {statement.table} (run-time values: {needs})")
        print(f"  {statement.text};")

    resolution = build_resolution_plan(datamap, datamap.identity_kinds)
    print(f"resolution and export statements (by {', '.join(resolution.identity_kinds)}):")
    for statement in resolution.statements:
        show(statement)
    print("erasure statements (children before parents; keyed by the resolved primary keys):")
    for erasure in build_erasure_plan(datamap, resolution).statements:
        show(erasure.statement)
    print("retention statements:")
    for statement in build_retention_plan(datamap).all_statements:
        show(statement)
