"""Loading the reference deployment: PostgreSQL (COPY), the object store and the processor stand-ins.

:func:`seed_reference_deployment` is the one entry point. It checks the targets first (an ``app``
schema that already holds rows, or a bucket that already holds recordings, is refused unless
``replace=True``), generates the data (:mod:`governance_dev.seed.generate`) into CSV files, then:

1. PostgreSQL, in one transaction: the schema DDL (``include/sql/app_schema.sql``), TRUNCATE when
   replacing, then ``COPY app.<table> FROM STDIN (FORMAT csv)`` per table, parents first, each file
   streamed in chunks; ``ANALYZE`` after the commit. A failure leaves the database as it was.
2. The object store: the bucket is created if missing, versioning enabled, and the recordings and
   transcripts uploaded concurrently (boto3 clients are thread-safe).
3. The processors, through the stand-ins' ``POST /_admin/load`` (``/_admin/reset`` first when
   replacing); a processor without a URL is skipped.

Nothing here logs personal data: counts and timings only.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from governance import config
from governance_dev.seed.generate import (
    DEFAULT_SEED,
    TABLE_COLUMNS,
    TABLE_ORDER,
    CallObjects,
    ReferenceData,
    generate_reference_data,
    scale_spec,
    transcript_bytes,
    wav_bytes,
    write_csv_files,
)
from governance_dev.seed.partitions import drop_if_partitioned, partition_usage_events

log = logging.getLogger("governance_dev.seed")

#: Bytes handed to COPY per write: large enough that per-call overhead vanishes.
COPY_CHUNK_BYTES = 1 << 20
#: Object prefixes the seeder owns in the bucket.
OBJECT_PREFIXES: tuple[str, ...] = ("recordings/", "transcripts/")
#: Records per ``POST /_admin/load`` request.
PROCESSOR_BATCH = 20_000
DEFAULT_UPLOAD_WORKERS = 16
_HTTP_TIMEOUT_S = 300


class SeedRefused(RuntimeError):
    """The targets already hold data and ``replace`` was not given; nothing was changed."""


class SeedError(RuntimeError):
    """Seeding failed part-way (a processor or the object store answered with an error)."""


@dataclass(frozen=True)
class SeedTargets:
    """Where the reference deployment goes. ``s3``/``bucket`` None skips the object store (the
    calls then name recordings that do not exist: for COPY benchmarks only); a processor URL of
    None skips that processor."""

    app_conninfo: str = field(repr=False)
    s3: Any | None = field(default=None, repr=False)
    bucket: str | None = None
    payments_url: str | None = None
    payments_api_key: str | None = field(default=None, repr=False)
    crm_url: str | None = None
    crm_api_key: str | None = field(default=None, repr=False)
    support_desk_url: str | None = None
    # The analytics warehouse (a second database), loaded from the app's rows; None skips it.
    warehouse_conninfo: str | None = field(default=None, repr=False)
    # The call-event store (a DynamoDB client and table name), loaded from the app's calls; None skips it.
    dynamodb: Any | None = field(default=None, repr=False)
    call_events_table: str | None = None


@dataclass(frozen=True)
class SeedReport:
    """What was seeded (counts only, never personal data) and how long each phase took.

    ``copy_s`` covers the database transaction (DDL, COPY of every table, index and foreign-key
    rebuild when deferred, commit); ``copy_table_s`` holds the COPY of each table and
    ``rebuild_s`` the rebuild. ``generate_s`` covers generating and writing the CSV files.
    """

    scale: str
    seed: int
    rows: dict[str, int]
    csv_bytes: int
    objects: int
    object_bytes: int
    processor_records: dict[str, int]
    generate_s: float
    copy_s: float
    copy_table_s: dict[str, float]
    rebuild_s: float
    objects_s: float
    processors_s: float
    analyze_s: float
    total_s: float
    csv_files: dict[str, Path] = field(default_factory=dict)
    warehouse_rows: dict[str, int] = field(default_factory=dict)
    event_items: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def summary_lines(self) -> list[str]:
        """A short human summary: counts and timings only."""
        lines = [f"seeded scale={self.scale} seed={self.seed}: {self.total_rows:,} rows"]
        lines += [f"  app.{name}: {count:,}" for name, count in self.rows.items()]
        lines += [f"  warehouse analytics.{name}: {count:,}" for name, count in self.warehouse_rows.items()]
        if self.event_items:
            lines.append(f"  call-event store (DynamoDB): {self.event_items:,} items")
        lines.append(f"  objects: {self.objects:,} ({self.object_bytes / 1e6:,.1f} MB)")
        for name, count in self.processor_records.items():
            lines.append(f"  {name}: {count:,}")
        rate = self.total_rows / self.copy_s if self.copy_s > 0 else 0.0
        lines.append(
            f"  timings: generate {self.generate_s:.1f}s, copy {self.copy_s:.1f}s ({rate:,.0f} rows/s), "
            f"analyze {self.analyze_s:.1f}s, objects {self.objects_s:.1f}s, processors {self.processors_s:.1f}s, "
            f"total {self.total_s:.1f}s"
        )
        return lines


# ------------------------------------------------------------------------------------------ database


def copy_statement(table: str, columns: Sequence[str], *, freeze: bool = False) -> sql.Composed:
    """``COPY app.<table> (<columns>) FROM STDIN WITH (FORMAT csv[, FREEZE])``."""
    options = sql.SQL("FORMAT csv, FREEZE") if freeze else sql.SQL("FORMAT csv")
    return sql.SQL("COPY {} ({}) FROM STDIN WITH ({})").format(
        sql.Identifier(config.APP_SCHEMA, table), sql.SQL(", ").join(map(sql.Identifier, columns)), options
    )


def copy_csv_file(
    cursor: psycopg.Cursor[Any], table: str, columns: Sequence[str], path: Path, *, freeze: bool = False
) -> int:
    """Stream one CSV file into ``app.<table>`` with COPY; returns the rows COPY reported."""
    with path.open("rb") as handle, cursor.copy(copy_statement(table, columns, freeze=freeze)) as copy:
        while chunk := handle.read(COPY_CHUNK_BYTES):
            copy.write(chunk)
    return int(cursor.rowcount)


def _existing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
        (config.APP_SCHEMA, list(TABLE_ORDER)),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _tables_with_rows(conn: psycopg.Connection[Any]) -> list[str]:
    found = []
    for name in _existing_tables(conn):
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(config.APP_SCHEMA, name))
        row = conn.execute(query).fetchone()
        if row is not None and row[0]:
            found.append(name)
    return found


def _refusal(tables: Sequence[str]) -> SeedRefused:
    return SeedRefused(
        f"the {config.APP_SCHEMA!r} schema already holds rows (in {', '.join(tables)}); nothing was changed. "
        "Seed into an empty database, or pass replace=True (command line: --replace) to truncate "
        "the app tables and seed again."
    )


def app_schema_sql() -> str:
    """The DDL of the ``app`` schema (idempotent: CREATE ... IF NOT EXISTS)."""
    return (config.SQL_DIR / "app_schema.sql").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _SecondaryObject:
    """A secondary index or a foreign key of an app table, as the catalog defines it."""

    schema: str
    table: str
    name: str
    definition: str
    kind: str  # "index" or "foreign key"

    def drop(self) -> sql.Composed:
        if self.kind == "index":
            return sql.SQL("DROP INDEX {}").format(sql.Identifier(self.schema, self.name))
        return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(self.schema, self.table), sql.Identifier(self.name)
        )

    def create(self, conn: psycopg.Connection[Any]) -> bytes:
        if self.kind == "index":  # pg_get_indexdef: a complete CREATE INDEX statement
            return self.definition.encode("utf-8")
        head = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            sql.Identifier(self.schema, self.table), sql.Identifier(self.name)
        )
        return head.as_bytes(conn) + self.definition.encode("utf-8")


def _secondary_objects(conn: psycopg.Connection[Any]) -> list[_SecondaryObject]:
    """Indexes that back no constraint (the primary keys stay) and foreign keys of the app tables."""
    params = (config.APP_SCHEMA, list(TABLE_ORDER))
    indexes = conn.execute(
        "SELECT n.nspname, t.relname, ic.relname, pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY i.indexrelid",
        params,
    ).fetchall()
    foreign_keys = conn.execute(
        "SELECT n.nspname, t.relname, c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE c.contype = 'f' AND n.nspname = %s AND t.relname = ANY(%s) ORDER BY c.oid",
        params,
    ).fetchall()
    return [_SecondaryObject(str(r[0]), str(r[1]), str(r[2]), str(r[3]), "index") for r in indexes] + [
        _SecondaryObject(str(r[0]), str(r[1]), str(r[2]), str(r[3]), "foreign key") for r in foreign_keys
    ]


# Why indexes and foreign keys are built after COPY rather than maintained row by row: measured
# on the large scale (7M rows, 1.1 GB of CSV), COPY with them in place took 182 s, without them
# plus the rebuild 69 s (53 s with FREEZE); on the small scale 1.1-1.4 s against 0.4-0.7 s.

#: Memory for the index builds after a deferred load (this transaction only).
_INDEX_BUILD_MEMORY = "256MB"


@dataclass(frozen=True)
class DatabaseLoad:
    """What :func:`load_database` did: rows per table as COPY reported them and the timings."""

    rows: dict[str, int]
    copy_table_s: dict[str, float]
    total_s: float
    rebuild_s: float
    deferred_constraints: bool
    frozen: bool


def load_database(
    conninfo: str, files: Mapping[str, Path], *, replace: bool, defer_constraints: bool = True
) -> DatabaseLoad:
    """Create the schema and COPY every file, all in one transaction (a failure leaves nothing).

    SeedRefused when the app tables hold rows and not ``replace``; with ``replace`` they are
    truncated (CASCADE) first. ``defer_constraints`` (the default) drops the secondary indexes
    and foreign keys before COPY and re-creates them from their catalog definitions afterwards,
    which validates every foreign key in one pass (measured: several times faster). Tables created or
    truncated in the transaction are loaded with ``COPY ... FREEZE``.
    """
    started = time.perf_counter()
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    rebuild_s = 0.0
    with psycopg.connect(conninfo, application_name="governance-seed") as conn:
        drop_if_partitioned(conn, replace=replace)  # re-created plain below, partitioned again after the load
        existed = _existing_tables(conn)
        conn.execute(app_schema_sql().encode("utf-8"))
        tables = [sql.Identifier(config.APP_SCHEMA, name) for name in TABLE_ORDER]
        # Nobody may write the tables between the emptiness check and the commit.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(tables)))
        occupied = _tables_with_rows(conn)
        if occupied and not replace:
            raise _refusal(occupied)
        if occupied:
            conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(tables)))
        # FREEZE needs tables created or truncated in this transaction.
        frozen = bool(occupied) or not existed
        secondary = _secondary_objects(conn) if defer_constraints else []
        for item in secondary:
            conn.execute(item.drop())
        with conn.cursor() as cursor:
            for name in TABLE_ORDER:
                t0 = time.perf_counter()
                rows[name] = copy_csv_file(cursor, name, TABLE_COLUMNS[name], files[name], freeze=frozen)
                seconds[name] = time.perf_counter() - t0
                log.info("copied app.%s: %d rows in %.1fs", name, rows[name], seconds[name])
        if secondary:
            t0 = time.perf_counter()
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (_INDEX_BUILD_MEMORY,))
            for item in secondary:  # indexes first: the foreign-key checks use them
                conn.execute(item.create(conn))
            rebuild_s = time.perf_counter() - t0
            log.info("rebuilt %d indexes and foreign keys in %.1fs", len(secondary), rebuild_s)
        conn.commit()
    return DatabaseLoad(rows, seconds, time.perf_counter() - started, rebuild_s, defer_constraints, frozen)


def analyze(conninfo: str) -> float:
    """ANALYZE every app table (fresh statistics after a bulk load); returns seconds."""
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-seed") as conn:
        for name in TABLE_ORDER:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(config.APP_SCHEMA, name)))
    return time.perf_counter() - started


def seeded_already(targets: SeedTargets) -> bool:
    """True when the app tables hold rows and the objects bucket exists with objects in it.

    Used by ``seed --if-needed`` (``make airflow``): the embedded S3 server keeps objects in memory,
    so after a restart the database is seeded but its recordings are gone, and both are re-seeded.
    """
    with psycopg.connect(targets.app_conninfo, autocommit=True, application_name="governance-seed") as conn:
        if not _tables_with_rows(conn):
            return False
    if targets.warehouse_conninfo is not None:
        from governance_dev.seed.warehouse import warehouse_seeded

        if not warehouse_seeded(targets.warehouse_conninfo):
            return False
    if targets.dynamodb is not None and targets.call_events_table is not None:
        from governance_dev.seed.events import table_holds_items

        if not table_holds_items(targets.dynamodb, targets.call_events_table):  # moto keeps items in memory
            return False
    if targets.s3 is None or targets.bucket is None:
        return True  # no object store to check
    if not _bucket_exists(targets.s3, targets.bucket):
        return False
    return bool(targets.s3.list_objects_v2(Bucket=targets.bucket, MaxKeys=1).get("KeyCount", 0))


def _check_database(conninfo: str, *, replace: bool) -> None:
    with psycopg.connect(conninfo, autocommit=True, application_name="governance-seed") as conn:
        occupied = _tables_with_rows(conn)
    if occupied and not replace:
        raise _refusal(occupied)


# ------------------------------------------------------------------------------------------ objects


def _bucket_exists(s3: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def _seeded_objects_exist(s3: Any, bucket: str) -> bool:
    for prefix in OBJECT_PREFIXES:
        if s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0):
            return True
    return False


def ensure_bucket(s3: Any, bucket: str) -> bool:
    """Create ``bucket`` if missing; enable versioning and default encryption; returns whether it was created."""
    created = False
    if not _bucket_exists(s3, bucket):
        region = getattr(getattr(s3, "meta", None), "region_name", None) or "us-east-1"
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        created = True
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # Recordings, transcripts and exports are encrypted at rest by default (policy 4.1).
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    return created


def delete_seeded_objects(s3: Any, bucket: str) -> int:
    """Delete every version and delete marker under the seeder's prefixes; returns how many."""
    deleted = 0
    paginator = s3.get_paginator("list_object_versions")
    for prefix in OBJECT_PREFIXES:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            targets = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            ]
            for start in range(0, len(targets), 1000):
                batch = targets[start : start + 1000]
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                deleted += len(batch)
    return deleted


def upload_objects(
    s3: Any, bucket: str, objects: Sequence[CallObjects], *, seed: int, workers: int = DEFAULT_UPLOAD_WORKERS
) -> tuple[int, int]:
    """Upload each call's recording (WAV) and transcript (JSON) concurrently; returns (objects,
    bytes). Bodies are generated in the workers, so memory holds only what is in flight."""

    def put(spec: CallObjects) -> tuple[int, int]:
        body = wav_bytes(seed, spec.call_id, spec.recording_bytes)
        s3.put_object(Bucket=bucket, Key=spec.recording_key, Body=body, ContentType="audio/wav")
        count, size = 1, len(body)
        if spec.transcript is not None and spec.transcript_key is not None:
            document = transcript_bytes(spec.transcript)
            s3.put_object(
                Bucket=bucket, Key=spec.transcript_key, Body=document, ContentType="application/json"
            )
            count, size = count + 1, size + len(document)
        return count, size

    # More threads than the client's connection pool only churn connections.
    pool_size = getattr(getattr(getattr(s3, "meta", None), "config", None), "max_pool_connections", None)
    if isinstance(pool_size, int) and pool_size > 0:
        workers = min(workers, pool_size)
    total_objects = total_bytes = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="seed-upload") as pool:
        for count, size in pool.map(put, objects):
            total_objects += count
            total_bytes += size
    return total_objects, total_bytes


# ------------------------------------------------------------------------------------------ processors


def _error_code(body: bytes) -> str:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "")
    return str(error or "")


def _post_json(url: str, payload: Mapping[str, Any] | None, headers: Mapping[str, str]) -> dict[str, Any]:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8") if payload is not None else b"{}"
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        # The error body may echo the records: report the endpoint, the status and the code only.
        code = _error_code(exc.read())
        endpoint = "/".join(url.rsplit("/", 2)[-2:])
        raise SeedError(f"{endpoint} answered HTTP {exc.code} {code}".rstrip()) from None
    except urllib.error.URLError as exc:
        raise SeedError(f"cannot reach the processor stand-in: {exc.reason}") from None
    return answer if isinstance(answer, dict) else {}


def _batches(records: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def load_payments(
    url: str,
    api_key: str | None,
    customers: Sequence[dict[str, Any]],
    charges: Sequence[dict[str, Any]],
    *,
    replace: bool,
) -> dict[str, int]:
    """Customers, then their charges, into the payments stand-in; returns counts loaded."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if replace:
        _post_json(f"{base}/_admin/reset", None, headers)
    loaded = {"customers": 0, "charges": 0}
    for batch in _batches(customers, PROCESSOR_BATCH):
        loaded["customers"] += int(
            _post_json(f"{base}/_admin/load", {"customers": list(batch)}, headers)
            .get("loaded", {})
            .get("customers", 0)
        )
    for batch in _batches(charges, PROCESSOR_BATCH):
        loaded["charges"] += int(
            _post_json(f"{base}/_admin/load", {"charges": list(batch)}, headers)
            .get("loaded", {})
            .get("charges", 0)
        )
    return loaded


def load_crm(
    url: str, api_key: str | None, contacts: Sequence[dict[str, Any]], *, replace: bool
) -> dict[str, int]:
    """Contacts (with their notes and activities) into the crm stand-in; returns counts loaded."""
    base = url.rstrip("/")
    headers = {"X-API-Key": api_key} if api_key else {}
    if replace:
        _post_json(f"{base}/_admin/reset", None, headers)
    loaded = 0
    for batch in _batches(contacts, PROCESSOR_BATCH // 2):
        loaded += int(
            _post_json(f"{base}/_admin/load", {"contacts": list(batch)}, headers)
            .get("loaded", {})
            .get("contacts", 0)
        )
    return {"contacts": loaded}


def support_desk_requesters(contacts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The support desk's requesters: every crm contact, with a ticket per crm note (the people who
    asked sales or support something also wrote to the help desk). Deterministic, like the rest."""
    requesters = []
    for contact in contacts:
        name = " ".join(p for p in (contact.get("first_name"), contact.get("last_name")) if p) or None
        tickets = [{"subject": "Support request", "body": note.get("body"), "status": "closed"}
                   for note in contact.get("notes") or []]  # fmt: skip
        requesters.append({"email": contact.get("email"), "phone": contact.get("phone"), "name": name,
                           "tickets": tickets})  # fmt: skip
    return requesters


def load_support_desk(url: str, requesters: Sequence[dict[str, Any]], *, replace: bool) -> dict[str, int]:
    """Requesters (with tickets) into the support_desk stand-in (its admin endpoints, loopback only)."""
    base = url.rstrip("/")
    if replace:
        _post_json(f"{base}/_admin/reset", None, {})
    loaded = 0
    for batch in _batches(requesters, PROCESSOR_BATCH // 2):
        loaded += int(_post_json(f"{base}/_admin/load", {"requesters": list(batch)}, {}).get("loaded", {}).get("requesters", 0))
    return {"requesters": loaded}


# ------------------------------------------------------------------------------------------ entry


@contextmanager
def _work_directory(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="governance-seed-") as tmp:
        yield Path(tmp)


def seed_reference_deployment(
    targets: SeedTargets,
    *,
    scale: str,
    seed: int = DEFAULT_SEED,
    work_dir: Path | None = None,
    replace: bool = False,
    upload_workers: int = DEFAULT_UPLOAD_WORKERS,
    defer_constraints: bool = True,
    partitioned_usage_events: bool = False,
) -> SeedReport:
    """Seed the reference deployment at ``scale`` ("small" or "large") into ``targets``.

    Deterministic: the same scale and seed give the same rows, objects and processor records.
    Raises SeedRefused (before changing anything) when the app tables hold rows or the bucket
    holds recordings or transcripts, unless ``replace`` (then they are emptied first). CSV files
    stay in ``work_dir`` when given, else in a temporary directory removed afterwards.
    ``partitioned_usage_events``: ``app.usage_events`` range-partitioned by month on its age column
    after the load (:mod:`governance_dev.seed.partitions`).
    """
    scale_spec(scale)  # an unknown scale fails before anything else
    started = time.perf_counter()
    _check_database(targets.app_conninfo, replace=replace)
    if targets.warehouse_conninfo is not None:
        from governance_dev.seed.warehouse import check_warehouse

        check_warehouse(targets.warehouse_conninfo, replace=replace)
    use_events = targets.dynamodb is not None and targets.call_events_table is not None
    if use_events and not replace:
        from governance_dev.seed.events import EventStoreRefused, table_holds_items

        if table_holds_items(targets.dynamodb, str(targets.call_events_table)):
            raise EventStoreRefused(
                f"the call-event table {targets.call_events_table!r} already holds items; nothing was changed. "
                "Use an empty table, or pass replace=True (command line: --replace)."
            )
    use_objects = targets.s3 is not None and targets.bucket is not None
    if use_objects and not replace and _bucket_exists(targets.s3, str(targets.bucket)):
        if _seeded_objects_exist(targets.s3, str(targets.bucket)):
            raise SeedRefused(
                f"bucket {targets.bucket!r} already holds recordings or transcripts; nothing was changed. "
                "Use an empty bucket, or pass replace=True (command line: --replace)."
            )

    with _work_directory(work_dir) as directory:
        t0 = time.perf_counter()
        data: ReferenceData = generate_reference_data(scale, seed)
        files = write_csv_files(data, directory)
        generate_s = time.perf_counter() - t0
        csv_bytes = sum(path.stat().st_size for path in files.values())
        log.info(
            "generated %d rows (%d CSV bytes) in %.1fs",
            sum(data.row_counts().values()),
            csv_bytes,
            generate_s,
        )

        loaded = load_database(
            targets.app_conninfo, files, replace=replace, defer_constraints=defer_constraints
        )
        rows = loaded.rows
        expected = data.row_counts()
        if rows != expected:  # COPY reports what it stored: a mismatch is a seeder bug
            raise SeedError(f"COPY stored {rows} rows, expected {expected}")
        if partitioned_usage_events:  # the monthly range-partitioned variant (governance_dev.seed.partitions)
            partition_usage_events(targets.app_conninfo)
        analyze_s = analyze(targets.app_conninfo)
        warehouse_rows: dict[str, int] = {}
        if targets.warehouse_conninfo is not None:
            from governance_dev.seed.warehouse import load_warehouse

            warehouse_rows = load_warehouse(targets.app_conninfo, targets.warehouse_conninfo, replace=replace).rows
        event_items = 0
        if use_events:
            from governance_dev.seed.events import load_call_events

            event_items = load_call_events(targets.app_conninfo, targets.dynamodb, str(targets.call_events_table),
                                           scale=scale, replace=replace).items  # fmt: skip
        kept_files = dict(files) if work_dir is not None else {}

    objects = object_bytes = 0
    t0 = time.perf_counter()
    if use_objects:
        s3, bucket = targets.s3, str(targets.bucket)
        ensure_bucket(s3, bucket)
        if replace:
            delete_seeded_objects(s3, bucket)
        objects, object_bytes = upload_objects(s3, bucket, data.objects, seed=seed, workers=upload_workers)
        log.info("uploaded %d objects (%d bytes)", objects, object_bytes)
    else:
        log.warning("no object store given: recordings and transcripts were not uploaded")
    objects_s = time.perf_counter() - t0

    processor_records: dict[str, int] = {}
    t0 = time.perf_counter()
    if targets.payments_url:
        counts = load_payments(
            targets.payments_url,
            targets.payments_api_key,
            data.payments_customers,
            data.payments_charges,
            replace=replace,
        )
        processor_records.update({f"{config.PAYMENTS_CONN_ID}.{k}": v for k, v in counts.items()})
    if targets.crm_url:
        counts = load_crm(targets.crm_url, targets.crm_api_key, data.crm_contacts, replace=replace)
        processor_records.update({f"{config.CRM_CONN_ID}.{k}": v for k, v in counts.items()})
    if targets.support_desk_url:
        counts = load_support_desk(targets.support_desk_url, support_desk_requesters(data.crm_contacts), replace=replace)
        processor_records.update({f"{config.SUPPORT_DESK_CONN_ID}.{k}": v for k, v in counts.items()})
    processors_s = time.perf_counter() - t0
    if processor_records:
        log.info("loaded processor records: %s", processor_records)

    return SeedReport(
        scale=scale,
        seed=seed,
        rows=rows,
        csv_bytes=csv_bytes,
        objects=objects,
        object_bytes=object_bytes,
        processor_records=processor_records,
        generate_s=generate_s,
        copy_s=loaded.total_s,
        copy_table_s=loaded.copy_table_s,
        rebuild_s=loaded.rebuild_s,
        objects_s=objects_s,
        processors_s=processors_s,
        analyze_s=analyze_s,
        total_s=time.perf_counter() - started,
        csv_files=kept_files,
        warehouse_rows=warehouse_rows,
        event_items=event_items,
    )
