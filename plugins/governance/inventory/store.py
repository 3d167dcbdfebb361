"""Snapshots in ``governance.transfer_inventory`` and the published report in the object store.

Both writes are idempotent: a snapshot is upserted by run id, the report's objects are put under
keys fixed by the run (and the ``latest/`` copy), so a retried or cleared run rewrites the same
rows and objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from governance.config import objects_bucket
from governance.datamap.model import DataMap
from governance.inventory.model import SubprocessorList
from governance.inventory.reconcile import Inventory, NoticeEntry
from governance.lineage import record_object_write

REPORT_PREFIX = "governance/transfer-inventory/"
CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv; charset=utf-8", ".html": "text/html; charset=utf-8"}

UPSERT_SQL = """
INSERT INTO governance.transfer_inventory
    (run_id, inventoried_at, list_version, list_sha256, datamap_version, datamap_sha256, notice_version,
     is_clean, violation_count, entries, violations, report_uri)
VALUES (%(run_id)s, %(inventoried_at)s, %(list_version)s, %(list_sha256)s, %(datamap_version)s,
        %(datamap_sha256)s, %(notice_version)s, %(is_clean)s, %(violation_count)s, %(entries)s,
        %(violations)s, %(report_uri)s)
ON CONFLICT (run_id) DO UPDATE SET
    inventoried_at = EXCLUDED.inventoried_at, list_version = EXCLUDED.list_version,
    list_sha256 = EXCLUDED.list_sha256, datamap_version = EXCLUDED.datamap_version,
    datamap_sha256 = EXCLUDED.datamap_sha256, notice_version = EXCLUDED.notice_version,
    is_clean = EXCLUDED.is_clean, violation_count = EXCLUDED.violation_count,
    entries = EXCLUDED.entries, violations = EXCLUDED.violations, report_uri = EXCLUDED.report_uri
"""


def report_bucket() -> str:
    """``GOVERNANCE_INVENTORY_BUCKET``, else the objects bucket."""

    return os.environ.get("GOVERNANCE_INVENTORY_BUCKET") or objects_bucket()


def record_snapshot(
    conn: psycopg.Connection[Any],
    *,
    run_id: str,
    inventory: Inventory,
    declared: SubprocessorList,
    datamap: DataMap,
    report_uri: str | None,
) -> None:
    """Upsert this run's snapshot (committed by the caller's transaction)."""
    conn.execute(UPSERT_SQL, {
        "run_id": run_id, "inventoried_at": inventory.as_of, "list_version": declared.version,
        "list_sha256": declared.sha256, "datamap_version": datamap.version, "datamap_sha256": datamap.version_hash,
        "notice_version": declared.customer_notice.version, "is_clean": inventory.is_clean,
        "violation_count": len(inventory.violations),
        "entries": Jsonb([e.as_json() for e in inventory.entries]),
        "violations": Jsonb([{"kind": v.kind, "subject": v.subject, "message": v.message} for v in inventory.violations]),
        "report_uri": report_uri,
    })  # fmt: skip


def notified_baseline(conn: psycopg.Connection[Any], version: str) -> dict[str, NoticeEntry] | None:
    """The list customers were told about: the latest snapshot of ``version``, or None."""
    row = conn.execute(
        "SELECT entries FROM governance.transfer_inventory WHERE list_version = %s "
        "ORDER BY inventoried_at DESC, run_id DESC LIMIT 1",
        (version,),
    ).fetchone()
    if row is None:
        return None
    entries = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return {
        str(e["name"]): NoticeEntry(
            countries=tuple(str(t["country"]) for t in e.get("transfers", [])),
            data_categories=tuple(str(c) for c in e.get("data_categories", [])),
        )
        for e in entries
    }


def latest_fingerprint(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """(list sha256, data map sha256) of the latest snapshot, or None when there is none."""
    row = conn.execute(
        "SELECT list_sha256, datamap_sha256 FROM governance.transfer_inventory ORDER BY inventoried_at DESC LIMIT 1"
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def run_key(inventory: Inventory) -> str:
    return inventory.as_of.strftime("%Y%m%dT%H%M%SZ")


def publish_report(s3: Any, bucket: str, inventory: Inventory, files: Mapping[str, bytes]) -> str:
    """Put the files under ``governance/transfer-inventory/<version>/<as-of>/`` and ``latest/``;
    return the versioned HTML report's URI. Records the prefix written for lineage."""

    versioned = f"{REPORT_PREFIX}{inventory.list_version}/{run_key(inventory)}/"
    for prefix in (versioned, f"{REPORT_PREFIX}latest/"):
        for name, body in files.items():
            suffix = name[name.rfind(".") :]
            s3.put_object(Bucket=bucket, Key=prefix + name, Body=body, ContentType=CONTENT_TYPES.get(suffix, "application/octet-stream"))
    record_object_write(bucket, REPORT_PREFIX, objects=2 * len(files))
    return f"s3://{bucket}/{versioned}transfer_inventory.html"
