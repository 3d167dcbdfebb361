"""datamap_drift: is the data map still a true picture of the systems it governs?

Drift that breaks a privacy promise (a personal-looking column or object prefix the map does not
know, so export and erasure would miss it; a mapped table or column that is gone, so plans would
fail) fails the run at once, without retries (the same map and systems give the same answer), and
alerts through the failure notifier. Drift that only costs time or tidiness (a missing index, an
unmapped non-personal column) is reported as a warning. Findings come from
:func:`governance.datamap.drift.drift_findings`, the same as ``python -m governance
validate-datamap --live``, placed in the file actually read (``GOVERNANCE_DATAMAP`` or
``include/datamap.yaml``); the task log gets each placed finding (names, kinds and counts, never a
value) and every report is kept in ``governance.datamap_drift_reports``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.dynamodb import dynamodb_client
from governance.datamap import load_datamap
from governance.datamap.drift import (
    drift_findings,
    find_drift,
    find_item_drift,
    find_object_drift,
    finding_counts,
)
from governance.datamap.model import DataMapError
from governance.db import connect, conninfo_for
from governance.migrations import ensure_schema
from governance.objectstore import s3_client

if TYPE_CHECKING:
    from governance.datamap.drift import DriftFinding
    from governance.datamap.model import DataMap

log = logging.getLogger(__name__)


def _fail(message: str) -> NoReturn:
    """Fail the task without retrying: the same map against the same systems gives the same answer."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _datamap(path: str | None = None) -> DataMap:
    return load_datamap(Path(path) if path else None)


def validate_map() -> dict[str, Any]:
    """Load and validate the map; return the file read and its identity. A broken map fails at
    once (no retry), every problem placed in the file."""

    try:
        datamap = _datamap()
    except DataMapError as exc:
        _fail(f"the data map is invalid ({len(exc.issues)} issue(s)):\n{exc}")
    log.info("data map %s: version %s, sha256 %s", datamap.source, datamap.version, datamap.version_hash)
    return {"file": datamap.source, "version": datamap.version, "sha256": datamap.version_hash,
            "counts": datamap.counts()}  # fmt: skip


def database_drift(datamap: DataMap | None = None) -> dict[str, Any]:
    """Every postgres system of the map against its live database (catalogue and samples)."""

    datamap = datamap or _datamap()
    urls = {system.name: conninfo_for(system.connection_id) for system in datamap.postgres_systems}
    return find_drift(datamap, urls).to_dict()


def object_store_drift(datamap: DataMap | None = None) -> dict[str, Any]:
    """Every object-store system of the map against its bucket, and every DynamoDB table against
    the live table (``item_stores``)."""

    datamap = datamap or _datamap()
    clients = {system.name: s3_client(system.connection_id) for system in datamap.object_systems}
    report = find_object_drift(datamap, clients).to_dict()
    # The item stores (DynamoDB) ride with the object stores: both are checked by sampling, not
    # by a catalogue, and both are outside the databases.
    item_clients = {system.name: dynamodb_client(system.connection_id) for system in datamap.dynamodb_systems}
    items = find_item_drift(datamap, item_clients)
    report["item_stores"] = items.to_dict()
    report["is_clean"] = bool(report["is_clean"]) and items.is_clean
    return report


def classify(database: dict[str, Any], objects: dict[str, Any]) -> tuple[list[DriftFinding], list[DriftFinding]]:
    """Split findings into (blocking, warnings)."""

    found = drift_findings(database, objects)
    return [f for f in found if f.blocking], [f for f in found if not f.blocking]


def describe_findings(datamap: DataMap, findings: list[DriftFinding]) -> str:
    """Kinds and counts, then one placed line per finding (names, kinds, counts; no value)."""

    counts = ", ".join(f"{kind} {n}" for kind, n in finding_counts(findings).items()) or "none"
    return "\n".join([f"{len(findings)} finding(s): {counts}", *(f"  {f.placed(datamap)}" for f in findings)])


def record_report(
    *, run_id: str, checked_at: datetime, datamap_info: dict[str, Any], database: dict[str, Any], objects: dict[str, Any]
) -> dict[str, Any]:
    """Store the run's report (idempotent per run), then fail on blocking drift."""

    datamap = _datamap(datamap_info.get("file"))
    blocking_findings, warning_findings = classify(database, objects)
    blocking = [f.placed(datamap) for f in blocking_findings]
    warnings = [f.placed(datamap) for f in warning_findings]
    log.info("data map %s against the live systems: %s", datamap.source,
             describe_findings(datamap, blocking_findings + warning_findings))  # fmt: skip
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    ensure_schema(conninfo)
    report = {"file": datamap.source, "database": database, "objects": objects, "blocking": blocking,
              "warnings": warnings}  # fmt: skip
    with connect(conninfo) as conn:
        conn.execute(
            """
            INSERT INTO governance.datamap_drift_reports
                (run_id, checked_at, datamap_version, datamap_sha256, is_clean, blocking, warnings, report)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)
            ON CONFLICT (run_id) DO UPDATE SET checked_at = EXCLUDED.checked_at,
                datamap_version = EXCLUDED.datamap_version, datamap_sha256 = EXCLUDED.datamap_sha256,
                is_clean = EXCLUDED.is_clean, blocking = EXCLUDED.blocking, warnings = EXCLUDED.warnings,
                report = EXCLUDED.report
            """,
            (run_id, checked_at, datamap_info["version"], datamap_info["sha256"], not (blocking or warnings),
             len(blocking), len(warnings), json.dumps(report)),
        )  # fmt: skip
    if blocking:
        _fail(
            f"the data map misses or misnames {len(blocking)} thing(s); fix {datamap.source} (or the systems):\n  "
            + "\n  ".join(blocking)
        )
    return {"file": datamap.source, "blocking": 0, "warnings": len(warnings), "messages": warnings}
