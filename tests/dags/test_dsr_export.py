"""dsr_export end to end with ``dag.test()`` on a private copy of the reference deployment.

Each run is checked by what it leaves in the systems: the request's status and ``result_uri``,
the bundle downloaded through that link and decrypted with the passphrase staff would read out,
compared with ground truth computed independently (``tests.integration.test_export_bundle``),
the objects under the request's export folder, and the absence of any identity, link or
passphrase in XCom, the task logs and the run's captured output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from airflow.utils.state import DagRunState

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.export import age
from governance.export.decrypt_command import run as decrypt_bundle
from governance.export.passphrase_command import run as export_passphrase
from governance.identity import SubjectIdentities
from governance.privacy_requests import create_request
from governance.workflows import dsr_export as workflow
from governance_dev.seed import cast_member
from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment, cloned_deployment
from tests.integration.test_export_bundle import assert_matches_ground_truth

pytestmark = [pytest.mark.slow(seconds=100), pytest.mark.integration, pytest.mark.dagrun]

DAG_ID = "dsr_export"
OFFICER = "privacy.officer"
VERIFY_BY_CALL_BACK = "Verified: called back on the number we hold"


@pytest.fixture(scope="module")
def deployment(reference_deployment: Deployment, s3: Any) -> Iterator[Deployment]:
    """One private copy for the module: each test exports a different person or request."""
    with cloned_deployment(reference_deployment, s3, "dsr_export") as (clone, patch):
        patch.setattr(workflow, "PROCESSOR_BACKOFF_S", 0.01)
        patch.setattr(workflow, "PROCESSOR_ATTEMPTS", 3)
        yield clone


@pytest.fixture
def export_dag(airflow_db: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A freshly parsed DAG (``dag.test()`` keeps one run's form values in the DAG's params, so
    runs must not share the object), with task retries off so a failing run ends now."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "dsr_export.py"))
    assert bag.import_errors == {}
    dag = bag.dags[DAG_ID]
    for task in dag.tasks:
        monkeypatch.setattr(task, "retries", 0)
    return dag


@contextmanager
def answering_approval(option: str) -> Iterator[list[str]]:
    """Answer the run's identity-verification step as a privacy officer would in the UI: through
    the same handler as the REST API (``PATCH .../hitlDetails``), from another thread, while
    ``dag.test()`` waits for it."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    stop = threading.Event()
    answered: list[str] = []

    def answer() -> None:
        while not stop.wait(0.3):
            with create_session() as session:
                waiting = session.scalars(
                    select(TaskInstance).where(
                        TaskInstance.dag_id == DAG_ID,
                        TaskInstance.task_id == workflow.HITL_TASK_ID,
                        TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                    )
                ).first()
                if waiting is None or waiting.run_id in answered:
                    continue
                run_id = waiting.run_id
            with create_session() as session:
                update_hitl_detail(
                    dag_id=DAG_ID, dag_run_id=run_id, task_id=workflow.HITL_TASK_ID, map_index=-1,
                    update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option]),
                    user=SimpleAuthManagerUser(username=OFFICER, role="admin"), session=session,
                )  # fmt: skip
            answered.append(run_id)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=10)


def request_row(deployment: Deployment, request_id: str) -> dict[str, Any]:
    with psycopg.connect(deployment.app_url) as conn:
        cur = conn.execute("SELECT * FROM governance.privacy_requests WHERE request_id = %s", (request_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    assert row is not None, request_id
    return dict(zip(names, row, strict=True))


def export_keys(deployment: Deployment, s3: Any, request_id: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=deployment.bucket, Prefix=f"exports/{request_id}/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def run_xcoms(dag_run: Any) -> str:
    """Every XCom value the run pushed, as one JSON text."""
    return json.dumps({t: xcom_result(dag_run, t) for t in task_states(dag_run)}, default=str)


def run_rendered_fields(dag_run: Any) -> str:
    """Every task's rendered template fields (what the UI shows under *Rendered Template*)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(RenderedTaskInstanceFields.rendered_fields).where(
                RenderedTaskInstanceFields.dag_id == DAG_ID, RenderedTaskInstanceFields.run_id == dag_run.run_id
            )
        ).all()
    assert rows, "the run rendered its template fields"
    return json.dumps(rows, default=str)


def run_logs(dag_run: Any) -> str:
    """Every task log file the run wrote (empty when the run logged to the console only)."""
    root = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and dag_run.run_id in str(p))


def passphrase_for(request_id: str, capfd: pytest.CaptureFixture[str]) -> str:
    """What ``python -m governance export-passphrase REQUEST_ID`` prints for staff."""
    capfd.readouterr()
    assert export_passphrase(argparse.Namespace(request_id=request_id, staff=OFFICER)) == 0
    # The command prints the passphrase as its last line; Airflow's lineage thread may still log
    # a late line of the previous run to the same captured stdout before it.
    return capfd.readouterr().out.strip().splitlines()[-1]


def recorded_request(deployment: Deployment, key: str, *, verified: bool, business_id: int | None = None) -> str:
    """A request recorded by intake (not the form), optionally already verified."""

    from governance.workflows.request_intake import mark_verified

    member = cast_member(key)
    with psycopg.connect(deployment.app_url) as conn:
        request_id = create_request(
            conn, kind="export", identities=SubjectIdentities.parse(email=member.email, phone=member.phone, region="US"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=datetime.now(UTC),
            business_id=business_id, source="intake",
        )  # fmt: skip
    if verified:
        mark_verified(request_id, method="reply from the e-mail address on file", verified_by="intake",
                      at=datetime.now(UTC), conninfo=deployment.app_url)  # fmt: skip
    return request_id


def test_the_form_and_the_approval_step_offer_what_the_workflow_expects() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import TriggerRule

    dag = DagBag(dag_folder=str(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "dsr_export.py")).dags[DAG_ID]
    params = {name: {**dag.params.get_param(name).schema, "description": dag.params.get_param(name).description}
              for name in dag.params}  # fmt: skip
    assert set(params) == {"request_id", "email", "phone", "business_id", "formats", "link_valid_days"}
    formats = params["formats"]
    assert formats["type"] == "array" and formats["examples"] == ["json", "csv", "html"]  # a multi-select
    assert dag.params["formats"] == ["json", "csv"] and formats["items"]["enum"] == ["json", "csv", "html"]
    assert all(schema.get("title") and schema.get("description") and schema.get("section") for schema in params.values())
    assert dag.get_task(workflow.HITL_TASK_ID).options == workflow.HITL_OPTIONS
    leaves = [t.task_id for t in dag.tasks if not t.downstream_task_ids]
    assert leaves == ["request_outcome"] and dag.get_task("close_request").trigger_rule == TriggerRule.ALL_DONE
    assert dag.get_task("request_outcome").trigger_rule == TriggerRule.ALL_DONE
    # every identity field may be left empty (null), and none carries a pattern shown raw on refusal
    for name in ("request_id", "email", "phone"):
        assert dag.params[name] is None and params[name]["type"] == ["null", "string"] and "pattern" not in params[name]


def test_form_export_waits_for_verification_then_publishes_a_bundle_matching_ground_truth(
    export_dag: Any, deployment: Deployment, s3: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    member = cast_member("both_user_and_caller")
    typed_email, typed_phone = "  MARIA.LOPEZ@Example.COM ", "+1 (415) 555-0132"
    with answering_approval(VERIFY_BY_CALL_BACK) as answered:
        dag_run = export_dag.test(run_conf={"email": typed_email, "phone": typed_phone, "formats": ["json", "csv"]})
    assert dag_run.state == DagRunState.SUCCESS, task_states(dag_run)
    assert answered == [dag_run.run_id], "the run waited for the officer's answer"
    output = capfd.readouterr()
    request_id = xcom_result(dag_run, "open_request")["request_id"]

    row = request_row(deployment, request_id)
    assert row["status"] == "completed" and row["source"] == "trigger_form"
    assert row["verification_method"] == "call-back to the number on file" and row["approved_by"] == OFFICER
    link = row["result_uri"]
    assert link.startswith("http") and "X-Amz-Expires=604800" in link
    assert export_keys(deployment, s3, request_id) == [f"exports/{request_id}/aircalls-export-{request_id}.zip.age"]
    head = s3.head_object(Bucket=deployment.bucket, Key=f"exports/{request_id}/aircalls-export-{request_id}.zip.age")
    assert head["ServerSideEncryption"] == "AES256"

    # What the person does: download through the link, open with the passphrase staff read out.
    download = requests.get(link, timeout=30)
    assert download.status_code == 200
    passphrase = passphrase_for(request_id, capfd)
    archive = zipfile.ZipFile(io.BytesIO(age.decrypt_bytes(download.content, passphrase)))
    assert_matches_ground_truth(archive, deployment, s3, email=member.email, e164=member.e164)
    # What staff do to check it: `python -m governance decrypt-bundle --request-id ... --extract DIR`.
    unpacked = tmp_path / "bundle"
    assert decrypt_bundle(argparse.Namespace(bundle=None, request_id=request_id, output=None, extract=str(unpacked))) == 0
    assert "manifest verified" in capfd.readouterr().err and (unpacked / "index.html").exists()

    # Nothing personal, no link, no location and no passphrase in XCom, logs or the run's output.
    leaks = [typed_email.strip().lower(), (member.email or "").lower(), member.e164 or "", "555-0132", "4155550132",
             (member.full_name or "").lower(), link, passphrase, f"exports/{request_id}"]  # fmt: skip
    for where, text in (("xcom", run_xcoms(dag_run)), ("logs", run_logs(dag_run)),
                        ("rendered fields", run_rendered_fields(dag_run)),
                        ("output", output.out + output.err)):  # fmt: skip
        for leak in leaks:
            assert leak not in text.lower() and leak not in text, f"{where} holds {leak[:12]}..."
    with psycopg.connect(deployment.app_url) as conn:
        reveals = conn.execute(
            "SELECT reveal_count FROM governance.export_passphrases WHERE request_id = %s", (request_id,)
        ).fetchone()
        bundle = conn.execute(
            "SELECT status, gate_result->>'passed', link_expires_at IS NOT NULL FROM governance.export_bundles"
            " WHERE request_id = %s", (request_id,),
        ).fetchone()  # fmt: skip
    assert reveals == (2,), "each reveal is counted (the passphrase command, then decrypt-bundle)"
    assert bundle == ("published", "true", True)


def test_a_processor_that_stays_down_fails_the_run_without_a_bundle_and_a_rerun_after_recovery_completes(
    export_dag: Any, deployment: Deployment, s3: Any
) -> None:
    request_id = recorded_request(deployment, "caller_only", verified=True)
    deployment.crm.set_fault("error", status=503)
    try:
        failed = export_dag.test(run_conf={"request_id": request_id})
    finally:
        deployment.crm.clear_faults()
    states = task_states(failed)
    assert failed.state == DagRunState.FAILED
    assert states["build_bundle"] == "failed" and states["publish_bundle"] == "upstream_failed"
    assert states["route_verification"] == "success" and states["verify_identity"] == "skipped"
    row = request_row(deployment, request_id)
    assert row["status"] == "failed" and row["result_uri"] is None
    assert "collecting the data" in row["outcome_detail"]
    assert export_keys(deployment, s3, request_id) == [], "no partial bundle, not even in staging"
    assert not s3.list_multipart_uploads(Bucket=deployment.bucket).get("Uploads")

    rerun = export_dag.test(run_conf={"request_id": request_id})
    assert rerun.state == DagRunState.SUCCESS, task_states(rerun)
    row = request_row(deployment, request_id)
    assert row["status"] == "completed" and row["result_uri"]
    assert export_keys(deployment, s3, request_id) == [f"exports/{request_id}/aircalls-export-{request_id}.zip.age"]


def test_a_failed_quality_gate_fails_the_run_and_issues_no_link(
    export_dag: Any, deployment: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    other = cast_member("shared_business_user_2")
    with psycopg.connect(deployment.app_url) as conn:
        planted = conn.execute("SELECT * FROM app.users WHERE id = %s", (other.user_id,)).fetchone()
    original = collect.stream_table

    def with_a_colleague(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        for columns, batch in original(conn, dm, footprint, table, **kw):
            yield columns, [*batch, planted] if table.table == "users" else batch

    monkeypatch.setattr(collect, "stream_table", with_a_colleague)
    request_id = recorded_request(deployment, "shared_business_user_1", verified=True)
    dag_run = export_dag.test(run_conf={"request_id": request_id})
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.FAILED
    assert states["build_bundle"] == "success" and states["check_bundle"] == "failed"
    assert states["publish_bundle"] == "upstream_failed" and states["close_request"] == "success"
    assert states["request_outcome"] == "failed", "the run fails because the request was not served"
    row = request_row(deployment, request_id)
    assert row["status"] == "failed" and row["result_uri"] is None and "quality gate" in row["outcome_detail"]
    assert export_keys(deployment, s3, request_id) == []
    with psycopg.connect(deployment.app_url) as conn:
        status, gate = conn.execute(
            "SELECT status, gate_result FROM governance.export_bundles WHERE request_id = %s", (request_id,)
        ).fetchone()
    assert status == "discarded" and gate["passed"] is False
    assert (other.email or "").lower() not in json.dumps(gate).lower()


def test_a_rejected_verification_ends_the_request_with_nothing_collected(
    export_dag: Any, deployment: Deployment, s3: Any
) -> None:
    with answering_approval(workflow.REJECT_OPTION):
        dag_run = export_dag.test(run_conf={"phone": cast_member("call_handler").phone})
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.SUCCESS, states  # a rejection by staff answers the request
    assert states["record_verification"] == "skipped" and states["build_bundle"] == "skipped"
    assert states["request_outcome"] == "success"
    request_id = xcom_result(dag_run, "open_request")["request_id"]
    row = request_row(deployment, request_id)
    assert row["status"] == "rejected" and row["result_uri"] is None and row["verified_at"] is None
    with psycopg.connect(deployment.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM governance.export_bundles WHERE request_id = %s",
                            (request_id,)).fetchone() == (0,)  # fmt: skip
    assert export_keys(deployment, s3, request_id) == []


def test_a_household_phone_alone_is_rejected_with_nothing_collected_and_says_which_identity_to_add(
    export_dag: Any, deployment: Deployment, s3: Any
) -> None:
    member = cast_member("household_b")  # shares household_a's phone in business 4, no e-mail
    request_id = recorded_request(deployment, "household_b", verified=True)
    asked_before = len(deployment.crm.request_log()) + len(deployment.payments.request_log())
    dag_run = export_dag.test(run_conf={"request_id": request_id})
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.FAILED, "the run shows the refusal"
    assert states["build_bundle"] == "success" and states["check_bundle"] == "skipped"
    assert states["publish_bundle"] == "skipped" and states["close_request"] == "success"
    assert states["request_outcome"] == "failed"
    row = request_row(deployment, request_id)
    assert row["status"] == "rejected" and row["result_uri"] is None and row["completed_at"] is None
    detail = row["outcome_detail"]
    assert "refused before anything was collected" in detail and "2 rows in business 4" in detail
    assert "identity that tells the people apart" in detail
    assert export_keys(deployment, s3, request_id) == [], "nothing staged or published"
    assert not s3.list_multipart_uploads(Bucket=deployment.bucket).get("Uploads")
    with psycopg.connect(deployment.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM governance.export_bundles WHERE request_id = %s",
                            (request_id,)).fetchone() == (0,)  # fmt: skip
    assert len(deployment.crm.request_log()) + len(deployment.payments.request_log()) == asked_before
    refusal = xcom_result(dag_run, "build_bundle")
    assert refusal["refused"] is True and refusal["ambiguities"] == [
        {"table": "aircalls_app.callers", "business_id": 4, "rows": 2}
    ]
    for where, text in (("xcom", run_xcoms(dag_run)), ("logs", run_logs(dag_run)), ("outcome", detail)):
        for leak in (member.e164 or "", (member.phone or "")[-8:], member.full_name or ""):
            assert leak and leak not in text, f"{where} holds an identity"


def test_an_unknown_request_id_or_bad_identities_are_refused_before_anything_is_read(
    export_dag: Any, deployment: Deployment
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    refusals = {  # what a person typed -> the field named in words, never a pattern or the value
        (("email", ""), ("phone", None)): "fill in at least one of E-mail address, Phone number or Request id",
        (("email", "%@example.com"),): "E-mail address contains a wildcard character",
        (("email", "not an address"),): "E-mail address is not a valid address",
        (("phone", "12"),): "Phone number has too few digits",
        (("request_id", "exp-1"),): "Request id is not a request id",
        (("request_id", "exp-20260101-0123456789ab"), ("email", "x@example.com")): "not both",
    }
    for fields, words in refusals.items():
        with pytest.raises(AirflowFailException, match="cannot start this export") as refused:
            workflow.open_export_request(dict(fields), run_id="manual__x", received_at=datetime.now(UTC))
        assert words in str(refused.value) and "^" not in str(refused.value)
    dag_run = export_dag.test(run_conf={"request_id": None, "email": "not an address", "phone": None})
    assert dag_run.state == DagRunState.FAILED and task_states(dag_run)["open_request"] == "failed"

    unknown = "exp-20260101-0123456789ab"
    calls_before = len(deployment.crm.request_log()) + len(deployment.payments.request_log())
    dag_run = export_dag.test(run_conf={"request_id": unknown})
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.FAILED
    assert states["open_request"] == "failed" and states["build_bundle"] == "upstream_failed"
    with psycopg.connect(deployment.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM governance.privacy_requests WHERE request_id = %s",
                            (unknown,)).fetchone() == (0,)  # fmt: skip
    assert len(deployment.crm.request_log()) + len(deployment.payments.request_log()) == calls_before, "no system read"


def test_rebuilding_a_runs_bundle_gives_the_same_manifest_hashes_and_passes_the_gate_again(
    deployment: Deployment, airflow_db: str
) -> None:
    request_id = recorded_request(deployment, "caller_only", verified=True)
    handle = {"request_id": request_id, "business_id": None}
    params = {"formats": ["json", "csv", "html"]}
    first = workflow.build_bundle(handle, params, run_id="manual__rebuild")
    second = workflow.build_bundle(handle, params, run_id="manual__rebuild")  # a cleared task, run again
    assert first["files_digest"] == second["files_digest"]
    assert first["generated_at"] != second["generated_at"]
    assert workflow.check_bundle(handle, second, run_id="manual__rebuild")["passed"] is True


def test_two_runs_of_one_request_never_overwrite_each_other_the_newest_claim_publishes_and_closes(
    deployment: Deployment, s3: Any
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    request_id = recorded_request(deployment, "caller_only", verified=True)
    handle = workflow.open_export_request({"request_id": request_id}, run_id="manual__a", received_at=datetime.now(UTC))
    params = {"formats": ["json"], "link_valid_days": 1}
    built_a = workflow.build_bundle(handle, params, run_id="manual__a")
    built_b = workflow.build_bundle(handle, params, run_id="manual__b")  # started later: B holds the request
    gate_a = workflow.check_bundle(handle, built_a, run_id="manual__a")
    with pytest.raises(AirflowFailException, match="newer run"):
        workflow.publish_bundle(handle, gate_a, run_id="manual__a")
    assert export_keys(deployment, s3, request_id) == sorted(
        [f"exports/{request_id}/staging/{k}" for k in _staging_names("manual__a", "manual__b")]
    ), "A published nothing"
    published_b = workflow.publish_bundle(handle, workflow.check_bundle(handle, built_b, run_id="manual__b"),
                                          run_id="manual__b")  # fmt: skip
    closed_a = workflow.close_export_request(handle, run_id="manual__a", published=None, verification_response=None,
                                             task_states={"publish_bundle": "failed"}, built=built_a)  # fmt: skip
    assert closed_a["status"] == "superseded" and closed_a["served"] is False
    published_key = f"exports/{request_id}/aircalls-export-{request_id}.zip.age"
    assert export_keys(deployment, s3, request_id) == sorted(
        [published_key, f"exports/{request_id}/staging/{_staging_names('manual__b')[0]}"]
    ), "A removed only its own staged bundle and left B's published one"
    assert request_row(deployment, request_id)["status"] == "in_progress"
    closed_b = workflow.close_export_request(handle, run_id="manual__b", published=published_b,
                                             verification_response=None, task_states={}, built=built_b)  # fmt: skip
    assert closed_b["served"] is True and request_row(deployment, request_id)["status"] == "completed"
    assert export_keys(deployment, s3, request_id) == [published_key]


def _staging_names(*run_ids: str) -> list[str]:
    import hashlib

    return [f"{hashlib.sha256(r.encode()).hexdigest()[:20]}.zip.age" for r in run_ids]
