"""governance_healthcheck and datamap_drift run end to end on the reference deployment."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.utils.state import DagRunState

from governance.config import INCLUDE_DIR
from governance.healthcheck import SystemUnhealthy, check_governed_system
from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment


def test_healthcheck_reports_each_system_and_migrates_the_governance_schema(
    get_dag: Callable[[str], Any], reference_env: Deployment
) -> None:
    dag_run = get_dag("governance_healthcheck").test()
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert xcom_result(dag_run, "check_app_database")["tables"] == 10
    objects = xcom_result(dag_run, "check_object_store")
    assert objects["bucket"] == reference_env.bucket and objects["versioning"] == "Enabled"
    assert objects["default_encryption"] == "AES256"
    assert xcom_result(dag_run, "check_keys")["hash_key_id"] == "test-hash-1"
    checked = {ti.map_index: ti for ti in dag_run.get_task_instances() if ti.task_id == "check_governed_system"}
    assert len(checked) == 7 and all(ti.state == "success" for ti in checked.values()), task_states(dag_run)
    assert sorted(ti.rendered_map_index for ti in checked.values()) == sorted(
        ["aircalls_app", "aircalls_objects", "aircalls_warehouse", "aircalls_events", "payments_processor", "crm",
         "support_desk"]
    )
    with psycopg.connect(reference_env.app_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM governance.schema_migrations ORDER BY 1")]
    assert 1 in versions and 3 in versions


def test_healthcheck_fails_when_the_bucket_is_missing(
    get_dag: Callable[[str], Any], reference_env: Deployment, monkeypatch: Any
) -> None:
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", "gt-no-such-bucket")
    dag_run = get_dag("governance_healthcheck").test()
    assert dag_run.state == DagRunState.FAILED
    assert task_states(dag_run)["check_object_store"] == "failed"


def test_healthcheck_fails_on_the_one_processor_that_rejects_its_credentials_and_names_it(
    get_dag: Callable[[str], Any], reference_env: Deployment, monkeypatch: Any
) -> None:
    # A rotated API key nobody updated in Airflow: the CRM stand-in answers 401 to the old one.
    monkeypatch.setenv(
        "AIRFLOW_CONN_CRM", json.dumps({"conn_type": "http", "host": reference_env.crm.url, "password": "revoked-key"})
    )
    dag_run = get_dag("governance_healthcheck").test()
    assert dag_run.state == DagRunState.FAILED
    checked = {ti.rendered_map_index: ti.state for ti in dag_run.get_task_instances() if ti.task_id == "check_governed_system"}
    assert checked.pop("crm") == "failed", checked
    assert set(checked.values()) == {"success"}, checked


def test_healthcheck_of_a_missing_schema_or_unknown_name_says_what_is_wrong(
    reference_env: Deployment, monkeypatch: Any
) -> None:
    with pytest.raises(SystemUnhealthy, match="neither a system nor a processor.*aircalls_app"):
        check_governed_system("no_such_system")
    # The warehouse connection pointed at the app's database: it answers, but holds no analytics schema.
    monkeypatch.setenv("AIRFLOW_CONN_AIRCALLS_WAREHOUSE", os.environ["AIRFLOW_CONN_AIRCALLS_APP"])
    with pytest.raises(SystemUnhealthy, match="aircalls_warehouse .*no schema 'analytics'"):
        check_governed_system("aircalls_warehouse")
    assert check_governed_system("aircalls_app")["kind"] == "postgres"


def test_drift_run_finds_an_unmapped_email_column_and_a_dropped_index_and_fails_at_once_naming_the_map_used(
    get_dag: Callable[[str], Any], reference_clone: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clean = get_dag("datamap_drift").test()
    assert clean.state == DagRunState.SUCCESS, task_states(clean)

    with psycopg.connect(reference_clone.app_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE app.appointments ADD COLUMN contact_hint text")
        conn.execute(
            "UPDATE app.appointments a SET contact_hint = c.email FROM app.callers c"
            " WHERE c.id = a.caller_id AND c.email IS NOT NULL"
        )
        conn.execute("UPDATE app.appointments SET contact_hint = 'someone' || id || '@example.net' WHERE contact_hint IS NULL")
        conn.execute("DROP INDEX app.callers_phone_idx")
    copy = tmp_path / "team-datamap.yaml"  # the map a data engineer works on, named by GOVERNANCE_DATAMAP
    copy.write_text((INCLUDE_DIR / "datamap.yaml").read_text())
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(copy))
    caplog.set_level(logging.INFO, logger="governance.workflows.datamap_drift")
    caplog.clear()
    drifted = get_dag("datamap_drift").test()
    output = caplog.text + _run_logs(drifted)
    assert drifted.state == DagRunState.FAILED
    assert task_states(drifted)["record_drift_report"] == "failed"
    failed = next(ti for ti in drifted.get_task_instances() if ti.task_id == "record_drift_report")
    assert failed.try_number == 1, "a deterministic blocking finding is not retried"
    # The task log says which file, the kinds and counts, and each finding placed in that file.
    assert f"data map {copy} against the live systems" in output
    assert "unmapped_personal_column 1" in output and "missing_index 1" in output
    assert f"{copy}: systems[aircalls_app].tables[appointments].fields: blocking: unmapped column" in output
    assert "include/datamap.yaml" not in output
    assert "@example" not in output

    with psycopg.connect(reference_clone.app_url) as conn:
        rows = conn.execute(
            "SELECT run_id, is_clean, blocking, warnings, report FROM governance.datamap_drift_reports ORDER BY checked_at"
        ).fetchall()
    by_run = {r[0]: r for r in rows}
    assert by_run[clean.run_id][1] is True
    _run, is_clean, blocking, warnings, report = by_run[drifted.run_id]
    assert not is_clean and blocking == 1 and warnings >= 1
    unmapped = [c for c in report["database"]["unmapped_columns"] if c["column"] == "contact_hint"]
    assert unmapped and unmapped[0]["looks_personal"] and "e-mail" in unmapped[0]["reason"]
    assert any(i["table"] == "callers" and i["column"] == "phone" for i in report["database"]["missing_indexes"])
    assert "@example" not in str(report), "the report names kinds of values, never a value"
    assert report["file"] == str(copy)


def _run_logs(dag_run: Any) -> str:
    root = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and dag_run.run_id in str(p))
