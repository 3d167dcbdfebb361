"""The governance schema: ordered SQL migrations, applied idempotently.

Migrations are the files ``include/sql/governance/NNNN_name.sql``, applied in order, each in its own
transaction, recorded in ``governance.schema_migrations`` with a checksum. Concurrent callers
serialise on an advisory lock. A migration that was edited after it was applied is an error (write a
new one instead).

Who migrates: where a migration role is configured (``GOVERNANCE_MIGRATION_ROLE``, as in
docker-compose), only ``python -m governance migrate`` run by the init service as that role changes
the schema; tasks call :func:`ensure_schema`, which then only checks that every migration is
applied and names the command when one is not. Without one (development, tests, ``make demo``),
:func:`ensure_schema` migrates, so the first task to need the schema creates it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from governance.config import (
    GOVERNANCE_CONN_ID,
    MIGRATION_CONN_ID,
    MIGRATION_ROLE_ENV,
    SQL_DIR,
    migration_role,
)
from governance.db import conninfo_for

MIGRATIONS_DIR = SQL_DIR / "governance"
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary constant shared by every process that migrates this schema.
_LOCK_KEY = 0x60F_0001


class MigrationError(RuntimeError):
    pass


class SchemaNotMigrated(MigrationError):
    """The governance schema lacks migrations, and this process may not apply them."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number")
    return found


def _apply(conn: psycopg.Connection[Any], migration: Migration, attempts: int = 3) -> None:
    """Run one migration in its own transaction.

    The advisory lock serialises migrations of one database only (advisory locks are per
    database), while roles are cluster-wide: two databases of one server migrated at the same
    moment can both try to create the same role, and the loser fails ("role ... already exists",
    or a unique violation on ``pg_authid``). Its transaction is rolled back whole, so it is simply run again (it then
    finds the role).
    """
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                # A trusted file shipped in include/, not input: executed as written.
                conn.execute(sql.SQL(migration.sql))
                conn.execute(
                    "INSERT INTO governance.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            return
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject) as exc:
            # Only the cluster-wide race is retried; any other duplicate is a real error.
            if attempt == attempts or not ("pg_authid" in str(exc) or str(exc).startswith("role ")):
                raise
            time.sleep(0.2 * attempt)


def migrate(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-migrate") as conn:
        assume_migration_role(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("CREATE SCHEMA IF NOT EXISTS governance")
            conn.execute(
                """CREATE TABLE IF NOT EXISTS governance.schema_migrations (
                    version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = conn.execute("SELECT version, name, checksum FROM governance.schema_migrations").fetchall()
            done = {int(v): (n, c) for v, n, c in rows}
            for migration in discover(directory):
                if migration.version in done:
                    name, checksum = done[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.path.name} changed after it was applied as {name!r}; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                _apply(conn, migration)
                applied_now.append(migration.path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def pending(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations not yet applied to the database (read-only; every migration when the schema or
    its bookkeeping table does not exist yet)."""
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-schema-check") as conn:
        exists = conn.execute("SELECT to_regclass('governance.schema_migrations') IS NOT NULL").fetchone()
        done: set[int] = set()
        if exists and exists[0]:
            done = {
                int(r[0]) for r in conn.execute("SELECT version FROM governance.schema_migrations").fetchall()
            }
    return [m for m in discover(directory) if m.version not in done]


def ensure_schema(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Make sure the governance schema is current before a task uses it; return the migrations
    applied now.

    With a migration role configured (``GOVERNANCE_MIGRATION_ROLE``) nothing is changed: a schema
    that lacks migrations raises :class:`SchemaNotMigrated` naming them and the command that applies
    them. Without one, pending migrations are applied (development and tests).
    """
    role = migration_role()
    if role is None:
        return migrate(conninfo, directory)
    missing = pending(conninfo, directory)
    if missing:
        raise SchemaNotMigrated(
            f"the governance schema lacks {len(missing)} migration(s) ({', '.join(m.path.name for m in missing)}); "
            f"tasks do not migrate where a migration role is configured ({MIGRATION_ROLE_ENV}={role}): run "
            "`python -m governance migrate` and `python -m governance grants --apply` as that role "
            "(docker compose: the airflow-init service)"
        )
    return []


def migration_conninfo(explicit: str | None = None) -> str:
    """Where ``migrate`` and ``grants --apply`` connect: ``explicit``, else the migration role's
    connection (``governance_migrator``) when a migration role is configured, else the
    governance connection (development)."""

    if explicit:
        return explicit
    role = migration_role()
    if role is None:
        return conninfo_for(GOVERNANCE_CONN_ID, application_name="governance-migrate")
    try:
        return conninfo_for(MIGRATION_CONN_ID, application_name="governance-migrate")
    except Exception as exc:
        if type(exc).__name__ != "ConnectionNotConfigured":
            raise
        raise MigrationError(
            f"{MIGRATION_ROLE_ENV}={role} is set, so the schema is migrated through the {MIGRATION_CONN_ID!r} "
            f"connection (AIRFLOW_CONN_{MIGRATION_CONN_ID.upper()}), which is not configured here; "
            "only the init and maintenance services hold it"
        ) from exc


def assume_migration_role(conn: psycopg.Connection[Any]) -> str:
    """Act as the configured migration role on ``conn`` (``SET ROLE`` when the login is a member of
    it, so what a migration creates is owned by that role); return the role acted as.

    Raises MigrationError when a migration role is configured and the login is neither it nor a
    member: objects created by another role would escape the grants the project manages.
    """
    role = migration_role()
    current = conn.execute("SELECT current_user").fetchone()
    user = str(current[0]) if current else ""
    if role is None or role == user:
        return user
    member = conn.execute(
        "SELECT to_regrole(%s) IS NOT NULL AND pg_has_role(current_user, %s, 'MEMBER')",
        (sql.Identifier(role).as_string(None), role),
    ).fetchone()
    if not (member and member[0]):
        raise MigrationError(
            f"{MIGRATION_ROLE_ENV}={role}, but this connection logs in as {user!r}, which is not that role "
            f"nor a member of it: connect as {role} (the {MIGRATION_CONN_ID!r} connection)"
        )
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return role


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conninfo",
        default=None,
        help=f"libpq URL (default: the {MIGRATION_CONN_ID} connection when {MIGRATION_ROLE_ENV} is set, "
        f"else the {GOVERNANCE_CONN_ID} connection)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        applied = migrate(migration_conninfo(args.conninfo))
    except MigrationError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    print(
        f"governance schema: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}"
    )
    return 0
