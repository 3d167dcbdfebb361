"""
### governance_healthcheck

Daily check that every governed system and the project's own state are in working order before
the privacy workflows need them: the governance schema is migrated, the app database answers, the
object-store bucket exists (with its versioning and default-encryption status), and the
keyed-hash and encryption keys load and work, and every system and processor of the data map answers
through its connector with its Airflow connection (one mapped task each, so the grid names the one
that is down). Each task returns counts and ids only.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="governance_healthcheck",
    description="Daily: every governed system, the keys and the governance schema answer and work",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[GOVERNANCE_TAG, "operations"],
    doc_md=__doc__,
)
def governance_healthcheck() -> None:
    @task
    def migrate_governance_schema() -> dict[str, Any]:
        from governance.healthcheck import migrate_governance_schema

        return migrate_governance_schema()

    @task
    def check_app_database() -> dict[str, Any]:
        from governance.healthcheck import check_app_database

        return check_app_database()

    @task
    def check_object_store() -> dict[str, Any]:
        from governance.healthcheck import check_object_store

        return check_object_store()

    @task
    def check_keys() -> dict[str, Any]:
        from governance.healthcheck import check_keys

        return check_keys()

    @task
    def governed_systems() -> list[str]:
        from governance.healthcheck import governed_systems

        return governed_systems()

    @task(map_index_template="{{ governed_system }}")
    def check_governed_system(name: str) -> dict[str, Any]:
        from airflow.sdk import get_current_context

        from governance.healthcheck import check_governed_system

        get_current_context()["governed_system"] = name  # type: ignore[typeddict-unknown-key]
        return check_governed_system(name)

    migrate_governance_schema() >> [
        check_app_database(),
        check_object_store(),
        check_keys(),
        check_governed_system.expand(name=governed_systems()),
    ]


governance_healthcheck()
