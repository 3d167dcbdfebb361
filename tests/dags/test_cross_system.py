"""``dsr_erasure`` end to end (``dag.test()``) across the app database and the analytics warehouse.

The person (``payer``) is in the app and in the warehouse, where nothing names them: their
sessions are keyed by the app's user id only, so the warehouse rows are found through the keys the
app's snapshot gave. Ground truth is the test's own SQL on both databases, taken before the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from airflow.utils.state import DagRunState

from governance_dev.seed import cast_member
from tests.dags.conftest import task_states, xcom_result
from tests.dags.test_dsr_erasure import _request, form
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_cross_system import warehouse_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.dagrun]


def test_a_person_reached_in_the_warehouse_only_through_the_apps_ids_is_erased_there_and_certified_per_system(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    member = cast_member("payer")
    with psycopg.connect(reference_clone.warehouse_url) as wh:
        sessions = {r[0] for r in wh.execute("SELECT id FROM analytics.user_sessions WHERE user_id = %s", (member.user_id,))}
        by_identity = wh.execute("SELECT count(*) FROM analytics.marketing_audience WHERE lower(email) = lower(%s)",
                                 (member.email,)).fetchone()  # fmt: skip
    assert sessions and by_identity == (0,), "the warehouse holds the payer only under the app's user id"
    before = warehouse_snapshot(reference_clone.warehouse_url)

    request_id = _request("payer", approved=True)
    dag_run = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)

    after = warehouse_snapshot(reference_clone.warehouse_url)
    assert set(before["user_sessions"]) - set(after["user_sessions"]) == sessions
    assert {k: v for k, v in before["user_sessions"].items() if k not in sessions} == after["user_sessions"]
    assert before["call_facts"] == after["call_facts"] and before["marketing_audience"] == after["marketing_audience"]
    with psycopg.connect(reference_clone.app_url) as conn:
        users = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (member.user_id,)).fetchone()
    assert users == (0,)

    certificate_key = xcom_result(dag_run, "issue_certificate")["json_uri"].split("/", 3)[3]
    certificate = json.loads(s3.get_object(Bucket=reference_clone.bucket, Key=certificate_key)["Body"].read())
    systems = {s["system"]: s for s in certificate["systems"]}
    assert systems["aircalls_warehouse"]["rows"] == len(sessions) and systems["aircalls_warehouse"]["done"]
    assert systems["aircalls_app"]["done"] and certificate["verification"]["passed"]
    assert any(c["where"] == "aircalls_warehouse.user_sessions" for c in certificate["verification"]["checks"])


def test_a_caller_in_the_app_warehouse_objects_crm_and_dynamodb_is_erased_everywhere_and_nobody_elses_events_change(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, dynamodb: Any
) -> None:
    from tests.integration.test_erasure_dynamodb import fingerprint, items_of

    member = cast_member("caller_only")
    assert member.e164 is not None and reference_clone.events_table is not None
    table = reference_clone.events_table
    events = items_of(dynamodb, table, member.e164)
    with psycopg.connect(reference_clone.warehouse_url) as wh:
        facts = wh.execute("SELECT count(*) FROM analytics.call_facts WHERE caller_phone = %s", (member.e164,)).fetchone()
    assert events and facts is not None and facts[0] > 0, "the caller is in DynamoDB and the warehouse"
    before = fingerprint(dynamodb, table)

    request_id = _request("caller_only", approved=True)
    dag_run = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)

    after = fingerprint(dynamodb, table)
    assert items_of(dynamodb, table, member.e164) == []
    assert set(before) - set(after) == {(member.e164, k) for k in events}
    assert {k: v for k, v in before.items() if k[0] != member.e164} == after
    with psycopg.connect(reference_clone.warehouse_url) as wh:
        assert wh.execute("SELECT count(*) FROM analytics.call_facts WHERE caller_phone = %s", (member.e164,)).fetchone() == (0,)
    assert xcom_result(dag_run, "delete_objects")["items"] == {"aircalls_events.call_events": len(events)}
    certificate_key = xcom_result(dag_run, "issue_certificate")["json_uri"].split("/", 3)[3]
    certificate = json.loads(s3.get_object(Bucket=reference_clone.bucket, Key=certificate_key)["Body"].read())
    systems = {s["system"]: s for s in certificate["systems"]}
    assert set(systems) >= {"aircalls_app", "aircalls_warehouse", "aircalls_objects", "aircalls_events"}
    assert systems["aircalls_events"]["rows"] == len(events) and systems["aircalls_events"]["done"]
    assert certificate["verification"]["passed"]
