"""The key tables of heavy subjects: created before a plan stores keys, emptied of a plan's keys
once its run is over.

A plan stores the keys of a heavy leaf table (a business user's million usage events) in that
table's own database (:class:`~governance.datamap.plans.KeyTable`, schema ``governance_erasure``):
tasks are separate processes, so the keys must outlive the planning task's transaction, and the
executor joins to them in the same database as the rows. They are regular ``UNLOGGED`` tables
(no WAL for a throw-away copy of keys; after a crash they are empty and the executor refuses the
plan, which is then made again), created once per table shape by :func:`ensure_key_tables`.

Clean-up: :func:`forget_plan_keys` removes the keys of plans no run can act on any more (made,
refused, superseded, executed or verified: everything but ``approved``/``executing``, which a
later run continues); ``close_erasure_request`` calls it for the request's plans, after the
certificate, which records counts only. Keys of a plan a run continues stay until the run that
finishes it closes. What no close reached (a run killed before its close, a close whose clean-up
failed, a plan whose approval never came) the maintenance pass removes
(:func:`governance.maintenance.forget_unused_erasure_keys`, from :func:`stored_plan_ids`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql

from governance.connections import ConnectionNotConfigured
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import KEY_PLAN_COLUMN, KEY_TABLES_SCHEMA, KeyTable

log = logging.getLogger(__name__)

_DDL_LOCK = 0x6B65797374  # one creator of key tables at a time per database ("keyst")


class KeyTablesMissing(RuntimeError):
    """A key table the plan needs is missing and the connecting role may not create it."""


def ensure_key_tables(datamap: DataMap, tables: Mapping[TableRef, KeyTable], conninfo_for: Callable[[str], str]) -> None:
    """Create the key tables ``tables`` names where they are missing (own short transactions,
    before the planning snapshot is opened). Under least privilege they exist already (the
    migration role's ``grants --apply`` creates them); a task role that finds one missing gets
    :class:`KeyTablesMissing` naming the command, before anything is read or written."""
    by_system: dict[str, list[KeyTable]] = {}
    for ref, kt in tables.items():
        by_system.setdefault(ref.system, []).append(kt)
    for system_name, kts in by_system.items():
        system = datamap.postgres_system(system_name)
        with psycopg.connect(conninfo_for(system.connection_id), application_name="governance-erasure-keys") as conn:
            missing = [kt for kt in kts if conn.execute("SELECT to_regclass(%s)", (kt.name.as_string(None),)).fetchone() == (None,)]
            if not missing:
                continue  # the usual case: `grants --apply` created them (the task role runs no DDL)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            try:
                for kt in missing:
                    for statement in kt.create():
                        conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                names = ", ".join(kt.name.as_string(None) for kt in missing)
                raise KeyTablesMissing(
                    f"the erasure's key table(s) {names} do not exist in system {system_name!r} and this role may not "
                    "create them: run `python -m governance grants --apply` as the migration role (it creates them "
                    "and grants the task role their rows)"
                ) from exc


def _key_tables(datamap: DataMap, conninfo_for: Callable[[str], str], application_name: str,
                unconfigured: list[str] | None = None) -> Iterator[tuple[psycopg.Connection[Any], sql.Identifier]]:  # fmt: skip
    """Each key table of each database of the map (a database shared by systems once), with an
    open connection to its database (committed when its tables are done). With ``unconfigured``
    (a list), a system whose connection is not configured here is added to it and skipped (no
    erasure run with this configuration can have stored keys there); otherwise it raises."""
    seen: set[str] = set()
    for system in datamap.postgres_systems:
        try:
            conninfo = conninfo_for(system.connection_id)
        except ConnectionNotConfigured:
            if unconfigured is None:
                raise
            unconfigured.append(system.name)
            continue
        if conninfo in seen:
            continue
        seen.add(conninfo)
        with psycopg.connect(conninfo, application_name=application_name) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1", (KEY_TABLES_SCHEMA,)).fetchall()]  # fmt: skip
            for name in names:
                yield conn, sql.Identifier(KEY_TABLES_SCHEMA, name)


def forget_plan_keys(datamap: DataMap, plan_ids: Iterable[str], conninfo_for: Callable[[str], str],
                     unconfigured: list[str] | None = None) -> int:  # fmt: skip
    """Remove the stored keys of ``plan_ids`` from every key table of every database of the map;
    return how many were removed (``unconfigured``: as for :func:`stored_plan_ids`)."""
    plans = sorted(set(plan_ids))
    if not plans:
        return 0
    removed = 0
    for conn, table in _key_tables(datamap, conninfo_for, "governance-erasure-keys", unconfigured):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(table, sql.Identifier(KEY_PLAN_COLUMN)), (plans,)
        )
        removed += max(0, cur.rowcount)
    return removed


def stored_plan_ids(datamap: DataMap, conninfo_for: Callable[[str], str], unconfigured: list[str] | None = None) -> set[str]:
    """The plans that have keys in a key table of any database of the map. Each table is read by a
    loose scan of its (plan, key) index, one index probe per plan: cheap however many keys a heavy
    subject's plan stored. With ``unconfigured`` (a list), systems whose connection is not
    configured here are named in it and skipped instead of raising."""
    plan = sql.Identifier(KEY_PLAN_COLUMN)
    found: set[str] = set()
    for conn, table in _key_tables(datamap, conninfo_for, "governance-erasure-keys", unconfigured):
        rows = conn.execute(sql.SQL(
            "WITH RECURSIVE plans(p) AS ((SELECT {plan} FROM {t} ORDER BY 1 LIMIT 1) UNION ALL"
            " SELECT (SELECT {plan} FROM {t} WHERE {plan} > plans.p ORDER BY 1 LIMIT 1) FROM plans"
            " WHERE plans.p IS NOT NULL) SELECT p FROM plans WHERE p IS NOT NULL").format(plan=plan, t=table)).fetchall()  # fmt: skip
        found |= {r[0] for r in rows}
    return found


def stored_key_count(datamap: DataMap, conninfo_for: Callable[[str], str], plan_id: str) -> int:
    """Keys stored for ``plan_id`` in every database of the map (0 once forgotten)."""
    total = 0
    for conn, table in _key_tables(datamap, conninfo_for, "governance-erasure-keys"):
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(table, sql.Identifier(KEY_PLAN_COLUMN)), (plan_id,)
        ).fetchone()
        total += int(row[0]) if row else 0
    return total
