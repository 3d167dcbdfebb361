"""dsr_erasure end to end with ``dag.test()`` on copies of the reference deployment: a dry run
from the form changes nothing; a request approved at intake is erased, certified and closed with
no identity in any task log or XCom; a form request waits for approval in the UI and then runs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from airflow.utils.state import DagRunState

from governance_dev.seed import cast_member
from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    conf_for,
    diff,
    identities_text,
    recording_keys_of_callers,
    snapshot,
)

pytestmark = [pytest.mark.slow(seconds=150), pytest.mark.integration, pytest.mark.dagrun]
UNCHANGED = {"deleted": set(), "changed": set(), "added": set()}


def form(**values: Any) -> dict[str, Any]:
    """A whole trigger form: dag.test() runs in one process, where a run's conf stays in the DAG's
    params for the next run, so every run names every field."""
    return {"request_id": None, "email": None, "phone": None, "business_id": None, "dry_run": True,
            "override_guard": False, **values}  # fmt: skip


def _request(key: str, *, approved: bool) -> str:
    """A request recorded at intake (as ``python -m governance request new`` does), optionally
    verified and approved there."""
    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.db import connect, conninfo_for
    from governance.identity import SubjectIdentities
    from governance.migrations import migrate
    from governance.privacy_requests import create_request
    from governance.workflows.request_intake import mark_verified

    subject = cast_member(key)
    conninfo = conninfo_for("governance_db")
    migrate(conninfo)
    now = datetime.now(UTC)
    with connect(conninfo) as conn:
        request_id = create_request(
            conn, kind="erasure", identities=SubjectIdentities.parse(email=subject.email, phone=subject.phone, region="US"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=now, source="intake",
        )  # fmt: skip
    if approved:
        mark_verified(request_id, method="email_link", verified_by="intake-desk", at=now, conninfo=conninfo)
    return request_id


def _support_desk_ids(deployment: Deployment, email: str) -> list[int]:
    """Ids of the support desk's requesters with ``email``, read from the stand-in over HTTP."""
    state = requests.get(deployment.support_desk.url + "/_admin/state", timeout=10).json()
    return [r["id"] for r in state["requesters"] if (r.get("email") or "").lower() == email.lower()]


def _task_logs(run_id: str, captured: str) -> str:
    """What the run's tasks logged: log files when Airflow wrote them, and the console (where
    dag.test() sends task logs)."""
    root = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    files = "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and run_id in str(p))
    return files + "\n" + captured


def _assert_no_identity(key: str, *texts: str) -> None:
    for text in texts:
        for value in identities_text(key):
            assert value not in text, "an identity of the person reached a log, XCom or document"


def _all_xcom(dag_run: Any) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = session.query(XComModel.value).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
    return "\n".join(str(v[0]) for v in values)


def test_the_approval_asks_how_the_person_was_verified_in_words_with_nothing_chosen_in_advance(
    get_dag: Callable[[str], Any],
) -> None:
    from governance.workflows.dsr_erasure import NOT_VERIFIED, VERIFICATION_METHODS

    param = get_dag("dsr_erasure").get_task("approve_erasure").params.get_param("verification_method")
    assert param.value is None, "no method is pre-filled: one click must not record a method nobody used"
    assert set(param.schema["enum"]) == {None, *VERIFICATION_METHODS, NOT_VERIFIED}
    labels = param.schema["values_display"]
    assert set(labels) == set(param.schema["enum"]) - {None} and all(" " in label and "_" not in label for label in labels.values())


def test_whoever_triggered_an_erasure_run_may_not_approve_it_and_nothing_is_recorded(
    reference_clone: Deployment,
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from governance.workflows.dsr_erasure import record_approval

    request_id = _request("caller_only", approved=False)
    answer = {"chosen_options": ["Approve"], "params_input": {"verification_method": "phone_callback"},
              "responded_by_user": {"id": "carol", "name": "carol"}}  # fmt: skip
    with pytest.raises(AirflowFailException, match="carol triggered this erasure run and may not approve it"):
        record_approval(request_id, "epl-00000000000000000000", answer, at=datetime.now(UTC), triggered_by="carol")
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT status, verified_at, approved_by FROM governance.privacy_requests"
                            " WHERE request_id = %s", (request_id,)).fetchone() == ("received", None, None)  # fmt: skip


def test_form_dry_run_stores_the_plan_and_changes_nothing(
    get_dag: Callable[[str], Any], reference_clone: Deployment, capfd: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(reference_clone.app_url)
    contacts = reference_clone.crm.contacts()
    dag_run = get_dag("dsr_erasure").test(run_conf=form(**conf_for("caller_only")))
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.SUCCESS, states
    assert states["execute_database"] == "skipped" and states["approve_erasure"] == "skipped"
    assert states["close_request"] == "success" and states["issue_certificate"] == "success"
    assert diff(before, snapshot(reference_clone.app_url)) == {t: UNCHANGED for t in before}
    assert reference_clone.crm.contacts() == contacts
    plan = xcom_result(dag_run, "plan_erasure")
    assert plan["dry_run"] and plan["tables"]["aircalls_app.calls"]["delete_rows"] == 6
    assert plan["objects"]["aircalls_objects.recordings"] == 6 and plan["processors"]["crm"] == 1
    with psycopg.connect(reference_clone.app_url) as conn:
        status = conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                              (plan["request_id"],)).fetchone()[0]  # fmt: skip
        stored = conn.execute("SELECT status, dry_run FROM governance.erasure_plans WHERE plan_id = %s",
                              (plan["plan_id"],)).fetchone()  # fmt: skip
    assert status == "received" and stored == ("planned", True)
    assert xcom_result(dag_run, "close_request")["outcome"] == "dry_run"
    out, err = capfd.readouterr()
    logs = _task_logs(dag_run.run_id, out + err)
    assert "plan_erasure" in logs and "Returned value" in logs
    _assert_no_identity("caller_only", logs, _all_xcom(dag_run))


def test_request_approved_at_intake_is_erased_certified_and_closed_without_identities_then_stays_completed_until_reopened(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    subject = cast_member("both_user_and_caller")
    recordings = recording_keys_of_callers(reference_clone.app_url, subject.caller_ids)
    desk_ids = _support_desk_ids(reference_clone, subject.email or "")
    assert len(desk_ids) == 1, "the support desk (a Python connector) holds the person"
    request_id = _request("both_user_and_caller", approved=True)
    dag_run = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.SUCCESS, states
    # The support desk erased the person through its asynchronous job, polled to completion.
    assert _support_desk_ids(reference_clone, subject.email or "") == []
    state = requests.get(reference_clone.support_desk.url + "/_admin/state", timeout=10).json()
    assert [(j["requester_id"], j["status"]) for j in state["jobs"]] == [(desk_ids[0], "completed")]
    assert desk_ids[0] in state["deleted"]
    assert states["approve_erasure"] == "skipped" and states["already_approved"] == "success"
    with psycopg.connect(reference_clone.app_url) as conn:
        users = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone()[0]
        status, uri = conn.execute("SELECT status, result_uri FROM governance.privacy_requests WHERE request_id = %s",
                                   (request_id,)).fetchone()  # fmt: skip
    assert users == 0 and status == "completed"
    assert uri == xcom_result(dag_run, "issue_certificate")["json_uri"]
    assert not any(s3.list_object_versions(Bucket=reference_clone.bucket, Prefix=k).get("Versions") for k in recordings)
    html_key = xcom_result(dag_run, "issue_certificate")["html_uri"].split("/", 3)[3]
    page = s3.get_object(Bucket=reference_clone.bucket, Key=html_key)["Body"].read().decode()
    assert "Erasure certificate" in page and "Tax law" in page and "payments" in page

    out, err = capfd.readouterr()
    logs = _task_logs(dag_run.run_id, out + err)
    assert "verify_erasure" in logs and "Returned value" in logs, "the test reads the run's task logs"
    _assert_no_identity("both_user_and_caller", logs, _all_xcom(dag_run), page)

    # A completed request stays completed: a second run is refused before anything is read, no
    # second certificate is written and the suppression entries keep their first erasure time.
    def certificates_and_suppression() -> tuple[Any, ...]:
        with psycopg.connect(reference_clone.app_url) as conn:
            return (conn.execute("SELECT count(*) FROM governance.erasure_certificates c JOIN governance.erasure_plans p"
                                 " USING (plan_id) WHERE p.request_id = %s", (request_id,)).fetchone(),
                    conn.execute("SELECT identity_kind, erased_at FROM governance.suppression_list WHERE request_id = %s"
                                 " ORDER BY 1", (request_id,)).fetchall())  # fmt: skip

    before = certificates_and_suppression()
    assert before[0] == (1,) and len(before[1]) == 2
    again = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    assert again.state == DagRunState.FAILED
    assert task_states(again)["open_request"] == "failed" and task_states(again)["plan_erasure"] == "upstream_failed"
    assert certificates_and_suppression() == before
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT status, result_uri FROM governance.privacy_requests WHERE request_id = %s",
                            (request_id,)).fetchone() == ("completed", uri)  # fmt: skip

    # Serving it again needs an explicit reopening with a reason, recorded with who asked.
    reopen = [sys.executable, "-m", "governance", "request", "reopen", request_id]
    short = subprocess.run([*reopen, "--reason", "again"], capture_output=True, text=True, check=False)
    assert short.returncode == 2 and "reason of at least" in short.stderr
    done = subprocess.run([*reopen, "--reason", "restored from a backup taken before the erasure", "--by", "dpo"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                            (request_id,)).fetchone() == ("verified",)  # fmt: skip
        assert conn.execute("SELECT reopened_by, reason, previous_status, previous_result FROM"
                            " governance.request_reopenings WHERE request_id = %s", (request_id,)).fetchall() == [
            ("dpo", "restored from a backup taken before the erasure", "completed", uri)]  # fmt: skip


def test_form_request_waits_for_approval_in_the_ui_then_erases(
    get_dag: Callable[[str], Any], reference_clone: Deployment
) -> None:
    subject = cast_member("call_handler")
    responder = threading.Thread(target=_approve_when_asked, args=("dsr_erasure", "approve_erasure"), daemon=True)
    responder.start()
    dag_run = get_dag("dsr_erasure").test(run_conf=form(**conf_for("call_handler"), dry_run=False))
    responder.join(timeout=5)
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.SUCCESS, states
    assert states["approve_erasure"] == "success" and states["already_approved"] == "skipped"
    request_id = xcom_result(dag_run, "open_request")["request_id"]
    with psycopg.connect(reference_clone.app_url) as conn:
        users = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone()[0]
        request = conn.execute(
            "SELECT status, verification_method, approved_by, approved_at IS NOT NULL FROM governance.privacy_requests"
            " WHERE request_id = %s", (request_id,)).fetchone()  # fmt: skip
    assert users == 0
    assert request == ("completed", "account_login", "privacy-officer", True)


def _approve_when_asked(dag_id: str, task_id: str, timeout_s: float = 300) -> None:
    """What a privacy officer does in the Required actions page: wait for the approval task to
    ask, then answer Approve with how the identity was verified (the API handler, in-process)."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from fastapi import HTTPException

    class Officer:
        def get_id(self) -> str:
            return "7"

        def get_name(self) -> str:
            return "privacy-officer"

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with create_session() as session:
                ti = (
                    session.query(TaskInstance)
                    .filter_by(dag_id=dag_id, task_id=task_id, state=TaskInstanceState.AWAITING_INPUT)
                    .one_or_none()
                )
                if ti is not None:
                    try:
                        update_hitl_detail(
                            dag_id=dag_id, dag_run_id=ti.run_id, task_id=task_id, map_index=-1, session=session,
                            user=Officer(),  # type: ignore[arg-type]
                            update_hitl_detail_payload=UpdateHITLDetailPayload(
                                chosen_options=["Approve"], params_input={"verification_method": "account_login"}
                            ),
                        )  # fmt: skip
                        return
                    except HTTPException:  # the request for input is not written yet
                        session.rollback()
            time.sleep(0.5)
        raise TimeoutError("the approval task never asked for input")
    except BaseException:
        # Never leave dag.test() waiting for an answer that will not come.
        with create_session() as session:
            session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id).update(
                {"state": TaskInstanceState.FAILED}, synchronize_session=False
            )
        raise


def test_an_erasure_that_fails_at_a_processor_fails_the_run_alerts_once_and_a_rerun_completes(
    get_dag: Callable[[str], Any], reference_clone: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    subject = cast_member("caller_only")
    caplog.set_level(logging.INFO, logger="governance.notifier")
    request_id = _request("caller_only", approved=True)
    contacts_before = len(reference_clone.crm.contacts())
    reference_clone.crm.set_fault("error", status=503)
    try:
        failed = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    finally:
        reference_clone.crm.clear_faults()
    states = task_states(failed)
    assert failed.state == DagRunState.FAILED, states
    # the CRM is read while planning: the plan fails, nothing is executed anywhere
    assert states["plan_erasure"] == "failed" and states["execute_database"] == "upstream_failed"
    assert states["close_request"] == "success" and states["request_outcome"] == "failed"
    assert len(reference_clone.crm.contacts()) == contacts_before
    with psycopg.connect(reference_clone.app_url) as conn:
        status, detail = conn.execute(
            "SELECT status, outcome_detail FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
    assert status == "failed" and "before a plan was made: a processor did not answer" in detail
    assert "crm" in detail and "HTTP 503" in detail, "the request names the system and the cause"
    alerts = [r.getMessage() for r in caplog.records
              if r.name == "governance.notifier" and r.getMessage().startswith("task_failed {")]  # fmt: skip
    assert len(alerts) == 1, "one alert for the failed request, from its last task"
    assert request_id in alerts[0] and '"plan_erasure"' in alerts[0] and "RequestNotServed" in alerts[0]

    rerun = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    assert rerun.state == DagRunState.SUCCESS, task_states(rerun)
    assert task_states(rerun)["request_outcome"] == "success"
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                            (request_id,)).fetchone() == ("completed",)  # fmt: skip
    contacts = reference_clone.crm.contacts()
    assert len(contacts) == contacts_before - 1, "the person's contact, and only it, was erased"
    assert subject.email not in json.dumps(contacts)
