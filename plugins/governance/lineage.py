"""Dataset lineage: what each task read and wrote, in OpenLineage's naming, without personal data.

Three parts:

* **Recording** (called by the project's connectors inside tasks): ``record_table_read``,
  ``record_table_write``, ``record_object_read``, ``record_object_write``. They report to Airflow's
  hook lineage collector, the same place Airflow's own hooks report to (``S3Hook``,
  ``ObjectStoragePath``, SQL hooks), so the OpenLineage provider puts the datasets on the task's
  START/COMPLETE/FAIL event and the audit ledger records them. Names follow the OpenLineage
  naming spec: ``postgres://host:port/database/schema/table`` (event: namespace
  ``postgres://host:port``, name ``database.schema.table``) and ``s3://bucket/prefix`` (namespace
  ``s3://bucket``, name ``prefix``). Objects are reported by prefix, never per key: keys may embed
  identifiers and a prefix is the dataset.
* **Reading back** (the ledger listener): ``collected_task_lineage`` returns the task's sorted
  input and output URIs and the rows it changed. SQL run through Airflow's SQL hooks
  (``PostgresHook.run`` ...) arrives as query text; ``promote_sql_hook_lineage`` parses it into
  table datasets first, so hook-based tasks name their tables on the task event too.
* **Configuration and redaction**: ``openlineage_env`` gives the provider's settings (file
  transport into a folder by default, HTTP to Marquez when a URL is given), always wrapped in
  ``LineageEventRedactor``: the provider copies ``dag_run.conf``, the triggering user, notes, SQL
  parameters and exception messages into events, and any of them can carry an identity.

Everything Airflow is imported lazily: connectors import this module outside tasks too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import attr
from openlineage.client.transport.transform import EventTransformer

from governance.connections import ConnectionInfo
from governance.privacy_requests import REQUEST_ID_RE

log = logging.getLogger(__name__)

OPENLINEAGE_NAMESPACE = "aircalls-governance"
REDACTOR_CLASS = "governance.lineage.LineageEventRedactor"
ROWS_AFFECTED_EXTRA_KEY = "governance.rows_affected"
SQL_JOB_EXTRA_KEY = "sql_job"  # airflow.providers.common.sql.hooks.lineage.SqlJobHookLineageExtra.KEY

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class LineageNameError(ValueError):
    """A dataset name that cannot be a well-formed lineage URI (says which part and why)."""


class _ProjectConnector:
    """Stands in for a hook as the collector's 'context': the project's own connectors."""

    def __repr__(self) -> str:
        return "governance-connector"


_CONNECTOR_CONTEXT = _ProjectConnector()


# --------------------------------------------------------------------------------------------
# Naming


def _identifier(kind: str, value: str) -> str:
    if not _IDENTIFIER_RE.match(value or ""):
        raise LineageNameError(f"{kind} {value!r} is not a plain SQL identifier (letters, digits, _)")
    return value


def postgres_table_uri(host: str, port: int | None, database: str, schema: str, table: str) -> str:
    """``postgres://host:port/database/schema/table``: the Airflow asset URI whose OpenLineage
    dataset is namespace ``postgres://host:port``, name ``database.schema.table``."""
    if not host:
        raise LineageNameError("a PostgreSQL dataset needs a host")
    if not database:
        raise LineageNameError("a PostgreSQL dataset needs a database name")
    # Lower-cased like the provider's own naming (urlparse().hostname), so both agree.
    return (
        f"postgres://{host.lower()}:{port or 5432}/{_identifier('database', database)}/"
        f"{_identifier('schema', schema)}/{_identifier('table', table)}"
    )


def s3_prefix_uri(bucket: str, key_prefix: str) -> str:
    """``s3://bucket/prefix`` (no trailing slash); the bucket itself is ``s3://bucket/``."""
    if not _BUCKET_RE.match(bucket or ""):
        raise LineageNameError(f"bucket {bucket!r} is not a valid S3 bucket name")
    prefix = key_prefix.strip("/")
    if any(ch in prefix for ch in "*?[") or "//" in prefix:
        raise LineageNameError(f"object prefix {key_prefix!r} must be a literal prefix, not a pattern")
    return f"s3://{bucket}/{prefix}"


def item_table_uri(region: str, table_name: str) -> str:
    """``dynamodb://region/table``: a DynamoDB table as a dataset (the region its connection names)."""
    if not re.match(r"^[A-Za-z0-9_.-]{3,255}$", table_name or ""):
        raise LineageNameError(f"DynamoDB table {table_name!r} is not a valid table name")
    return f"dynamodb://{(region or 'us-east-1').lower()}/{table_name}"


def processor_uri(base_url: str, processor: str) -> str:
    """``scheme://host:port/<processor>``: a processor of the data map as a dataset, in the
    namespace of the connection it is reached through (default ports written out, so every writer
    and reader of lineage names it alike; the subprocessor inventory matches it to a declaration)."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    if not parts.hostname:
        raise LineageNameError(f"processor {processor!r}: its connection has no host")
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname.lower()}{f':{port}' if port else ''}/{_identifier('processor', processor)}"


def _postgres_location(source: str | ConnectionInfo) -> tuple[str, int | None, str]:
    """(host, port, database) of a connection id, a ConnectionInfo or a libpq URL (no credentials)."""
    if isinstance(source, ConnectionInfo):
        return source.host or "127.0.0.1", source.port, source.schema or "postgres"
    if "://" in source:
        parts = urlsplit(source)
        return parts.hostname or "127.0.0.1", parts.port, unquote(parts.path.lstrip("/")) or "postgres"
    from governance.connections import get_connection

    return _postgres_location(get_connection(source))


def table_uri(source: str | ConnectionInfo, schema: str, table: str) -> str:
    """Dataset URI of ``schema.table`` in the database behind ``source``."""
    host, port, database = _postgres_location(source)
    return postgres_table_uri(host, port, database, schema, table)


# --------------------------------------------------------------------------------------------
# Recording (inside tasks)


def _collector() -> Any:
    from airflow.sdk.lineage import get_hook_lineage_collector

    return get_hook_lineage_collector()


def _record(direction: str, uri: str, affected: int | None) -> str:
    collector = _collector()
    add = collector.add_input_asset if direction == "input" else collector.add_output_asset
    add(context=cast(Any, _CONNECTOR_CONTEXT), uri=uri)
    if affected is not None:
        if affected < 0:
            raise ValueError("rows/objects affected cannot be negative")
        collector.add_extra(
            context=cast(Any, _CONNECTOR_CONTEXT), key=ROWS_AFFECTED_EXTRA_KEY, value={"dataset": uri, "rows": affected}
        )
    return uri


def record_table_read(source: str | ConnectionInfo, schema: str, table: str) -> str:
    """Report that the running task read ``schema.table`` (source: connection id, info or URL)."""
    return _record("input", table_uri(source, schema, table), None)


def record_table_write(source: str | ConnectionInfo, schema: str, table: str, *, rows: int | None = None) -> str:
    """Report that the running task inserted, updated or deleted ``rows`` rows of ``schema.table``."""
    return _record("output", table_uri(source, schema, table), rows)


def record_governance_tables(
    source: str | ConnectionInfo, *, read: Iterable[str] = (), written: Iterable[str] = ()
) -> list[str]:
    """Report the tables of the ``governance`` schema the running task read and wrote (requests,
    plans, suppression list, certificates): the platform's own records are datasets too."""
    uris = [record_table_read(source, "governance", table) for table in read]
    return uris + [record_table_write(source, "governance", table) for table in written]


def record_request_opened(source: str | ConnectionInfo, conf: Mapping[str, Any]) -> list[str]:
    """What opening a privacy request from a run configuration touches: the request read (by its
    id) or recorded (a form's identities), and the run recorded among the request's runs."""
    if str(conf.get("request_id") or "").strip():
        return record_governance_tables(source, read=("privacy_requests",), written=("request_runs",))
    return record_governance_tables(source, written=("privacy_requests", "request_runs"))


def record_object_read(bucket: str, key_prefix: str) -> str:
    """Report that the running task read objects under ``key_prefix``."""
    return _record("input", s3_prefix_uri(bucket, key_prefix), None)


def record_object_write(bucket: str, key_prefix: str, *, objects: int | None = None) -> str:
    """Report that the running task wrote or deleted ``objects`` objects under ``key_prefix``."""
    return _record("output", s3_prefix_uri(bucket, key_prefix), objects)


def record_item_read(region: str, table_name: str) -> str:
    """Report that the running task queried the DynamoDB table ``table_name``."""
    return _record("input", item_table_uri(region, table_name), None)


def record_item_write(region: str, table_name: str, *, items: int | None = None) -> str:
    """Report that the running task wrote or deleted ``items`` items of the DynamoDB table."""
    return _record("output", item_table_uri(region, table_name), items)


def record_processor_call(base_url: str, processor: str, *, changes: bool) -> str:
    """Report that the running task called ``processor``: a look-up or export reads it (and sends
    it the person's identity), an erasure (``changes``) writes it."""
    return _record("output" if changes else "input", processor_uri(base_url, processor), None)


# --------------------------------------------------------------------------------------------
# Reading back (the ledger listener)


@dataclass(frozen=True)
class TaskLineage:
    """What one task instance read and wrote: sorted dataset URIs and rows (or objects) changed."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    rows_affected: int | None = None


def reset_collected_lineage() -> None:
    """Start a task with an empty collector.

    Workers run each task in a fresh process, but ``dag.test()`` and ``airflow tasks test`` run
    several in one: without this, datasets collected by one task would appear on the next task's
    events. Dropping the cached collector is what a fresh process does.
    """
    from airflow.sdk.lineage import get_hook_lineage_collector

    get_hook_lineage_collector.cache_clear()


def _asset_uri(asset: Any) -> str | None:
    uri = getattr(asset, "normalized_uri", None) or getattr(asset, "uri", None)
    return str(uri) if uri else None


def _hook_database(hook: Any) -> tuple[str, str] | None:
    """(authority, database) of a PostgreSQL SQL hook, as the provider names it; None otherwise."""
    try:
        conn_id = hook.get_conn_id() if callable(getattr(hook, "get_conn_id", None)) else None
        conn_id = conn_id or getattr(hook, getattr(hook, "conn_name_attr", "") or "", None)
        info = hook.get_openlineage_database_info(hook.get_connection(conn_id))
    except Exception:  # not a SQL hook with OpenLineage support: nothing to promote
        log.debug("hook %r has no OpenLineage database info", hook, exc_info=True)
        return None
    if info is None or info.scheme != "postgres" or not info.authority or not info.database:
        return None
    return str(info.authority).lower(), str(info.database)


def promote_sql_hook_lineage(collector: Any | None = None) -> int | None:
    """Turn the SQL that Airflow's SQL hooks ran into table datasets on the collector.

    The provider emits hook SQL as separate per-query events; parsing it here (with the same
    openlineage-sql parser) puts the tables on the task's own event as well. Returns the rows
    changed by data-modifying statements, or None when none reported a count.
    """
    collector = collector or _collector()
    extras = [e for e in getattr(collector.collected_assets, "extra", []) if e.key == SQL_JOB_EXTRA_KEY]
    if not extras:
        return None
    from airflow.providers.openlineage.sqlparser import SQLParser

    parser = SQLParser(dialect="postgres", default_schema="public")
    changed: int | None = None
    databases: dict[int, tuple[str, str] | None] = {}
    for extra in extras:
        sql = (extra.value or {}).get("sql")
        hook = extra.context
        if id(hook) not in databases:
            databases[id(hook)] = _hook_database(hook)
        where = databases[id(hook)]
        if not sql or where is None:
            continue
        authority, database = where
        database = (extra.value or {}).get("default_db") or database
        default_schema = (extra.value or {}).get("default_schema") or "public"
        try:
            parser.default_schema = default_schema
            meta = parser.parse(parser.split_sql_string(sql))
        except Exception:
            log.warning("could not parse SQL run through %r for lineage", hook, exc_info=True)
            continue
        if meta is None:
            continue
        host, _, port = authority.partition(":")
        for direction, tables in (("input", meta.in_tables), ("output", meta.out_tables)):
            add = collector.add_input_asset if direction == "input" else collector.add_output_asset
            for t in tables:
                try:
                    uri = postgres_table_uri(host, int(port) if port else None, t.database or database,
                                             t.schema or default_schema, t.name)  # fmt: skip
                except LineageNameError as exc:
                    log.warning("table of hook SQL left out of lineage: %s", exc)
                    continue
                add(context=hook, uri=uri)
        row_count = (extra.value or {}).get("row_count")
        if meta.out_tables and isinstance(row_count, int) and row_count >= 0:
            changed = (changed or 0) + row_count * max(int(extra.count), 1)
    return changed


def _declared_assets(assets: Iterable[Any]) -> list[str]:
    """URIs of declared assets; an asset known only by name (no ``scheme://``) is no dataset."""
    from airflow.sdk import Asset

    return [uri for a in assets if isinstance(a, Asset) and (uri := _asset_uri(a)) and "://" in uri]


def collected_task_lineage(task: Any | None = None) -> TaskLineage:
    """The running task's datasets, as the OpenLineage provider will report them.

    Hook-collected datasets when there are any (after promoting hook SQL to tables), otherwise the
    task's declared ``inlets``/``outlets``: the provider's own order of precedence for tasks
    without an extractor (``@task``, PythonOperator).
    """
    collector = _collector()
    if not hasattr(collector, "collected_assets"):
        return TaskLineage()
    sql_rows = promote_sql_hook_lineage(collector)
    collected = collector.collected_assets
    inputs = sorted({u for info in collected.inputs if (u := _asset_uri(info.asset))})
    outputs = sorted({u for info in collected.outputs if (u := _asset_uri(info.asset))})
    reported = [
        int(e.value.get("rows", 0)) * max(int(e.count), 1) for e in collected.extra if e.key == ROWS_AFFECTED_EXTRA_KEY
    ]
    rows = None if not reported and sql_rows is None else sum(reported) + (sql_rows or 0)
    if not inputs and not outputs and task is not None:
        inputs = sorted(set(_declared_assets(getattr(task, "inlets", []) or [])))
        outputs = sorted(set(_declared_assets(getattr(task, "outlets", []) or [])))
    return TaskLineage(inputs=tuple(inputs), outputs=tuple(outputs), rows_affected=rows)


def openlineage_dataset(uri: str) -> tuple[str, str]:
    """(namespace, name) of a dataset URI in an OpenLineage event (the provider's converters)."""
    parts = urlsplit(uri)
    if parts.scheme == "postgres":
        database, schema, table = parts.path.strip("/").split("/")
        return f"postgres://{parts.netloc}", f"{database}.{schema}.{table}"
    if parts.scheme == "s3":
        return f"s3://{parts.netloc}", parts.path.lstrip("/") or "/"
    return f"{parts.scheme}://{parts.netloc}", parts.path


# --------------------------------------------------------------------------------------------
# OpenLineage configuration


def openlineage_transport(*, events_dir: str | Path | None = None, marquez_url: str | None = None) -> dict[str, Any]:
    """Transport config: the redactor wrapped around a file transport (default) or Marquez HTTP."""
    if marquez_url:
        inner: dict[str, Any] = {"type": "http", "url": marquez_url.rstrip("/"), "endpoint": "api/v1/lineage"}
    else:
        if events_dir is None:
            raise ValueError("give events_dir (file transport) or marquez_url (HTTP transport)")
        inner = {"type": "file", "log_file_path": str(Path(events_dir) / "openlineage-events.jsonl"), "append": True}
    return {"type": "transform", "transformer_class": REDACTOR_CLASS, "transport": inner}


def openlineage_env(
    *, events_dir: str | Path | None = None, marquez_url: str | None = None, namespace: str = OPENLINEAGE_NAMESPACE
) -> dict[str, str]:
    """The Airflow settings (environment form) that turn the OpenLineage provider on for this project.

    The emission policy leaves source code out of events (it is not lineage and it makes every
    event large), keeps full task info off (it would copy operator arguments such as SQL
    parameters) and keeps hook lineage on (it is how ``@task`` functions name their datasets).
    """
    transport = openlineage_transport(events_dir=events_dir, marquez_url=marquez_url)
    policy = [{"scope": {}, "controls": {"include_source_code": False, "include_full_task_info": False,
                                         "hook_lineage": True}}]  # fmt: skip
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": namespace,
        "AIRFLOW__OPENLINEAGE__EMISSION_POLICY": json.dumps(policy),
    }


def redaction_is_configured(transport: Mapping[str, Any] | None) -> bool:
    """Whether an OpenLineage transport config routes every event through the redactor."""
    if not transport:
        return True  # nothing is emitted
    if transport.get("type") == "transform" and transport.get("transformer_class") == REDACTOR_CLASS:
        return True
    if transport.get("type") == "composite":
        transports = transport.get("transports") or []
        items = transports.values() if isinstance(transports, Mapping) else transports
        return all(redaction_is_configured(t) for t in items)
    return False


# --------------------------------------------------------------------------------------------
# Redaction

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_PHONE_RE = re.compile(r"(?<![\w+])\+[1-9][0-9 ().\-]{6,18}[0-9]")
_EXCEPTION_LINE_RE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Timeout|Warning)?)(?::|$)")
# Fields the provider fills from user input: who triggered, notes, SQL operator parameters,
# human-in-the-loop summaries, labels rendered from mapped values.
_DROPPED_FIELDS = frozenset(
    {"triggering_user_name", "note", "parameters", "hitl_summary", "rendered_map_index", "op_args", "op_kwargs",
     "templates_dict"}
)  # fmt: skip


def redacted_conf(conf: Any) -> dict[str, str]:
    """What of a run configuration may appear in events: a well-formed request id, nothing else."""
    if isinstance(conf, Mapping):
        request_id = conf.get("request_id")
        if isinstance(request_id, str) and REQUEST_ID_RE.match(request_id):
            return {"request_id": request_id}
    return {}


def scrub_text(text: str) -> str:
    """Replace e-mail addresses and international phone numbers in free text."""
    return _PHONE_RE.sub("<redacted:phone>", _EMAIL_RE.sub("<redacted:email>", text))


def _exception_type(stack_trace: str | None) -> str | None:
    for line in reversed((stack_trace or "").strip().splitlines()):
        match = _EXCEPTION_LINE_RE.match(line.strip())
        if match and not line.startswith(" "):
            return match.group(1)
    return None


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 30:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        cleaned = {}
        for key, item in value.items():
            if key in _DROPPED_FIELDS:
                continue
            cleaned[key] = redacted_conf(item) if key == "conf" else _scrub(item, depth + 1)
        if isinstance(value, dict) and type(value) is not dict:
            # Provider facets subclass dict (InfoJsonEncodable): keep the object, replace contents.
            value.clear()
            value.update(cleaned)
            return value
        return cleaned
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v, depth + 1) for v in value)
    if attr.has(type(value)):
        if type(value).__name__ == "ErrorMessageRunFacet":
            kind = _exception_type(getattr(value, "stackTrace", None))
            message = f"{kind}: message redacted, see the task log" if kind else scrub_text(value.message or "")
            object.__setattr__(value, "message", message)
            object.__setattr__(value, "stackTrace", None)
            return value
        for field in attr.fields(type(value)):
            if field.name.startswith("_"):
                continue
            current = getattr(value, field.name)
            if field.name in _DROPPED_FIELDS:
                new: Any = None
            elif field.name == "conf":
                new = redacted_conf(current)
            else:
                new = _scrub(current, depth + 1)
            if new is not current:
                object.__setattr__(value, field.name, new)
        return value
    return value


def redact_event(event: Any) -> Any:
    """Remove everything that could carry an identity from an OpenLineage event (in place).

    Run configurations keep only a well-formed ``request_id``; the triggering user, notes, SQL
    parameters and HITL summaries are dropped; exception messages become the exception type;
    e-mail addresses and phone numbers left in any other text are replaced.
    """
    return _scrub(event)


class LineageEventRedactor(EventTransformer):
    """OpenLineage ``transform`` transport hook: every event passes through ``redact_event``.

    Configure with ``openlineage_env()``; the transport deep-copies each event before this runs.
    """

    def transform(self, event: Any) -> Any:
        try:
            return redact_event(event)
        except Exception:
            # Never let an event we could not clean leave the process.
            log.exception("OpenLineage event dropped: redaction failed")
            return None


def dataset_pairs(datasets: Sequence[Mapping[str, Any]] | None) -> set[tuple[str, str]]:
    """(namespace, name) pairs of an event's ``inputs`` or ``outputs`` (JSON form)."""
    return {(str(d["namespace"]), str(d["name"])) for d in datasets or []}
