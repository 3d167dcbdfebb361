"""Bad input to a sweep is refused before anything changes, naming the rule.

The map itself is validated when it loads (a period of zero or less, an age column or field the
map does not declare: ``retention[<rule>]...``); here the run's own input (``rules``, ``as_of``)
and the live databases (a table or column the map names that the database does not have).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from governance.datamap.model import DataMap, PrefixRef, TableRef
from governance.datamap.taxonomy import suggest


class RetentionInputError(ValueError):
    """The sweep's input or the map's rules do not fit the systems; nothing was changed."""


def check_run_input(datamap: DataMap, *, as_of: datetime, now: datetime, rules: Sequence[str] | None) -> list[str]:
    """The rules to run (all when ``rules`` is empty); raises RetentionInputError naming the
    unknown rule, or an ``as_of`` in the future."""
    names = [r.name for r in datamap.retention]
    problems = [f"rules: unknown retention rule {name!r}" + suggest(name, names) for name in rules or [] if name not in names]
    if as_of.tzinfo is None:
        problems.append(f"as_of {as_of.isoformat()} has no time zone: give one (e.g. +00:00)")
    elif as_of > now:
        chosen = ", ".join(rules or names)
        problems.append(f"as_of {as_of.isoformat()} is in the future (now {now.isoformat()}): refusing rules {chosen}")
    if problems:
        raise RetentionInputError("; ".join(problems) + f" (data map {datamap.source}); nothing was changed")
    return list(rules) if rules else names


def _columns_needed(datamap: DataMap, rule_name: str) -> tuple[TableRef, list[str]] | None:
    rule = next(r for r in datamap.retention if r.name == rule_name)
    if rule.action == "ttl":  # a DynamoDB table: no columns to check in a database
        return None
    if rule.table is not None:
        columns = [c for c in [rule.age_column, *rule.fields, *(c.column for c in rule.conditions)] if c]
        if rule.generalise is not None:
            columns.append(rule.generalise.field)
        ref = TableRef(rule.system, rule.table)
        return ref, [datamap.table(ref).primary_key, *columns]
    prefix = datamap.prefix(PrefixRef(rule.system, rule.prefix or ""))
    tie = datamap.tie_table(prefix)
    if tie is None or prefix.tied_to is None:
        return None
    columns = [c for c in [rule.age_column, prefix.tied_to.key_column] if c]
    columns += [prefix.tied_to.column_for(p) for p in prefix.placeholders]
    return tie, [datamap.table(tie).primary_key, *columns]


def check_live_columns(datamap: DataMap, rules: Sequence[str], connect: Callable[[str], psycopg.Connection[Any]]) -> None:
    """Every table and column the chosen rules use exists in its database; RetentionInputError
    naming each rule that does not fit otherwise."""
    needed: dict[str, list[tuple[str, TableRef, list[str]]]] = {}
    for name in rules:
        found = _columns_needed(datamap, name)
        if found is not None:
            ref, columns = found
            needed.setdefault(ref.system, []).append((name, ref, columns))
    problems: list[str] = []
    for system, items in needed.items():
        schema = datamap.postgres_system(system).db_schema
        with connect(system) as conn:
            rows = conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s", (schema,)
            ).fetchall()
        present: dict[str, set[str]] = {}
        for table, column in rows:
            present.setdefault(table, set()).add(column)
        for name, ref, columns in items:
            if ref.table not in present:
                problems.append(f"retention[{name}]: table {schema}.{ref.table} does not exist in {system}")
                continue
            missing = [c for c in dict.fromkeys(columns) if c not in present[ref.table]]
            if missing:
                problems.append(f"retention[{name}]: {schema}.{ref.table} has no column {', '.join(missing)} in {system}")
    if problems:
        raise RetentionInputError("; ".join(problems) + f" (data map {datamap.source}); nothing was changed")
