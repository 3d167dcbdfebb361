"""The monthly range-partitioned variant of ``app.usage_events`` (``seed --partitioned-usage-events``).

:func:`partition_usage_events` turns a loaded ``app.usage_events`` into a table range-partitioned
by month on ``occurred_at`` (the age column of its retention rules), in one transaction: one
partition per calendar month (UTC) from the oldest row's month to two months after the newest,
and a DEFAULT partition for anything outside. The rows, the columns and the two secondary indexes
are the same; the primary key becomes ``(id, occurred_at)`` (a partitioned table's unique keys
must hold its partition key; ``id`` stays unique, as the generator makes it). Owner and grants
are those of the role running it (the seeder's), so run ``grants --apply`` afterwards as usual.

The retention sweep finds the partitioning in the catalog (nothing in the data map changes) and
drops wholly expired partitions instead of deleting their rows (README, "Retention").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from governance import config

log = logging.getLogger("governance_dev.seed")

TABLE = "usage_events"
#: Months of empty partitions made ahead of the newest row, for the next events.
MONTHS_AHEAD = 2


@dataclass(frozen=True)
class PartitionedTable:
    """What :func:`partition_usage_events` made: monthly partitions (plus DEFAULT) and rows moved."""

    partitions: int
    rows: int
    seconds: float


def is_partitioned(conn: psycopg.Connection[Any], table: str = TABLE) -> bool:
    row = conn.execute(
        "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (config.APP_SCHEMA, table),
    ).fetchone()
    return bool(row and row[0])


def partition_usage_events(conninfo: str) -> PartitionedTable:
    """Re-create ``app.usage_events`` partitioned by month on ``occurred_at``, with its rows (a
    no-op returning the current partition count when it is partitioned already)."""
    started = time.perf_counter()
    schema = config.APP_SCHEMA
    table = sql.Identifier(schema, TABLE)
    staging_name = f"{TABLE}_unpartitioned"
    staging = sql.Identifier(schema, staging_name)
    with psycopg.connect(conninfo, application_name="governance-seed") as conn:
        if is_partitioned(conn):
            row = conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(%s)", (f"{schema}.{TABLE}",)
            ).fetchone()
            return PartitionedTable(int(row[0]) if row else 0, 0, time.perf_counter() - started)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        bounds = conn.execute(
            sql.SQL(
                "SELECT date_trunc('month', min(occurred_at), 'UTC'), date_trunc('month', max(occurred_at), 'UTC') FROM {}"
            ).format(table)
        ).fetchone()
        assert bounds is not None
        first, last = bounds
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(table, sql.Identifier(staging_name)))
        for index in ("usage_events_user_id_idx", "usage_events_occurred_at_idx", "usage_events_pkey"):
            conn.execute(
                sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                    sql.Identifier(schema, index), sql.Identifier(f"{index}_unpartitioned")
                )
            )
        users = conn.execute("SELECT to_regclass(%s)", (f"{schema}.users",)).fetchone()
        references = (  # the app schema's foreign key, where its users table is there (not in a benchmark's copy)
            sql.SQL(" REFERENCES {} (id)").format(sql.Identifier(schema, "users")) if users and users[0] else sql.SQL("")
        )
        conn.execute(
            sql.SQL(
                """CREATE TABLE {table} (
                    id            bigint NOT NULL,
                    user_id       bigint{references},
                    occurred_at   timestamptz NOT NULL,
                    ip_address    inet,
                    user_agent    text,
                    device_id     text,
                    path          text NOT NULL,
                    geo_country   char(2),
                    PRIMARY KEY (id, occurred_at)
                ) PARTITION BY RANGE (occurred_at)"""
            ).format(table=table, references=references)
        )
        months = conn.execute(
            "SELECT m, m + interval '1 month' FROM generate_series(%s::timestamptz AT TIME ZONE 'UTC', "
            "(%s::timestamptz AT TIME ZONE 'UTC') + %s * interval '1 month', interval '1 month') m",
            (first, last, MONTHS_AHEAD),
        ).fetchall() if first is not None else []
        for lower, upper in months:
            name = sql.Identifier(schema, f"{TABLE}_{lower:%Y_%m}")
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    name, table, sql.Literal(f"{lower:%Y-%m-%d} 00:00:00+00"), sql.Literal(f"{upper:%Y-%m-%d} 00:00:00+00")
                )
            )
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(sql.Identifier(schema, f"{TABLE}_default"), table)
        )
        moved = conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(table, staging)).rowcount
        conn.execute(sql.SQL("DROP TABLE {}").format(staging))
        conn.execute(sql.SQL("CREATE INDEX usage_events_user_id_idx ON {} (user_id)").format(table))
        conn.execute(sql.SQL("CREATE INDEX usage_events_occurred_at_idx ON {} (occurred_at)").format(table))
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-seed") as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(table))
    made = len(months) + 1
    log.info("partitioned app.%s by month: %d partitions, %d rows moved", TABLE, made, moved)
    return PartitionedTable(made, max(0, moved), time.perf_counter() - started)


def drop_if_partitioned(conn: psycopg.Connection[Any], *, replace: bool) -> bool:
    """Drop a partitioned ``app.usage_events`` that is about to be emptied (``replace``) or is empty,
    so the schema DDL re-creates the plain table the loader fills (COPY FREEZE and the deferred
    index rebuild work on plain tables only); ``seed --partitioned-usage-events`` partitions it
    again after the load. Returns whether it dropped it."""
    if not is_partitioned(conn):
        return False
    if not replace:
        row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(config.APP_SCHEMA, TABLE))).fetchone()
        if row and row[0]:
            return False  # holds rows: the loader refuses, naming it
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(config.APP_SCHEMA, TABLE)))
    return True
