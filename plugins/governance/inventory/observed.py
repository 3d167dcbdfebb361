"""What really flowed: datasets named by the audit ledger and by OpenLineage events, and the
dataset URI prefixes that tell which recipient each one belongs to.

The ledger is read with one set-based aggregate in PostgreSQL (``jsonb_array_elements_text`` over
inputs and outputs, grouped by dataset), so memory holds one row per distinct dataset, however many
ledger rows there are. OpenLineage event files (the file transport's JSON lines) are streamed line
by line, keeping the same per-dataset summary.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from governance.config import GOVERNANCE_CONN_ID, GOVERNANCE_SCHEMA, INSIGHTS_SCHEMA, ledger_writer_role
from governance.connections import ConnectionInfo, ConnectionNotConfigured, get_connection
from governance.datamap.model import DataMap, DynamoDBSystem, ObjectStoreSystem, PostgresSystem
from governance.inventory.model import SubprocessorList
from governance.inventory.reconcile import ChannelPrefixes, Observations, ObservedDataset
from governance.lineage import item_table_uri
from governance.lineage import processor_uri as uri

log = logging.getLogger(__name__)

# States in which the task ran (and may have sent data); skipped and upstream_failed did not run.
RAN_STATES = ("success", "failed", "up_for_retry")

LEDGER_FLOWS_SQL = sql.SQL(
    """
    SELECT d.uri, max(l.recorded_at) AS last_seen, count(*) AS records
    FROM {ledger} AS l
    CROSS JOIN LATERAL jsonb_array_elements_text(l.inputs || l.outputs) AS d(uri)
    WHERE l.recorded_at <= %(as_of)s AND l.state = ANY(%(states)s)
    GROUP BY d.uri
    """
).format(ledger=sql.Identifier(GOVERNANCE_SCHEMA, "audit_ledger"))
LEDGER_START_SQL = sql.SQL("SELECT recorded_at FROM {ledger} ORDER BY seq LIMIT 1").format(
    ledger=sql.Identifier(GOVERNANCE_SCHEMA, "audit_ledger")
)


def _namespace_prefix(url: str) -> str | None:
    """``scheme://host:port/`` of a URL (default ports filled in), or None when it has no host."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname.lower()}" + (f":{port}" if port else "") + "/"


def processor_base_url(connection: ConnectionInfo) -> str:
    """The base URL the processor connectors call, built as their hook builds it
    (``governance.connectors.processors.ProcessorHook``: the scheme in host, else the connection's
    ``schema``, else https; the port appended)."""
    host = connection.host
    base = host if "://" in host else f"{connection.schema or 'https'}://{host}"
    return f"{base.rstrip('/')}:{connection.port}" if connection.port else base.rstrip("/")


def processor_uri(connection: ConnectionInfo, processor: str) -> str:
    """The dataset URI calls to ``processor`` through ``connection`` are recorded under
    (``governance.lineage.processor_uri``: ``https://api.example.com:443/payments_processor``)."""

    return uri(processor_base_url(connection), processor)


def _postgres_prefix(info: ConnectionInfo, schema: str | None) -> str:
    host, port, database = info.host or "127.0.0.1", info.port or 5432, info.schema or "postgres"
    return f"postgres://{host.lower()}:{port}/{database}/" + (f"{schema}/" if schema else "")


def _connection_prefix(info: ConnectionInfo) -> str | None:
    if info.conn_type in ("postgres", "postgresql"):
        return _postgres_prefix(info, None)
    return _namespace_prefix(info.base_url()) if info.host else None


def channel_prefixes(
    datamap: DataMap,
    declared: SubprocessorList,
    *,
    connection: Callable[[str], ConnectionInfo] | None = None,
    own_buckets: Iterable[str] = (),
) -> ChannelPrefixes:
    """URI prefixes of every processor and system of the data map and every declared connection,
    plus what is the project's own (internal): the governance and insights schemas and the ``governance/``
    prefix of ``own_buckets`` (reports, ledger anchors). A connection that is not configured has
    no prefix (nothing can have been sent through it); it is logged by id."""
    if connection is None:
        connection = get_connection

    def info(conn_id: str) -> ConnectionInfo | None:
        try:
            return connection(conn_id)
        except ConnectionNotConfigured:
            log.info("connection %s is not configured: no flow through it can be observed", conn_id)
            return None

    channels: dict[str, list[str]] = {}
    for processor in datamap.processors:
        found = info(processor.connection_id)
        prefix = _namespace_prefix(processor_base_url(found)) if found and found.host else None
        if prefix:
            channels[f"processor:{processor.name}"] = [prefix + processor.name]
    for system in datamap.systems:
        if isinstance(system, PostgresSystem):
            found = info(system.connection_id)
            if found is not None:
                channels[f"system:{system.name}"] = [_postgres_prefix(found, system.db_schema)]
        elif isinstance(system, ObjectStoreSystem):
            channels[f"system:{system.name}"] = [f"s3://{system.bucket.resolve()}/"]
        elif isinstance(system, DynamoDBSystem):
            found = info(system.connection_id)
            if found is not None:
                region = str(found.extra.get("region_name") or "us-east-1")
                channels[f"system:{system.name}"] = [item_table_uri(region, t.table_name.resolve()) for t in system.tables]
    for sub in declared.subprocessors:
        for channel in sub.receives_through:
            if channel.connection is not None and (found := info(channel.connection)) is not None:
                prefix = _connection_prefix(found)
                if prefix:
                    channels[f"connection:{channel.connection}"] = [prefix]
    governance = info(GOVERNANCE_CONN_ID)
    # The project's own records, and the insights it publishes (aggregates that identify nobody).
    internal = [_postgres_prefix(governance, s) for s in (GOVERNANCE_SCHEMA, INSIGHTS_SCHEMA)] if governance else []
    internal += [f"s3://{bucket}/governance/" for bucket in sorted(set(own_buckets))]
    return ChannelPrefixes(channels=channels, internal=internal)


# --------------------------------------------------------------------------------------------
# The audit ledger


def _read_as_ledger_role(conn: psycopg.Connection[Any]) -> None:
    """Tasks may not read the ledger as themselves (README, "Database roles"): switch to the
    ledger writer (SELECT and INSERT on the ledger only) when the login is a member."""
    role = ledger_writer_role()
    row = conn.execute(
        "SELECT CASE WHEN to_regrole(%s) IS NULL THEN false ELSE pg_has_role(current_user, %s, 'MEMBER') END",
        (sql.Identifier(role).as_string(None), role),
    ).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def ledger_observations(conn: psycopg.Connection[Any], *, as_of: datetime) -> Observations:
    """Every dataset the ledger names up to ``as_of``, with its last time and record count."""
    _read_as_ledger_role(conn)
    start = conn.execute(LEDGER_START_SQL).fetchone()
    rows = conn.execute(LEDGER_FLOWS_SQL, {"as_of": as_of, "states": list(RAN_STATES)}).fetchall()
    conn.execute("RESET ROLE")
    datasets = tuple(ObservedDataset(str(uri), last, int(n)) for uri, last, n in rows)
    return Observations(datasets=datasets, evidence_since=start[0] if start else None)


# --------------------------------------------------------------------------------------------
# OpenLineage events (file transport)


def openlineage_events_path() -> Path | None:
    """The file transport's events file: ``GOVERNANCE_OPENLINEAGE_EVENTS``, else the file named by
    ``AIRFLOW__OPENLINEAGE__TRANSPORT`` (inside the redacting transform); None when events go
    elsewhere (Marquez holds its own copy) or lineage is off."""
    explicit = os.environ.get("GOVERNANCE_OPENLINEAGE_EVENTS", "").strip()
    if explicit:
        return Path(explicit)
    try:
        transport = json.loads(os.environ.get("AIRFLOW__OPENLINEAGE__TRANSPORT", "") or "null")
    except ValueError:
        return None
    while isinstance(transport, dict) and transport.get("type") == "transform":
        transport = transport.get("transport")
    if isinstance(transport, dict) and transport.get("type") == "file" and transport.get("log_file_path"):
        return Path(str(transport["log_file_path"]))
    return None


def dataset_uri(namespace: str, name: str) -> str:
    """The URI of an OpenLineage dataset (the inverse of ``governance.lineage.openlineage_dataset``)."""
    if namespace.startswith("postgres://") and name.count(".") == 2:
        return f"{namespace}/{name.replace('.', '/')}"
    return f"{namespace.rstrip('/')}/{name.lstrip('/')}"


def _event_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash is not evidence
            if isinstance(event, dict):
                yield event


def openlineage_observations(path: Path | None, *, as_of: datetime) -> Observations:
    """Datasets on COMPLETE and FAIL events of ``path`` up to ``as_of`` (START events repeat them)."""
    if path is None or not path.exists():
        return Observations()
    seen: dict[str, tuple[datetime, int]] = {}
    earliest: datetime | None = None
    for event in _event_lines(path):
        if event.get("eventType") not in ("COMPLETE", "FAIL"):
            continue
        try:
            at = datetime.fromisoformat(str(event.get("eventTime")))
        except ValueError:
            continue
        if at.tzinfo is None or at > as_of:
            continue
        earliest = at if earliest is None or at < earliest else earliest
        for dataset in [*(event.get("inputs") or []), *(event.get("outputs") or [])]:
            if isinstance(dataset, dict) and dataset.get("namespace") and dataset.get("name"):
                uri = dataset_uri(str(dataset["namespace"]), str(dataset["name"]))
                last, count = seen.get(uri, (at, 0))
                seen[uri] = (max(last, at), count + 1)
    return Observations(
        datasets=tuple(ObservedDataset(uri, last, count) for uri, (last, count) in sorted(seen.items())),
        evidence_since=earliest,
    )


def merge_observations(parts: Iterable[Observations]) -> Observations:
    """One summary of several sources: the latest time and the summed records per dataset."""
    seen: dict[str, tuple[datetime, int]] = {}
    starts: list[datetime] = []
    for part in parts:
        if part.evidence_since is not None:
            starts.append(part.evidence_since)
        for d in part.datasets:
            last, count = seen.get(d.uri, (d.last_seen, 0))
            seen[d.uri] = (max(last, d.last_seen), count + d.records)
    return Observations(
        datasets=tuple(ObservedDataset(uri, last, count) for uri, (last, count) in sorted(seen.items())),
        evidence_since=min(starts) if starts else None,
    )
