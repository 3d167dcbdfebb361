"""The analytics warehouse of the reference deployment, loaded from the app database as a nightly
ELT job would: ``COPY (SELECT ...) TO STDOUT`` from the app, ``COPY ... FROM STDIN`` into the
warehouse database, streamed in chunks (nothing is held whole in memory).

Deterministic: the rows are a pure function of the app's rows (which the seeder generates from a
seed), so the same cast is in the warehouse at every scale:

* ``analytics.call_facts``: one row per app call, keyed by the call's id, with the caller's phone;
* ``analytics.user_sessions``: one row per user and day with usage events, keyed by a dense id in
  (user, day) order, reaching the person only through the app's user id;
* ``analytics.marketing_audience``: one row per business and e-mail address (users who opted in
  to e-mail, callers who gave an address), reached by identity.

Loading is one transaction in the warehouse: a failure leaves it as it was. Counts only are
logged, never a row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from governance import config
from governance_dev.seed.load import SeedRefused

log = logging.getLogger("governance_dev.seed")

WAREHOUSE_SCHEMA = "analytics"
COPY_CHUNK_BYTES = 1 << 20

#: The ELT's extract queries (on the app database), in load order, with the columns they fill.
EXTRACTS: dict[str, tuple[tuple[str, ...], str]] = {
    "call_facts": (
        ("call_id", "business_id", "caller_phone", "started_at", "duration_s", "outcome", "loaded_at"),
        "SELECT c.id, c.business_id, ca.phone, c.started_at, c.duration_s, c.outcome,"
        " date_trunc('day', c.started_at) + interval '1 day 2 hours'"
        " FROM app.calls c JOIN app.callers ca ON ca.id = c.caller_id ORDER BY c.id",
    ),
    "user_sessions": (
        ("id", "user_id", "business_id", "session_start", "session_end", "events", "loaded_at"),
        "SELECT row_number() OVER (ORDER BY e.user_id, e.day), e.user_id, u.business_id, e.first_at, e.last_at,"
        " e.events, e.day + interval '1 day 2 hours'"
        " FROM (SELECT user_id, date_trunc('day', occurred_at) AS day, min(occurred_at) AS first_at,"
        "       max(occurred_at) AS last_at, count(*) AS events"
        "       FROM app.usage_events WHERE user_id IS NOT NULL GROUP BY 1, 2) e"
        " JOIN app.users u ON u.id = e.user_id ORDER BY e.user_id, e.day",
    ),
    "marketing_audience": (
        ("id", "business_id", "email", "segment", "added_at"),
        "SELECT row_number() OVER (ORDER BY business_id, lower(normalize(email, NFC)), segment), business_id, email,"
        " segment, added_at FROM ("
        "  SELECT DISTINCT ON (business_id, lower(normalize(email, NFC))) business_id, email, segment, added_at FROM ("
        "    SELECT u.business_id, u.email, 'customers' AS segment, m.updated_at AS added_at"
        "      FROM app.users u JOIN app.marketing_preferences m ON m.user_id = u.id WHERE m.email_opt_in"
        "    UNION ALL"
        "    SELECT c.business_id, c.email, 'callers', c.first_seen_at FROM app.callers c WHERE c.email IS NOT NULL"
        "  ) a ORDER BY business_id, lower(normalize(email, NFC)), segment"
        " ) d ORDER BY 1",
    ),
}
TABLES: tuple[str, ...] = tuple(EXTRACTS)


class WarehouseRefused(SeedRefused):
    """The warehouse already holds rows and ``replace`` was not given; nothing was changed."""


@dataclass(frozen=True)
class WarehouseLoad:
    rows: dict[str, int]
    seconds: float


def warehouse_schema_sql() -> str:
    return (config.SQL_DIR / "warehouse_schema.sql").read_text(encoding="utf-8")


def _occupied(conn: psycopg.Connection[Any]) -> list[str]:
    found = []
    for name in TABLES:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{WAREHOUSE_SCHEMA}.{name}",)).fetchone()
        if exists is None or exists[0] is None:
            continue
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(WAREHOUSE_SCHEMA, name))).fetchone()
        if row is not None and row[0]:
            found.append(name)
    return found


def warehouse_seeded(warehouse_conninfo: str) -> bool:
    with psycopg.connect(warehouse_conninfo, autocommit=True, application_name="governance-seed") as conn:
        return bool(_occupied(conn))


def check_warehouse(warehouse_conninfo: str, *, replace: bool) -> None:
    """WarehouseRefused when the warehouse holds rows and not ``replace`` (before anything changes)."""
    with psycopg.connect(warehouse_conninfo, autocommit=True, application_name="governance-seed") as conn:
        occupied = _occupied(conn)
    if occupied and not replace:
        raise WarehouseRefused(
            f"the warehouse's {WAREHOUSE_SCHEMA!r} schema already holds rows (in {', '.join(occupied)}); nothing was "
            "changed. Seed into an empty database, or pass replace=True (command line: --replace)."
        )


def load_warehouse(app_conninfo: str, warehouse_conninfo: str, *, replace: bool) -> WarehouseLoad:
    """Create the warehouse schema and load every table from the app database (one transaction)."""
    started = time.perf_counter()
    rows: dict[str, int] = {}
    with (
        psycopg.connect(app_conninfo, application_name="governance-seed-elt") as app,
        psycopg.connect(warehouse_conninfo, application_name="governance-seed") as wh,
    ):
        app.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one consistent extract
        app.execute("SET TIME ZONE 'UTC'")
        wh.execute(warehouse_schema_sql().encode("utf-8"))
        targets = [sql.Identifier(WAREHOUSE_SCHEMA, name) for name in TABLES]
        wh.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(targets)))
        occupied = _occupied(wh)
        if occupied and not replace:
            raise WarehouseRefused(f"the warehouse already holds rows (in {', '.join(occupied)}); nothing was changed")
        if occupied:
            wh.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(targets)))
        with app.cursor() as source, wh.cursor() as target:
            for name, (columns, extract) in EXTRACTS.items():
                copy_out = sql.SQL("COPY ({}) TO STDOUT").format(sql.SQL(extract))
                copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(WAREHOUSE_SCHEMA, name), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
                with source.copy(copy_out) as out, target.copy(copy_in) as into:
                    for chunk in out:
                        into.write(chunk)
                rows[name] = int(target.rowcount)
                log.info("loaded %s.%s: %d rows", WAREHOUSE_SCHEMA, name, rows[name])
        app.rollback()
        wh.commit()
    with psycopg.connect(warehouse_conninfo, autocommit=True, application_name="governance-seed") as wh:
        for name in TABLES:
            wh.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(WAREHOUSE_SCHEMA, name)))
    return WarehouseLoad(rows, time.perf_counter() - started)
