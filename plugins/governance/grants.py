"""Least privilege for the database roles, derived from the data map.

Three roles (names configurable, ``governance.config``):

* the **migration role** owns the governance schema and is the only one that changes it
  (``python -m governance migrate``, run by the init service; it applies these grants too);
* the **task role** is what every task logs in as: ``SELECT`` on the mapped columns of mapped
  tables (export, resolution, verification), ``UPDATE`` of mapped columns and ``DELETE`` on mapped
  tables (erasure, retention), the governance tables the workflows keep their state in, and
  membership in the ledger writer. It owns nothing, so it can neither run DDL nor alter or disable
  the audit ledger's triggers, and it cannot read a table the map does not name;
* the **ledger writer** may only ``SELECT`` (the chain's head) and ``INSERT`` into the audit ledger.

:func:`plan_grants` is pure: the same statements are printed (``--sql``) and applied (``--apply``).
Applying is idempotent and exact: each schema's table privileges of the task role and the ledger
writer are revoked and granted again in one transaction, so a table removed from the map loses its
grants and one added to the map gains them (nobody sees the state in between).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from governance.config import (
    GOVERNANCE_CONN_ID,
    GOVERNANCE_SCHEMA,
    INSIGHTS_SCHEMA,
    ledger_writer_role,
    migration_role,
    task_role,
)
from governance.datamap import load_datamap
from governance.datamap.model import DataMap
from governance.datamap.plans import KEY_TABLES_SCHEMA, provisioned_key_tables
from governance.db import conninfo_for
from governance.migrations import MigrationError, assume_migration_role, discover, migration_conninfo

AUDIT_LEDGER = "audit_ledger"
# What the task role may do in the governance schema, per table; any other table (a later
# migration's) gets DEFAULT_GOVERNANCE_PRIVILEGES. The ledger is reached only through the ledger
# writer; request_actions is append-only (a trigger refuses UPDATE and DELETE as well).
GOVERNANCE_TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "schema_migrations": ("SELECT",),  # ensure_schema checks the version, never writes it
    AUDIT_LEDGER: (),
    "request_actions": ("SELECT", "INSERT"),
    # The request lifecycle (migration 0014): its table of transitions is read only, the
    # transitions kept are append-only (the lifecycle trigger inserts as the task role).
    "request_status_transitions": ("SELECT",),
    "request_transitions": ("SELECT", "INSERT"),
}
DEFAULT_GOVERNANCE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
LEDGER_WRITER_PRIVILEGES = ("SELECT", "INSERT")
_CREATE_TABLE_RE = re.compile(
    r"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?governance\.(\w+)", re.IGNORECASE
)
# The published insights (aggregate_anonymisation): tasks read and add releases, never change one.
INSIGHTS_PRIVILEGES = ("SELECT", "INSERT")
_CREATE_INSIGHTS_TABLE_RE = re.compile(
    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?insights\.(\w+)", re.IGNORECASE
)


class GrantError(RuntimeError):
    """The grants cannot be applied as asked (the message says what to do)."""


@dataclass(frozen=True)
class DatabaseRoles:
    """The role names grants are written for."""

    task: str
    ledger_writer: str
    migration: str | None = None

    @classmethod
    def configured(
        cls, *, task: str | None = None, ledger_writer: str | None = None, migration: str | None = None
    ) -> DatabaseRoles:
        """Explicit names win; otherwise the environment's (``governance.config``)."""
        roles = cls(task or task_role(), ledger_writer or ledger_writer_role(), migration or migration_role())
        if roles.task == roles.ledger_writer or roles.task == roles.migration:
            raise GrantError(
                f"the task role {roles.task!r} must be a role of its own, not the ledger writer or migration role"
            )
        return roles


@dataclass(frozen=True)
class GrantSection:
    """The statements for one schema, applied in one transaction through ``conn_id``'s database."""

    title: str
    conn_id: str
    schema: str
    statements: tuple[sql.Composed, ...]
    tables: tuple[str, ...] = field(default=())
    # (member, role): role memberships, granted only where missing (granting one needs ADMIN OPTION).
    memberships: tuple[tuple[str, str], ...] = field(default=())
    # (table, privilege) the task role must hold afterwards (checked after applying: a GRANT by a
    # role without GRANT OPTION is only a warning in PostgreSQL).
    expected: tuple[tuple[str, str], ...] = field(default=())

    def membership_statements(self) -> list[sql.Composed]:
        return [
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member))
            for member, role in self.memberships
        ]

    def as_sql(self) -> str:
        body = "\n".join(f"{s.as_string(None)};" for s in [*self.statements, *self.membership_statements()])
        return f"-- {self.title} (connection {self.conn_id})\nBEGIN;\n{body}\nCOMMIT;\n"


def governance_tables_from_migrations(directory: Path | None = None) -> list[str]:
    """Tables the governance migrations create, in order (``schema_migrations`` first)."""

    tables = ["schema_migrations"]
    for migration in discover(*([directory] if directory else [])):
        for name in _CREATE_TABLE_RE.findall(migration.sql):
            if name not in tables:
                tables.append(name)
    return tables


def insights_tables_from_migrations(directory: Path | None = None) -> list[str]:
    """Tables the governance migrations create in the ``insights`` schema, in order."""

    tables: list[str] = []
    for migration in discover(*([directory] if directory else [])):
        tables += [t for t in _CREATE_INSIGHTS_TABLE_RE.findall(migration.sql) if t not in tables]
    return tables


def _privileges(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL(p) for p in names)


def _columns(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


# The retention sweep's batches find each expired row again by where it is (``ctid``) and in
# which relation (``tableoid``, a partition), in the statement that scanned it: under column
# privileges PostgreSQL checks system columns too, so a swept table grants them (they locate a
# row, they hold nothing of anyone).
ROW_LOCATOR_COLUMNS = ("ctid", "tableoid")


def retention_swept_tables(datamap: DataMap, system_name: str) -> set[str]:
    """The tables of ``system_name`` a retention rule sweeps row by row."""
    return {r.table for r in datamap.retention if r.system == system_name and r.table is not None}


def system_section(system_name: str, datamap: DataMap, roles: DatabaseRoles) -> GrantSection:
    """The task role's grants on one postgres system of the map: every mapped table, its mapped
    columns only."""
    system = datamap.postgres_system(system_name)
    schema, task = system.db_schema, sql.Identifier(roles.task)
    statements = [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(sql.Identifier(schema), task),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), task),
    ]
    swept = retention_swept_tables(datamap, system.name)
    for table in system.tables:
        target = sql.Identifier(schema, table.name)
        readable = [*table.field_names, *(ROW_LOCATOR_COLUMNS if table.name in swept else ())]
        statements.append(sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(_columns(readable), target, task))
        # Erasure and retention rewrite mapped columns (null, mask, keyed hash, generalise, clear a
        # mention); nothing rewrites a primary key.
        writable = [f for f in table.field_names if f != table.primary_key]
        if writable:
            statements.append(
                sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(_columns(writable), target, task)
            )
        statements.append(sql.SQL("GRANT DELETE ON {} TO {}").format(target, task))
    return GrantSection(
        f"system {system.name}: schema {schema}, {len(system.tables)} mapped table(s)",
        system.connection_id,
        schema,
        tuple(statements),
        tuple(t.name for t in system.tables),
        expected=tuple((t.name, "DELETE") for t in system.tables),
    )


# Migration 0016: the sweep drops wholly expired partitions through this function (README, "Retention").
RETENTION_PARTITION_FUNCTION = "governance.drop_expired_partition(regclass, regclass, timestamptz, boolean)"


def governance_section(tables: Sequence[str], roles: DatabaseRoles) -> GrantSection:
    """The task role's and the ledger writer's grants on the governance schema's ``tables``."""
    schema = sql.Identifier(GOVERNANCE_SCHEMA)
    task, writer = sql.Identifier(roles.task), sql.Identifier(roles.ledger_writer)
    statements = [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}, {}").format(schema, task, writer),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(schema, task, writer),
        # Identity columns (legal_holds, request_actions) draw from sequences.
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, task),
    ]
    # Migration 0016's function: drops a wholly expired partition of a table the task role may
    # already delete from (granted where the function exists).
    statements.append(sql.SQL(
        "DO $grant$ BEGIN IF to_regprocedure({signature}) IS NOT NULL THEN "
        "GRANT EXECUTE ON FUNCTION {function} TO {task}; END IF; END $grant$"
    ).format(signature=sql.Literal(RETENTION_PARTITION_FUNCTION), function=sql.SQL(RETENTION_PARTITION_FUNCTION), task=task))
    expected: list[tuple[str, str]] = []
    for table in tables:
        target = sql.Identifier(GOVERNANCE_SCHEMA, table)
        if table == AUDIT_LEDGER:
            statements.append(
                sql.SQL("GRANT {} ON {} TO {}").format(_privileges(LEDGER_WRITER_PRIVILEGES), target, writer)
            )
        privileges = GOVERNANCE_TABLE_PRIVILEGES.get(table, DEFAULT_GOVERNANCE_PRIVILEGES)
        if privileges:
            statements.append(sql.SQL("GRANT {} ON {} TO {}").format(_privileges(privileges), target, task))
            expected += [(table, p) for p in privileges]
    return GrantSection(
        f"governance schema: {len(tables)} table(s), ledger writer {roles.ledger_writer}",
        GOVERNANCE_CONN_ID,
        GOVERNANCE_SCHEMA,
        tuple(statements),
        tuple(tables),
        # Tasks write the ledger (the listener) by switching to the writer: SET ROLE needs membership.
        memberships=((roles.task, roles.ledger_writer),),
        expected=tuple(expected),
    )


def insights_section(tables: Sequence[str], roles: DatabaseRoles) -> GrantSection:
    """The task role's grants on the published insights: read and add, nothing else (the
    read-only ``insights_analyst`` role gets its SELECT from the migration that creates them)."""
    schema, task = sql.Identifier(INSIGHTS_SCHEMA), sql.Identifier(roles.task)
    statements = [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(schema, task),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, task),
        *(
            sql.SQL("GRANT {} ON {} TO {}").format(_privileges(INSIGHTS_PRIVILEGES), sql.Identifier(INSIGHTS_SCHEMA, t), task)
            for t in tables
        ),
    ]
    return GrantSection(
        f"insights schema: {len(tables)} table(s)", GOVERNANCE_CONN_ID, INSIGHTS_SCHEMA, tuple(statements), tuple(tables),
        expected=tuple((t, p) for t in tables for p in INSIGHTS_PRIVILEGES),
    )  # fmt: skip


def key_tables_section(system_name: str, datamap: DataMap, roles: DatabaseRoles) -> GrantSection | None:
    """The erasure's key tables in one postgres system's database (``governance_erasure``, see
    :class:`governance.datamap.plans.KeyTable`): created here, by the migration role, where missing,
    with their rows (never their definition) granted to the task role; None where the map stores
    no keys in that system."""
    system = datamap.postgres_system(system_name)
    tables = [kt for kt in provisioned_key_tables(datamap) if kt.source.system == system.name]
    if not tables:
        return None
    task = sql.Identifier(roles.task)
    statements: list[sql.Composed] = []
    for kt in tables:
        statements += kt.create()
    statements += [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(sql.Identifier(KEY_TABLES_SCHEMA), task),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(KEY_TABLES_SCHEMA), task),
    ]
    statements += [sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(kt.name, task) for kt in tables]
    return GrantSection(
        f"system {system.name}: erasure key tables, schema {KEY_TABLES_SCHEMA}, {len(tables)} table(s)",
        system.connection_id,
        KEY_TABLES_SCHEMA,
        tuple(statements),
        expected=tuple((kt.table_name, privilege) for kt in tables for privilege in ("INSERT", "DELETE")),
    )


def plan_grants(
    datamap: DataMap, roles: DatabaseRoles, governance_tables: Sequence[str]
) -> list[GrantSection]:
    """Every grant the data map, the insights schema and the governance schema imply, one section
    per schema (the governance schema's last)."""
    sections = [system_section(s.name, datamap, roles) for s in datamap.postgres_systems]
    sections += [k for s in datamap.postgres_systems if (k := key_tables_section(s.name, datamap, roles)) is not None]
    insights = insights_tables_from_migrations()
    if insights:
        sections.append(insights_section(insights, roles))
    sections.append(governance_section(governance_tables, roles))
    return sections


# --------------------------------------------------------------------------------------------
# Applying


def _database_of(conninfo: str) -> tuple[str, str, str]:
    params = conninfo_to_dict(conninfo)
    return (str(params.get("host") or ""), str(params.get("port") or "5432"), str(params.get("dbname") or ""))


def _check_roles(conn: psycopg.Connection[Any], roles: DatabaseRoles) -> None:
    for role in (roles.task, roles.ledger_writer):
        row = conn.execute(
            "SELECT rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
        if row is None:
            raise GrantError(f"role {role!r} does not exist: a DBA creates it (README, 'Database roles')")
        if row[0]:
            raise GrantError(
                f"role {role!r} is a superuser or may create roles, databases or bypass row security: grants cannot "
                "limit it; give tasks a plain login role"
            )
    owned = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relowner = to_regrole(%s) AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast%%'",  # a session's temporary tables
        (sql.Identifier(roles.task).as_string(None),),
    ).fetchone()
    if owned and owned[0]:
        raise GrantError(
            f"role {roles.task!r} owns {owned[0]} relation(s): an owner can alter them and disable their triggers; "
            "reassign them to the migration role"
        )


def _existing_tables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {str(r[0]) for r in rows}


def systems_elsewhere(conninfo: str, datamap: DataMap, *, system_conninfo: dict[str, str] | None = None) -> list[str]:
    """The postgres systems of the map living in another database than ``conninfo``'s."""
    here = _database_of(conninfo)
    elsewhere = []
    for system in datamap.postgres_systems:
        url = (system_conninfo or {}).get(system.name)
        if url is None:
            url = conninfo_for(system.connection_id)
        if _database_of(url) != here:
            elsewhere.append(system.name)
    return elsewhere


def apply_grants(
    conninfo: str,
    datamap: DataMap,
    roles: DatabaseRoles,
    *,
    system_conninfo: dict[str, str] | None = None,
    other_databases: Literal["refuse", "skip"] = "refuse",
) -> list[GrantSection]:
    """Apply every section through ``conninfo`` (the migration role's connection), all in one
    transaction; return the sections applied. ``system_conninfo`` maps a postgres system to its
    connection (default: its Airflow connection), only to tell which database it lives in.

    Raises GrantError, before anything changes, when a role is missing or too powerful, a mapped
    table or a governance table does not exist (run ``migrate`` first), or a system lives in
    another database (print its section with ``--sql`` and apply it there as the owner) unless
    ``other_databases="skip"``: then such systems (an analytics warehouse) are left out of what is
    applied here, for their own owner to apply (:func:`systems_elsewhere` names them).
    """
    elsewhere = systems_elsewhere(conninfo, datamap, system_conninfo=system_conninfo)
    if elsewhere and other_databases == "skip":
        datamap = datamap.model_copy(update={"systems": [s for s in datamap.systems if s.name not in elsewhere]})
    elif elsewhere:
        raise GrantError(
            f"postgres system(s) {', '.join(elsewhere)} live in another database than the one grants are applied to: "
            "apply their section there as the schema's owner (`python -m governance grants --sql`)"
        )
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-grants") as conn:
        assume_migration_role(conn)
        _check_roles(conn, roles)
        governance = sorted(_existing_tables(conn, GOVERNANCE_SCHEMA))
        if "schema_migrations" not in governance:
            raise GrantError(
                "the governance schema does not exist here: run `python -m governance migrate` first"
            )
        expected = set(governance_tables_from_migrations())
        missing = sorted(expected - set(governance))
        if missing:
            raise GrantError(
                f"governance table(s) {', '.join(missing)} missing: run `python -m governance migrate` first"
            )
        sections = plan_grants(datamap, roles, governance)
        for section in sections[:-1]:
            absent = sorted(set(section.tables) - _existing_tables(conn, section.schema))
            if absent:
                raise GrantError(
                    f"mapped table(s) {', '.join(f'{section.schema}.{t}' for t in absent)} do not exist: "
                    "fix the data map (python -m governance validate-datamap) or create them first"
                )
        with conn.transaction():
            for section in sections:
                for statement in section.statements:
                    conn.execute(statement)
                for (member, role), statement in zip(
                    section.memberships, section.membership_statements(), strict=True
                ):
                    _grant_membership(conn, member, role, statement)
                _check_granted(conn, section, roles.task)
    return sections


def _grant_membership(conn: psycopg.Connection[Any], member: str, role: str, statement: sql.Composed) -> None:
    row = conn.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER')",
        (member, role),
    ).fetchone()
    if row and row[0]:
        return
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        raise GrantError(
            f"{member!r} is not a member of {role!r} and this role may not grant that: a DBA runs "
            f"{statement.as_string(None)}"
        ) from None


def _check_granted(conn: psycopg.Connection[Any], section: GrantSection, role: str) -> None:
    for table, privilege in section.expected:
        row = conn.execute(
            "SELECT has_table_privilege(%s, %s, %s)",
            (role, sql.Identifier(section.schema, table).as_string(None), privilege),
        ).fetchone()
        if not (row and row[0]):
            raise GrantError(
                f"{privilege} on {section.schema}.{table} was not granted to {role!r}: the applying role neither owns "
                "the table nor holds it WITH GRANT OPTION (README, 'Database roles')"
            )


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--apply", action="store_true", help="apply the grants (as the migration role); default: print them"
    )
    parser.add_argument(
        "--sql", action="store_true", help="print the SQL statements (the default without --apply)"
    )
    parser.add_argument(
        "--other-databases",
        choices=("refuse", "skip"),
        default="skip",
        help="a mapped system in another database (an analytics warehouse): skip it, naming it (default), or "
        "refuse to apply anything",
    )
    parser.add_argument("--task-role", default=None, help="default: GOVERNANCE_TASK_ROLE or governance_task")
    parser.add_argument(
        "--ledger-role",
        default=None,
        help="default: GOVERNANCE_LEDGER_WRITER_ROLE or governance_ledger_writer",
    )
    parser.add_argument(
        "--datamap",
        type=Path,
        default=None,
        help="data map file (default: GOVERNANCE_DATAMAP or include/datamap.yaml)",
    )
    parser.add_argument(
        "--conninfo",
        default=None,
        help="libpq URL to apply through (default: the governance_migrator connection when "
        "GOVERNANCE_MIGRATION_ROLE is set, else governance_db)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        roles = DatabaseRoles.configured(task=args.task_role, ledger_writer=args.ledger_role)
        datamap = load_datamap(args.datamap)
        if not args.apply:
            for section in plan_grants(datamap, roles, governance_tables_from_migrations()):
                print(section.as_sql())
            return 0
        conninfo = migration_conninfo(args.conninfo)
        elsewhere = systems_elsewhere(conninfo, datamap) if args.other_databases == "skip" else []
        sections = apply_grants(conninfo, datamap, roles, other_databases=args.other_databases)
        for name in elsewhere:
            print(f"grants: system {name} lives in another database: not applied here; apply its section there as "
                  "the schema's owner (`python -m governance grants --sql`)", file=sys.stderr)  # fmt: skip
    except (GrantError, MigrationError) as exc:
        print(f"grants: {exc}", file=sys.stderr)
        return 1
    if args.sql:
        for section in sections:
            print(section.as_sql())
    for section in sections:
        print(f"grants applied: {section.title}, {len(section.statements)} statement(s)")
    return 0
