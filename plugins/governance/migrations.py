"""The governance schema: ordered SQL migrations, applied idempotently.

Migrations are the files ``include/sql/governance/NNNN_name.sql``, applied in order, each in its own
transaction, recorded in ``governance.schema_migrations`` with a checksum. Concurrent callers
serialise on an advisory lock, so every DAG may call ``migrate`` first. A migration that was edited
after it was applied is an error (write a new one instead).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from governance.config import GOVERNANCE_CONN_ID, SQL_DIR

MIGRATIONS_DIR = SQL_DIR / "governance"
_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary constant shared by every process that migrates this schema.
_LOCK_KEY = 0x60F_0001


class MigrationError(RuntimeError):
    pass


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conninfo", default=None, help=f"libpq URL (default: the {GOVERNANCE_CONN_ID} connection)")


def run(args: argparse.Namespace) -> int:
    from governance.db import conninfo_for

    applied = migrate(args.conninfo or conninfo_for(GOVERNANCE_CONN_ID))
    print(f"governance schema: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0
