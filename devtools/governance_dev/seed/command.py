"""``python -m governance_dev seed``: load the reference deployment into the configured systems.

Targets come from Airflow connections: ``aircalls_app`` (PostgreSQL), ``aircalls_warehouse``
(PostgreSQL, loaded from the app's rows; skipped when not configured), ``aircalls_events``
(DynamoDB, the call-event table of the data map, created and loaded from the app's calls; skipped
when not configured), ``aircalls_objects`` (S3 API;
bucket from ``GOVERNANCE_OBJECTS_BUCKET``), ``payments_processor`` and ``crm`` (HTTP; the API key
is the connection's password). A missing processor connection is skipped with a warning; a missing
database or object-store connection is an error. The summary printed holds counts and timings only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from governance import config
from governance.connections import ConnectionInfo, ConnectionNotConfigured, get_connection
from governance.connectors.dynamodb import dynamodb_client
from governance.datamap import load_datamap
from governance.db import conninfo_for
from governance.objectstore import s3_client
from governance_dev.seed.generate import DEFAULT_SEED, SCALES
from governance_dev.seed.load import (
    SeedError,
    SeedRefused,
    SeedTargets,
    seed_reference_deployment,
    seeded_already,
)

log = logging.getLogger("governance_dev.seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="small",
        help="small: a few seconds, for tests and the demo; large: millions of rows, for benchmarks",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="empty the app tables, the seeded objects and the processor stand-ins first",
    )
    parser.add_argument(
        "--if-needed",
        action="store_true",
        help="seed only when the app tables are empty or the objects bucket is gone (e.g. after the "
        "in-memory S3 server restarted); then replace whatever is left, so rows and objects match",
    )
    parser.add_argument(
        "--partitioned-usage-events",
        action="store_true",
        help="make app.usage_events range-partitioned by month on occurred_at (its retention age column): "
        "the retention sweep then drops wholly expired months instead of deleting their rows",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the generated CSV files here (default: a temporary directory, removed afterwards)",
    )


def _optional_processor(conn_id: str) -> ConnectionInfo | None:
    try:
        return get_connection(conn_id)
    except ConnectionNotConfigured:
        log.warning("connection %r is not configured: skipping that processor", conn_id)
        return None


def _event_store() -> tuple[Any, str | None]:
    """The call-event store's client and table (the data map's table name); (None, None) when its
    connection is not configured (skipped with a warning)."""
    datamap = load_datamap()
    tables = [(system, table) for system, table in datamap.item_tables() if system.connection_id == config.EVENTS_CONN_ID]
    if not tables:
        return None, None
    try:
        client = dynamodb_client(config.EVENTS_CONN_ID)
    except ConnectionNotConfigured:
        log.warning("connection %r is not configured: skipping the call-event store", config.EVENTS_CONN_ID)
        return None, None
    return client, tables[0][1].table_name.resolve()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        app_conninfo = conninfo_for(config.APP_CONN_ID)
        objects = s3_client(config.OBJECTS_CONN_ID)
    except ConnectionNotConfigured as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        warehouse_conninfo: str | None = conninfo_for(config.WAREHOUSE_CONN_ID)
    except ConnectionNotConfigured:
        log.warning("connection %r is not configured: skipping the analytics warehouse", config.WAREHOUSE_CONN_ID)
        warehouse_conninfo = None
    events_client, events_table = _event_store()
    payments = _optional_processor(config.PAYMENTS_CONN_ID)
    crm = _optional_processor(config.CRM_CONN_ID)
    support_desk = _optional_processor(config.SUPPORT_DESK_CONN_ID)
    targets = SeedTargets(
        app_conninfo=app_conninfo,
        s3=objects,
        bucket=config.objects_bucket(),
        payments_url=payments.base_url() if payments else None,
        payments_api_key=(payments.password or None) if payments else None,
        crm_url=crm.base_url() if crm else None,
        crm_api_key=(crm.password or None) if crm else None,
        support_desk_url=support_desk.base_url() if support_desk else None,
        warehouse_conninfo=warehouse_conninfo,
        dynamodb=events_client,
        call_events_table=events_table,
    )
    if args.if_needed and seeded_already(targets):
        print("reference deployment already seeded (app tables hold rows, objects bucket present): kept as it is")
        return 0
    try:
        report = seed_reference_deployment(
            targets, scale=args.scale, seed=args.seed, work_dir=args.work_dir, replace=args.replace or args.if_needed,
            partitioned_usage_events=args.partitioned_usage_events,
        )
    except SeedRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except SeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in report.summary_lines():
        print(line)
    return 0
