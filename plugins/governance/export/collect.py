"""Collecting a person's data into an encrypted export bundle, driven only by the data map.

``export_bundle_to_s3`` is the bundle writer. It first resolves the person in every database of
the map, inside one ``REPEATABLE READ READ ONLY`` transaction per database (resolution, the
source counts and every export query see the same snapshot), narrowed to one person by the rule
erasure uses (:mod:`governance.resolution`): rows of someone who shares an identity with the
person (a household phone) are left out with everything they own, and identities that fit
several people equally well are refused (:class:`AmbiguousSubject`) before any processor is
asked or anything is written. It then asks each processor through its declared look-up and
export calls (one that is down fails the export before any row is streamed), streams each
table's rows into the ZIP in the chosen formats (one read per table feeds every format:
:meth:`BundleWriter.entries`), then the objects tied to those rows, then what
the processors returned, then ``index.html`` and ``manifest.json``. The ZIP goes through the age
encryptor into an S3 multipart upload with server-side encryption: the bundle is never whole in
memory or on disk, and an exception aborts the upload, so a failed collection leaves no object
behind.

Nothing here names a table, prefix or processor: adding one to the data map brings it into the
bundle.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from governance.connectors.base import processor_connector
from governance.connectors.dynamodb import dynamodb_client, person_items, person_queries
from governance.connectors.postgres import (
    count_mention_only,
    count_rows,
    mention_only_exports,
    resolve_in_database,
    stream_mention_only,
    stream_table,
)
from governance.datamap.model import DataMap, DynamoDBSystem, ObjectStoreSystem, Processor, TableRef
from governance.datamap.plans import ObjectStep, ResolutionPlan, build_resolution_plan, excluded_param
from governance.db import conninfo_for
from governance.export.age import DEFAULT_WORK_FACTOR, AgeWriter
from governance.export.bundle import (
    INDEX_PATH,
    BundleManifest,
    BundleWriter,
    UnsafeBundlePath,
    safe_path,
    safe_segment,
)
from governance.export.formats import FORMATS, DataFormat, write_formats
from governance.export.index import (
    BundleContents,
    ItemExport,
    PrefixExport,
    ProcessorExport,
    TableExport,
    render_index,
    system_counts,
)
from governance.export.storage import MultipartUploadSink, fetch_objects
from governance.identity import SubjectIdentities
from governance.objectstore import s3_client
from governance.resolution import Ambiguity, describe_ambiguities, plan_systems

if TYPE_CHECKING:
    import psycopg

    from governance.connectors.postgres import DatabaseFootprint

_COMPRESSIBLE_SUFFIXES = (".json", ".txt", ".csv", ".html", ".xml", ".vtt", ".srt")
INDEX_FILES_SHOWN = 6  # object files the index links to per prefix (the manifest lists them all)


class ExportCollectionError(RuntimeError):
    """The bundle could not be collected (the message names systems, never a person)."""


class AmbiguousSubject(ExportCollectionError):
    """The identities given fit more than one person equally well (two callers of one business
    sharing a household phone, nothing to tell them apart): the export is refused before any
    processor is asked or anything is written. There is no override: one requester never gets
    two people's data. The message gives tables, businesses and counts, never an identity."""

    def __init__(self, ambiguities: Sequence[Ambiguity], *, tables_read: Sequence[str] = ()) -> None:
        self.ambiguities = list(ambiguities)
        self.tables_read = sorted(tables_read)
        super().__init__(
            "export refused before anything was collected: the identities given fit more than one person ("
            + describe_ambiguities(self.ambiguities)
            + "). Record a new request with the identity that tells the people apart (for example the e-mail "
            "address as well as the shared phone); a bundle never holds another person's data, so this cannot "
            "be overridden."
        )

    def to_dict(self) -> list[dict[str, Any]]:
        """The ambiguities as counts (safe for XCom and the request's outcome)."""
        return [{"table": str(a.table), "business_id": a.scope, "rows": a.rows} for a in self.ambiguities]


@dataclass(frozen=True)
class ExportSubject:
    """Who the bundle is for: the request, the person's identities and the business scope."""

    request_id: str
    identities: SubjectIdentities
    received_on: date
    business_scope: tuple[int, ...] | None = None

    def __repr__(self) -> str:  # identities stay out of logs and tracebacks
        return f"ExportSubject({self.request_id}, kinds={[k for k, _ in self.identities.items()]})"


@dataclass(frozen=True)
class ExportTargets:
    """How to reach the systems the map names: by connection id (Airflow's, or a benchmark's)."""

    conninfo_for: Callable[[str], str]
    s3_for: Callable[[str], Any]
    processor_client_for: Callable[[Processor], Any]
    # connection id -> DynamoDB client (the DynamoDBHook's); None: no DynamoDB system is reached.
    dynamodb_for: Callable[[str], Any] | None = None

    @classmethod
    def from_airflow(cls, *, processor_attempts: int = 5, processor_backoff_s: float = 0.5) -> ExportTargets:
        from functools import lru_cache


        return cls(
            conninfo_for=conninfo_for,
            s3_for=lru_cache(maxsize=None)(s3_client),
            processor_client_for=lambda p: processor_connector(
                p, attempts=processor_attempts, backoff_s=processor_backoff_s
            ),
            dynamodb_for=lru_cache(maxsize=None)(dynamodb_client),
        )


@dataclass(frozen=True)
class BundleSummary:
    """What a bundle holds: counts, sizes and checksums (safe for XCom, logs and the ledger)."""

    request_id: str
    generated_at: str
    data_map_version: str
    formats: list[str]
    files: int
    files_digest: str
    plaintext_bytes: int
    ciphertext_bytes: int
    ciphertext_sha256: str
    bundle_counts: dict[str, int]
    source_counts: dict[str, int]
    found_data: bool
    tables_read: list[str] = field(default_factory=list)
    prefixes_read: list[str] = field(default_factory=list)
    # Rows the identities found but narrowing left out as another person's, per table (counts for
    # staff; the bundle itself never mentions them).
    excluded_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _ProcessorResult:
    export: ProcessorExport
    documents: list[tuple[str, Any]]  # (bundle path, JSON document)


def collect_processors(
    datamap: DataMap, plan: ResolutionPlan, subject: ExportSubject, targets: ExportTargets
) -> list[_ProcessorResult]:
    """Look the person up at every processor the map declares and export what each holds."""
    searchable = {step.processor: step for step in plan.processors}
    given = {k for k, _ in subject.identities.items()}
    results: list[_ProcessorResult] = []
    for processor in datamap.processors:
        if subject.business_scope:
            reason = "they hold data for our own account, not for the business that made the request"
            results.append(_ProcessorResult(ProcessorExport(processor.name, 0, (), False, reason), []))
            continue
        step = searchable.get(processor.name)
        if step is None or not set(step.identity_kinds) & given:
            kinds = " or ".join(processor.lookup_identity_kinds) or "no identity"
            reason = f"they can look people up only by {kinds.replace('_', ' ')}"
            results.append(_ProcessorResult(ProcessorExport(processor.name, 0, (), False, reason), []))
            continue
        client = targets.processor_client_for(processor)
        try:
            records = client.lookup(subject.identities)
            documents: list[tuple[str, Any]] = []
            for record in records:
                folder = safe_path("processors", processor.name, safe_segment(record.record_id))
                exported = client.export(record.record_id) if processor.exports_records else {}  # every page
                if not exported:
                    documents.append((f"{folder}/record.json", dict(record.document)))
                for name, docs in sorted(exported.items()):
                    documents.append((f"{folder}/{safe_segment(name)}.json", docs))
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
        files = tuple(sorted(path for path, _ in documents))
        results.append(_ProcessorResult(ProcessorExport(processor.name, len(records), files, True), documents))
    return results


def _compressible(key: str) -> bool:
    return key.lower().endswith(_COMPRESSIBLE_SUFFIXES)


def _object_path(system: str, key: str) -> str:
    try:
        return safe_path("files", system, key)
    except UnsafeBundlePath:
        # A key that would not stay inside the folder when unzipped gets a stable hashed name.
        extension = key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else ""
        suffix = f".{extension}" if extension.isalnum() and len(extension) <= 8 else ""
        return safe_path("files", system, "other", safe_segment(key + "\0") + suffix)


def _referenced_keys(step: ObjectStep, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    if step.key_column is None:
        return set()
    return {str(r[step.key_column]) for r in rows if r.get(step.key_column)}


@dataclass
class DatabaseSnapshot:
    """One database's open export transaction and what resolution found in it."""

    conn: psycopg.Connection[Any]
    footprint: DatabaseFootprint


def chosen_formats(formats: Sequence[str]) -> list[DataFormat]:
    """The data formats in canonical order; ExportCollectionError when none is chosen."""
    chosen = [f for f in FORMATS if f in set(formats)]
    if not chosen:
        raise ExportCollectionError("choose at least one data format (json, csv, html)")
    return chosen


def export_plan(datamap: DataMap, subject: ExportSubject) -> ResolutionPlan:
    """The resolution plan for the subject's identity kinds and business scope."""
    kinds = [k for k, _ in subject.identities.items()]
    return build_resolution_plan(datamap, kinds, business_scope=bool(subject.business_scope))


def selected_in_sql(plan: ResolutionPlan) -> set[TableRef]:
    """Tables of ``plan`` the export counts and streams without resolving their rows first: rows
    reached only through an owner (no identity column, so narrowing never leaves one out) that
    no later step, mention or object key reads. The plan's count and export statements select
    exactly those rows from the owners' keys, so resolution would only hold them in memory (a
    business user's million usage events) to learn nothing."""
    sources = {o.source for o in plan.objects}
    return {s.table for s in plan.steps if not s.identity_matches and not s.output_params and s.table not in sources}


def text_network_addresses(conn: psycopg.Connection[Any]) -> None:
    """Load ``inet`` and ``cidr`` values as the database's own text (``::ffff:1.2.3.4``, not
    Python's ``::ffff:102:304``), without parsing each one into an ``ipaddress`` object."""
    from psycopg.types.string import TextLoader

    for name in ("inet", "cidr"):
        conn.adapters.register_loader(name, TextLoader)


@contextmanager
def subject_snapshots(
    datamap: DataMap, plan: ResolutionPlan, subject: ExportSubject, targets: ExportTargets
) -> Iterator[dict[str, DatabaseSnapshot]]:
    """Open one ``REPEATABLE READ READ ONLY`` transaction per database and resolve the subject
    in it, narrowed to one person. Raises :class:`AmbiguousSubject` when the identities fit
    several people equally well, before the caller reads anything else; the transactions stay
    open (same snapshot) for the counts and export queries until the block ends."""
    import psycopg


    with ExitStack() as stack:
        conns: dict[str, psycopg.Connection[Any]] = {}
        for system_name in plan_systems(plan):
            system = datamap.postgres_system(system_name)
            conn = stack.enter_context(
                psycopg.connect(targets.conninfo_for(system.connection_id), application_name="governance-export")
            )
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute("SET TIME ZONE 'UTC'")  # timestamps render the same in every run
            text_network_addresses(conn)
            conns[system_name] = conn
        # One resolution across the databases (each in its own snapshot): keys found in one
        # system (the app's call ids) find the rows of the next (the warehouse's call facts).
        # Tables whose rows resolution need not see stay in SQL (see selected_in_sql).
        in_sql = selected_in_sql(plan)
        resolved = resolve_in_database(
            conns, replace(plan, steps=tuple(s for s in plan.steps if s.table not in in_sql)), subject.identities,
            datamap=datamap, scope_ids=list(subject.business_scope or []) or None,
        )  # fmt: skip
        footprint = replace(resolved, plan=plan, params={**resolved.params, **{excluded_param(t): [] for t in in_sql}})
        snapshots = {name: DatabaseSnapshot(conn, footprint) for name, conn in conns.items()}
        if footprint.ambiguities:
            raise AmbiguousSubject(list(footprint.ambiguities), tables_read=[str(s.table) for s in plan.steps])
        yield snapshots
        for snapshot in snapshots.values():
            snapshot.conn.rollback()  # read only: nothing to commit (a no-op once the tables are written)


def write_bundle(
    writer: BundleWriter,
    datamap: DataMap,
    subject: ExportSubject,
    *,
    plan: ResolutionPlan,
    snapshots: Mapping[str, DatabaseSnapshot],
    formats: Sequence[DataFormat],
    targets: ExportTargets,
    generated_at: datetime,
    batch_rows: int = 2000,
) -> tuple[BundleContents, BundleManifest, dict[str, int]]:
    """Collect everything into ``writer`` from the resolved ``snapshots`` (see
    :func:`subject_snapshots`); return what was written, the manifest and the source counts
    (rows per table counted in the export's snapshot, objects found, processor records)."""

    formats = chosen_formats(formats)
    kinds = [k for k, _ in subject.identities.items()]
    contents = BundleContents(
        request_id=subject.request_id,
        received_on=subject.received_on,
        business_scope=subject.business_scope,
        identity_kinds=tuple(sorted(kinds)),
        formats=tuple(formats),
        out_of_scope=tuple(str(t) for t in plan.out_of_scope),
    )
    source_counts: dict[str, int] = {}

    # 1. Processors: one that is down fails the export before any row is streamed.
    processor_results = collect_processors(datamap, plan, subject, targets)

    # 2. Databases: the person's (narrowed) rows, counted and streamed in the resolution's snapshot.
    for system_name, snapshot in sorted(snapshots.items()):
        conn, footprint = snapshot.conn, snapshot.footprint
        # The person's own rows, then (export: include) rows that only mention them, one file per table.
        step_tables = {s.table for s in plan.steps if s.table.system == system_name}
        mention_tables = {m.edge.child for m in footprint.plan.mentions if m.orphan_export is not None}
        for ref in sorted(step_tables | {t for t in mention_tables if t.system == system_name}):
            mentioning = mention_only_exports(footprint, ref)
            count = count_rows(conn, datamap, footprint, ref) if ref in step_tables else 0
            count += sum(count_mention_only(conn, footprint, m) for m in mentioning)
            source_counts[str(ref)] = count
            spec = datamap.table(ref)
            files: list[str] = []
            if count:
                # One read of the table feeds every format: the rows stream once, in pages, and
                # each page goes into every file before the next is fetched.
                files = [safe_path("data", ref.system, f"{ref.table}.{fmt}") for fmt in formats]
                with writer.entries(files, kind="data", dataset=str(ref), formats=formats) as outs:
                    batches = itertools.chain(
                        stream_table(conn, datamap, footprint, ref, batch_rows=batch_rows) if ref in step_tables else (),
                        *(stream_mention_only(conn, footprint, m, batch_rows=batch_rows) for m in mentioning),
                    )  # fmt: skip
                    write_formats(dict(zip(formats, outs, strict=True)), spec.field_names, batches,
                                  title=spec.description or ref.table, description=str(ref))  # fmt: skip
            contents.tables.append(TableExport(ref, count, tuple(files)))
        contents.mentions.update(
            {k: v for k, v in footprint.mention_counts().items() if k.split(".", 1)[0] == system_name}
        )
        conn.rollback()  # read only: ends the snapshot before the objects stream

    # 3. Objects tied to the person's rows, in key order. Keys are worked out first, then the
    #    rows they came from are let go: memory holds keys, not rows, while objects stream.
    object_work = []
    for object_step in plan.objects:
        rows = snapshots[object_step.source.system].footprint.tables[object_step.source].rows
        object_work.append((object_step, object_step.keys_for(rows), _referenced_keys(object_step, rows)))
    for snapshot in snapshots.values():
        for table_footprint in snapshot.footprint.tables.values():
            table_footprint.rows = []
    for object_step, keys, referenced in object_work:
        prefix_system = datamap.system(object_step.prefix.system)
        assert isinstance(prefix_system, ObjectStoreSystem)
        s3 = targets.s3_for(prefix_system.connection_id)
        bucket = prefix_system.bucket.resolve()
        dataset = str(object_step.prefix)
        found = 0
        total = 0
        missing_referenced = 0
        first_files: list[str] = []
        for key, fetched in fetch_objects(s3, bucket, keys):
            if fetched is None:
                missing_referenced += key in referenced
                continue
            path = _object_path(prefix_system.name, key)
            with writer.entry(path, kind="object", dataset=dataset, compress=_compressible(key),
                              size_hint=fetched.size) as out:  # fmt: skip
                for chunk in fetched.chunks():
                    out.write(chunk)
            found += 1
            total += fetched.size
            if len(first_files) < INDEX_FILES_SHOWN:
                first_files.append(path)
        source_counts[dataset] = found
        contents.prefixes.append(PrefixExport(object_step.prefix, found, total, missing_referenced, tuple(first_files)))
        keys.clear()
        referenced.clear()

    # 3b. DynamoDB items: found by key or index Query (never a Scan), streamed into one JSON file
    #     per table, page by page.
    for query in person_queries(datamap, kinds):
        if targets.dynamodb_for is None:
            break
        values = [v for k, v in subject.identities.items() if f"identity:{k}" == query.by]
        client = targets.dynamodb_for(query.connection_id)
        scope = set(subject.business_scope or ())
        # Items past their TTL are expired (DynamoDB deletes them lazily): not exported.
        person = (item for item in person_items(client, query, values, expired_before=int(generated_at.timestamp()))
                  if not scope or query.scope_attribute is None or item.get(query.scope_attribute) in scope)  # fmt: skip
        first = next(person, None)
        item_count = 0
        item_files: tuple[str, ...] = ()
        if first is not None:  # a file only when there is something to put in it
            item_path = safe_path("data", query.system, f"{query.table}.json")
            with writer.entry(item_path, kind="data", dataset=query.where, fmt="json") as item_out:
                item_out.write(b"[")
                for item in itertools.chain([first], person):
                    item_out.write((b",\n" if item_count else b"\n") + json.dumps(item, sort_keys=True, ensure_ascii=False).encode())
                    item_count += 1
                item_out.write(b"\n]\n")
            item_files = (item_path,)
        source_counts[query.where] = item_count
        contents.items.append(ItemExport(query.system, query.table, item_count, item_files))

    # 4. What the processors returned.
    for result in processor_results:
        for path, document in result.documents:
            data = (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
            writer.add_bytes(path, data, kind="processor", dataset=f"processor:{result.export.name}", fmt="json")
        contents.processors.append(result.export)
        if result.export.searched:
            source_counts[f"processor:{result.export.name}"] = result.export.records

    # 5. The page for the person, then the manifest of everything.
    writer.add_bytes(INDEX_PATH, render_index(datamap, contents), kind="index")
    manifest = build_manifest(datamap, contents, writer, generated_at=generated_at)
    writer.add_manifest(manifest)  # the file list streams from the writer's spool
    return contents, manifest, source_counts


def build_manifest(datamap: DataMap, contents: BundleContents, writer: BundleWriter, *, generated_at: datetime) -> BundleManifest:
    categories: set[str] = set()
    tables: dict[str, dict[str, Any]] = {}
    for table in contents.tables:
        spec = datamap.table(table.ref)
        table_categories = sorted({f.data_category for f in spec.fields if f.is_personal})
        tables[str(table.ref)] = {"rows": table.rows, "files": list(table.files), "categories": table_categories}
        if table.rows:
            categories.update(table_categories)
    objects: dict[str, dict[str, Any]] = {}
    for prefix_export in contents.prefixes:
        prefix = datamap.prefix(prefix_export.ref)
        objects[str(prefix_export.ref)] = {
            "objects": prefix_export.objects,
            "bytes": prefix_export.bytes,
            "referenced_missing": prefix_export.referenced_missing,
            "categories": [prefix.data_category],
        }
        if prefix_export.objects:
            categories.add(prefix.data_category)
    processors: dict[str, dict[str, Any]] = {}
    for processor_export in contents.processors:
        processor = datamap.processor(processor_export.name)
        assert processor is not None
        processors[processor_export.name] = {
            "records": processor_export.records,
            "searched": processor_export.searched,
            "reason": processor_export.reason or None,
            "files": list(processor_export.files),
            "categories": sorted(processor.data_categories),
            "recipient": processor.recipient.model_dump() if processor.recipient else None,
        }
        if processor_export.records:
            categories.update(processor.data_categories)
    items: dict[str, dict[str, Any]] = {}
    for item_export in contents.items:
        item_system = datamap.system(item_export.system)
        item_table = item_system.table(item_export.table) if isinstance(item_system, DynamoDBSystem) else None
        item_categories = sorted({a.data_category for a in item_table.attributes if a.is_personal}) if item_table else []
        items[item_export.where] = {"items": item_export.items, "files": list(item_export.files), "categories": item_categories}
        if item_export.items:
            categories.update(item_categories)
    return BundleManifest(
        request_id=contents.request_id,
        generated_at=generated_at.isoformat(),
        received_on=contents.received_on.isoformat(),
        data_map_version=datamap.version,
        data_map_sha256=datamap.version_hash,
        business_scope=list(contents.business_scope) if contents.business_scope else None,
        formats=list(contents.formats),
        files=[],  # streamed into manifest.json from the writer (see BundleWriter.add_manifest)
        tables=tables,
        objects=objects,
        processors=processors,
        mentions=dict(sorted(contents.mentions.items())),
        categories=sorted(categories),
        found_data=contents.found_data,
        files_digest=writer.files_digest,
        notes=[] if contents.found_data else ["We found no data about you in any of the systems searched."],
        systems=system_counts(contents),
        items=items,
    )



def bundle_counts(contents: BundleContents) -> dict[str, int]:
    counts = {str(t.ref): t.rows for t in contents.tables}
    counts.update({str(p.ref): p.objects for p in contents.prefixes})
    counts.update({f"processor:{p.name}": p.records for p in contents.processors if p.searched})
    counts.update({i.where: i.items for i in contents.items})
    return counts


def export_bundle_to_s3(
    datamap: DataMap,
    subject: ExportSubject,
    *,
    formats: Sequence[DataFormat],
    targets: ExportTargets,
    s3: Any,
    bucket: str,
    key: str,
    passphrase: str,
    generated_at: datetime,
    work_factor: int | None = None,
) -> BundleSummary:
    """Collect, zip, encrypt and upload ``subject``'s bundle to ``bucket/key`` in one stream.

    Raises :class:`AmbiguousSubject` (nothing asked, read further or written) when the
    identities fit more than one person."""

    chosen = chosen_formats(formats)
    plan = export_plan(datamap, subject)
    with subject_snapshots(datamap, plan, subject, targets) as snapshots:
        excluded_rows: dict[str, int] = {}
        for snapshot in snapshots.values():
            excluded_rows.update(snapshot.footprint.excluded_counts())
        with MultipartUploadSink(s3, bucket, key) as upload:
            age = AgeWriter(upload, passphrase, work_factor=work_factor or DEFAULT_WORK_FACTOR)
            writer = BundleWriter(age)
            contents, manifest, source_counts = write_bundle(
                writer, datamap, subject, plan=plan, snapshots=snapshots, formats=chosen, targets=targets,
                generated_at=generated_at,
            )  # fmt: skip
            writer.close()
            age.close()
            plaintext_bytes = age.plaintext_bytes
    return BundleSummary(
        request_id=subject.request_id,
        generated_at=manifest.generated_at,
        data_map_version=datamap.version,
        formats=list(manifest.formats),
        files=writer.count + 1,  # and the manifest itself
        files_digest=manifest.files_digest,
        plaintext_bytes=plaintext_bytes,
        ciphertext_bytes=upload.size,
        ciphertext_sha256=upload.sha256,
        bundle_counts=bundle_counts(contents),
        source_counts=source_counts,
        found_data=contents.found_data,
        tables_read=sorted(str(t.ref) for t in contents.tables),
        prefixes_read=sorted(str(p.ref) for p in contents.prefixes),
        excluded_rows=excluded_rows,
    )
