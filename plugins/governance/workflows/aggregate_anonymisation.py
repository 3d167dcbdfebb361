"""aggregate_anonymisation: anonymised industry insights (privacy policy 2.2).

Task bodies of ``dags/aggregate_anonymisation.py`` (through :mod:`governance.airflow.insights`):

* :func:`check_release_request` refuses bad input before anything is read, and brings the
  governance schema up to date (``ensure_schema``);
* :func:`stage` computes and stages the release (the budget is spent here, once per run);
* :func:`verify` runs the independent checks and fails the run when any fails (nothing leaves);
* :func:`publish` writes the verified release to ``insights`` and the object store.

XCom carries release ids, counts and dates only.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from governance.anonymisation.disclosure import ReleaseBlocked
from governance.anonymisation.privacy import BudgetExceeded
from governance.anonymisation.publish import INSIGHTS_SCHEMA, INSIGHTS_TABLE, publish_release
from governance.anonymisation.release import (
    ReleaseInputError,
    ReleaseRequest,
    check_release_input,
    stage_release,
)
from governance.anonymisation.spec import ReleaseSpecError, load_release_spec
from governance.anonymisation.verify import ReleaseVerificationFailed, verify_release
from governance.config import GOVERNANCE_CONN_ID, OBJECTS_CONN_ID, objects_bucket
from governance.datamap import load_datamap
from governance.db import conninfo_for
from governance.lineage import record_object_write, record_table_read, record_table_write
from governance.migrations import ensure_schema
from governance.objectstore import s3_client

log = logging.getLogger(__name__)


def _refuse(message: str) -> None:
    """Fail the task without retries: a retry would be refused the same way."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _connections(spec: Any) -> tuple[str, str, str]:
    """(governance conninfo, app conninfo, app schema) from the data map's system."""

    system = load_datamap().postgres_system(spec.system)
    return (
        conninfo_for(GOVERNANCE_CONN_ID, application_name="governance-insights"),
        conninfo_for(system.connection_id, application_name="governance-insights"),
        system.db_schema,
    )


def check_release_request(params: dict[str, Any], *, logical_date: datetime | None, run_after: datetime,
                          now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The validated release request (``ReleaseRequest``), or ``ReleaseInputError``."""

    try:
        spec = load_release_spec()
        request = check_release_input(params, spec=spec, logical_date=logical_date or run_after, now=now or datetime.now(UTC))
    except (ReleaseInputError, ReleaseSpecError) as exc:
        _refuse(str(exc))
    governance, _, _ = _connections(spec)
    ensure_schema(governance)
    log.info("release %s for %s to %s (%s)", spec.release, request["period_start"], request["period_end"],
             "differential privacy" if request["epsilon"] is not None else "thresholds and suppression")  # fmt: skip
    return dict(request)


def stage(request: dict[str, Any], *, run_id: str) -> dict[str, Any]:
    import psycopg


    spec = load_release_spec()
    governance, app, schema = _connections(spec)
    try:
        with psycopg.connect(governance) as conn, psycopg.connect(app) as app_conn:
            staged = stage_release(conn, spec, schema, ReleaseRequest(**request), run_id=run_id, app_conn=app_conn)  # type: ignore[typeddict-item]
    except (BudgetExceeded, ReleaseBlocked) as exc:
        _refuse(str(exc))
    connection_id = _app_connection_id(spec)
    for table in (spec.businesses.table, spec.calls.table, spec.messages.table, spec.appointments.table):
        record_table_read(connection_id, schema, table)
    record_table_write(GOVERNANCE_CONN_ID, "governance", "insights_releases", rows=0 if staged["reused"] else 1)
    record_table_write(GOVERNANCE_CONN_ID, "governance", "insights_release_cells", rows=0 if staged["reused"] else staged["cells"])
    if request.get("epsilon") is not None:
        record_table_write(GOVERNANCE_CONN_ID, "governance", "insights_budget_spends")
    return dict(staged)


def _app_connection_id(spec: Any) -> str:
    return load_datamap().postgres_system(spec.system).connection_id


def verify(staged: dict[str, Any]) -> dict[str, Any]:
    """Counts of what was checked; raises ``ReleaseVerificationFailed`` naming the failures."""
    import psycopg


    spec = load_release_spec()
    governance, app, schema = _connections(spec)
    with psycopg.connect(governance) as conn, psycopg.connect(app) as app_conn:
        outcome = verify_release(conn, spec, schema, staged["release_id"], app_conn=app_conn)
    if not outcome.success:
        # Blocked for good (a retry would find it blocked): fail without retrying.
        _refuse(str(ReleaseVerificationFailed(
            f"release {staged['release_id']} blocked, nothing published: " + "; ".join(outcome.failures[:10])
        )))
    return {"release_id": staged["release_id"], "cells_checked": outcome.cells_checked, "k_anonymity": outcome.k_anonymity}


def publish(staged: dict[str, Any]) -> dict[str, Any]:
    import psycopg


    spec = load_release_spec()
    governance, _, _ = _connections(spec)
    bucket = objects_bucket()
    with psycopg.connect(governance) as conn:
        published = publish_release(conn, staged["release_id"], s3=s3_client(OBJECTS_CONN_ID), bucket=bucket,
                                    budget_limit=spec.privacy.epsilon_budget_per_week)  # fmt: skip
    record_table_write(GOVERNANCE_CONN_ID, INSIGHTS_SCHEMA, INSIGHTS_TABLE, rows=published["cells"])
    record_table_write(GOVERNANCE_CONN_ID, INSIGHTS_SCHEMA, "releases", rows=1)
    prefix = published["objects"][0].rsplit("/", 1)[0] + "/"
    record_object_write(bucket, prefix, objects=len(published["objects"]))
    return dict(published)
