"""
### lineage_probe (test only)

Reads and writes known tables and objects in every way the project's tasks do, so the tests can
assert each task's lineage event and audit-ledger row exactly: a ``PostgresHook`` statement
(hook SQL lineage), the project's connectors (psycopg and boto3, reported through
``governance.lineage``), an ``S3Hook`` upload (collected by the amazon provider), and tasks
without I/O that fail once and retry, skip themselves, or fail, leaving downstream tasks to be
skipped or marked upstream_failed by the scheduler.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

PROBE_DB_CONN_ID = "lineage_probe_db"
EXPORT_PREFIX = "exports/lineage-probe"
MANIFEST_KEY = "manifests/lineage-probe.json"


@dag(
    dag_id="lineage_probe",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    default_args={"owner": "privacy-engineering", "retries": 0},
    tags=["governance", "test"],
    doc_md=__doc__,
)
def lineage_probe() -> None:
    @task
    def summarise_calls() -> None:
        """Hook SQL: app.calls in, app.call_stats out."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        PostgresHook(postgres_conn_id=PROBE_DB_CONN_ID).run(
            "INSERT INTO app.call_stats (business_id, calls) "
            "SELECT business_id, count(*) FROM app.calls GROUP BY business_id"
        )

    @task
    def export_stats() -> dict[str, int]:
        """The project's connectors: app.call_stats in, objects under exports/lineage-probe out."""
        import json

        from governance.config import OBJECTS_CONN_ID, objects_bucket
        from governance.db import connect, conninfo_for
        from governance.lineage import record_object_write, record_table_read
        from governance.objectstore import s3_client

        with connect(conninfo_for(PROBE_DB_CONN_ID)) as conn:
            rows = conn.execute("SELECT business_id, calls FROM app.call_stats ORDER BY business_id").fetchall()
        record_table_read(PROBE_DB_CONN_ID, "app", "call_stats")
        bucket = objects_bucket()
        s3_client(OBJECTS_CONN_ID).put_object(
            Bucket=bucket, Key=f"{EXPORT_PREFIX}/call-stats.json", Body=json.dumps([list(r) for r in rows]).encode()
        )
        record_object_write(bucket, EXPORT_PREFIX, objects=1)
        return {"businesses": len(rows)}

    @task
    def publish_manifest(summary: dict[str, int]) -> None:
        """An S3Hook upload: one object out, collected by the amazon provider."""
        import json

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from governance.config import OBJECTS_CONN_ID, objects_bucket

        S3Hook(aws_conn_id=OBJECTS_CONN_ID).load_string(
            json.dumps(summary), key=MANIFEST_KEY, bucket_name=objects_bucket(), replace=True
        )

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky() -> str:
        """No I/O; its first try fails (up_for_retry), the second succeeds."""
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("first try fails on purpose")
        return "second try"

    @task
    def skip_me() -> None:
        """No I/O; skips itself."""
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("nothing to do")

    @task
    def after_skip() -> None:
        """Never runs: the scheduler skips it."""

    @task
    def explode() -> None:
        """No I/O; fails with the requester's e-mail in its message (events must not carry it)."""
        conf: Any = get_current_context()["dag_run"].conf or {}
        raise RuntimeError(f"probe failure while serving {conf.get('requester_email')}")

    @task
    def after_explode() -> None:
        """Never runs: the scheduler marks it upstream_failed."""

    stats = export_stats()
    summarise_calls() >> stats
    publish_manifest(stats) >> flaky() >> skip_me() >> after_skip()
    explode() >> after_explode()


lineage_probe()
