"""
### datamap_drift

Daily comparison of the data map (`GOVERNANCE_DATAMAP`, default `include/datamap.yaml`; the task
log names the file read) with the systems it governs, so a data engineer learns the map is out of
date before an export or erasure misses something (the same check as
`python -m governance validate-datamap --live`):

* tables and columns in the app database the map does not declare, flagged when their names or
  sampled values look personal (values are never reported, only their kind and counts);
* object-store prefixes no mapped prefix covers, flagged when keys hold e-mails or phone numbers;
* mapped tables, columns or buckets that no longer exist;
* identity and reference columns without an index (erasure and export would scan whole tables).

Findings that put a privacy promise at risk fail the run at once, without retries (and alert);
the rest are warnings. Each finding is logged placed in the map (`FILE: PATH: MESSAGE (line N)`,
kinds and counts, never a value), and every report is kept in `governance.datamap_drift_reports`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, get_current_context, task

from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="datamap_drift",
    description="Daily: tables, columns and objects the data map does not cover yet (values never reported)",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1),
    tags=[GOVERNANCE_TAG, "datamap"],
    doc_md=__doc__,
)
def datamap_drift() -> None:
    @task
    def validate_datamap() -> dict[str, Any]:
        from governance.workflows.datamap_drift import validate_map

        return validate_map()

    @task
    def database_drift() -> dict[str, Any]:
        from governance.workflows.datamap_drift import database_drift

        return database_drift()

    @task
    def object_store_drift() -> dict[str, Any]:
        from governance.workflows.datamap_drift import object_store_drift

        return object_store_drift()

    @task
    def record_drift_report(
        datamap_info: dict[str, Any], database: dict[str, Any], objects: dict[str, Any]
    ) -> dict[str, Any]:
        from governance.workflows.datamap_drift import record_report

        context = get_current_context()
        dag_run = context["dag_run"]
        return record_report(
            run_id=dag_run.run_id,
            checked_at=dag_run.logical_date or dag_run.run_after,
            datamap_info=datamap_info,
            database=database,
            objects=objects,
        )

    info = validate_datamap()
    database = database_drift()
    objects = object_store_drift()
    info >> [database, objects]  # a broken map stops the run before any system is read
    record_drift_report(info, database, objects)


datamap_drift()
