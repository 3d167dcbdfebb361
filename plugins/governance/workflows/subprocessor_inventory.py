"""subprocessor_inventory: who receives which personal data, where, under which safeguard, checked
against what really flows (privacy policy 3.1, 7, 9).

Task bodies of ``dags/subprocessor_inventory.py``:

* :func:`fingerprint_inputs` (the watcher DAG) hashes the subprocessor file and the data map and
  says whether either changed since the last snapshot (the DAG then emits the inputs asset);
* :func:`validate_inputs` checks the data map, the reference data and the subprocessor file,
  failing at once (no retry, no traceback) with every problem placed ``FILE: PATH: MESSAGE``;
* :func:`build_and_publish` reads what flowed (audit ledger, OpenLineage events), reconciles,
  records the snapshot in ``governance.transfer_inventory`` and publishes CSV, JSON and HTML;
* :func:`check_inventory` fails (no retry; the failure notifier alerts) when there are violations.

XCom carries versions, hashes, counts and the report's URI only.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

from governance.config import GOVERNANCE_CONN_ID, OBJECTS_CONN_ID, datamap_path
from governance.datamap import load_datamap
from governance.datamap.model import DataMapError
from governance.db import connect, conninfo_for
from governance.inventory.loader import load_reference, load_subprocessors, subprocessors_path
from governance.inventory.observed import (
    channel_prefixes,
    ledger_observations,
    merge_observations,
    openlineage_events_path,
    openlineage_observations,
)
from governance.inventory.reconcile import build_inventory
from governance.inventory.report import inventory_files
from governance.inventory.store import (
    latest_fingerprint,
    notified_baseline,
    publish_report,
    record_snapshot,
    report_bucket,
)
from governance.ledger import anchor_bucket
from governance.lineage import record_table_read, record_table_write
from governance.migrations import ensure_schema
from governance.objectstore import s3_client

log = logging.getLogger(__name__)

INPUTS_ASSET = "subprocessor_inventory_inputs"
REPORT_ASSET = "subprocessor_transfer_inventory"


class InventoryViolations(RuntimeError):
    """The inventory found violations (the report is published; this fails the run)."""


def _fail(message: str) -> NoReturn:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _load() -> tuple[Any, Any, Any]:
    """(data map, reference, subprocessor list), every problem placed; fails the task when any."""

    try:
        datamap = load_datamap()
        reference = load_reference()
        declared = load_subprocessors(datamap=datamap, reference=reference)
    except DataMapError as exc:  # SubprocessorFileError too
        _fail(f"the inventory's inputs are invalid ({len(exc.issues)} issue(s)):\n{exc}")
    return datamap, reference, declared


def fingerprint_inputs(*, last_emitted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """sha256 of the subprocessor file and the data map, and whether the inventory should run:
    they differ from the latest snapshot's (or there is none) and were not already announced
    (``last_emitted``: the watcher's previous result), so a file that keeps failing validation
    triggers one run and one alert, not one every quarter of an hour."""

    list_sha = hashlib.sha256(subprocessors_path().read_bytes()).hexdigest()
    map_sha = hashlib.sha256(datamap_path().read_bytes()).hexdigest()
    conninfo = conninfo_for(GOVERNANCE_CONN_ID, application_name="governance-inventory")
    ensure_schema(conninfo)
    with connect(conninfo, application_name="governance-inventory") as conn:
        last = latest_fingerprint(conn)

    record_table_read(GOVERNANCE_CONN_ID, "governance", "transfer_inventory")
    announced = last_emitted is not None and (last_emitted.get("list_sha256"), last_emitted.get("datamap_sha256")) == (
        list_sha, map_sha)  # fmt: skip
    changed = last != (list_sha, map_sha) and not announced
    log.info("subprocessor list %s, data map %s: %s", list_sha[:12], map_sha[:12], "changed" if changed else "unchanged")
    return {"list_sha256": list_sha, "datamap_sha256": map_sha, "changed": changed}


def validate_inputs() -> dict[str, Any]:
    """Check every input file; return their versions and hashes."""
    datamap, reference, declared = _load()
    log.info("subprocessor list %s (%s): version %s, %d subprocessors; reference data checked",
             declared.source, declared.sha256[:12], declared.version, len(declared.subprocessors))  # fmt: skip
    return {
        "list_version": declared.version, "list_sha256": declared.sha256,
        "datamap_version": datamap.version, "datamap_sha256": datamap.version_hash,
        "subprocessors": len(declared.subprocessors), "reference_entries": len(reference.dated_entries()),
    }  # fmt: skip


def build_and_publish(*, run_id: str, as_of: datetime) -> dict[str, Any]:
    """Reconcile the declarations, the data map and the observed flows at ``as_of``; record the
    snapshot and publish the report. Returns counts and the report URI (violations by kind)."""

    datamap, reference, declared = _load()
    conninfo = conninfo_for(GOVERNANCE_CONN_ID, application_name="governance-inventory")
    ensure_schema(conninfo)
    with connect(conninfo, application_name="governance-inventory") as conn:
        ledger = ledger_observations(conn, as_of=as_of)
        conn.commit()
        record_table_read(GOVERNANCE_CONN_ID, "governance", "audit_ledger")
        notified = notified_baseline(conn, declared.customer_notice.version)
    observed = merge_observations([ledger, openlineage_observations(openlineage_events_path(), as_of=as_of)])

    bucket = report_bucket()
    prefixes = channel_prefixes(datamap, declared, own_buckets=[bucket, anchor_bucket()])
    inventory = build_inventory(
        declared, datamap, reference, observed=observed, prefixes=prefixes, notified=notified, as_of=as_of
    )
    report_uri = publish_report(s3_client(OBJECTS_CONN_ID), bucket, inventory, inventory_files(inventory))
    with connect(conninfo, application_name="governance-inventory") as conn:
        record_snapshot(conn, run_id=run_id, inventory=inventory, declared=declared, datamap=datamap, report_uri=report_uri)
        conn.commit()
    record_table_write(GOVERNANCE_CONN_ID, "governance", "transfer_inventory", rows=1)
    for violation in inventory.violations:  # names, countries, categories and dates only
        log.warning("%s: %s: %s", violation.kind, violation.subject, violation.message)
    log.info("inventory %s: %d subprocessors, %d violations, report %s", declared.version,
             len(inventory.entries), len(inventory.violations), report_uri)  # fmt: skip
    return {
        "list_version": declared.version, "subprocessors": len(inventory.entries),
        "violations": inventory.counts(), "violation_count": len(inventory.violations),
        "changes_since_notice": len(inventory.changes), "report_uri": report_uri,
        "observed_datasets": len(observed.datasets),
    }  # fmt: skip


def check_inventory(summary: dict[str, Any]) -> dict[str, Any]:
    """Fail (no retry: the same inputs give the same answer) when the inventory has violations;
    the report was published already."""
    count = int(summary.get("violation_count", 0))
    if count:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary.get("violations", {}).items()))
        _fail(f"the transfer inventory has {count} violation(s) ({kinds}); see {summary.get('report_uri')}")
    return {"clean": True, "report_uri": summary.get("report_uri")}
