"""privacy_request_intake end to end, and the canary search: nothing personal left in Airflow.

One combined ``dag.test()`` run of the intake on a private copy of the reference deployment: a
person whose every personal field holds a unique canary string asks for a copy of their data and
for erasure; the intake rejects a duplicate, dispatches both verified requests as runs carrying
only the request id (run ids derived from it), the runs it queued are run (``dag.test()`` has no
scheduler: the harness runs each queued run under the run id and configuration the intake gave
it), and then Airflow's metadata database (every table), the log files, the captured task output
and the lineage events are searched for the canaries, the download link and the passphrase.

A second, cheap test drives the one dispatcher against Airflow's real metadata database (no DAG
run): the Privacy requests page and the intake start a request once, and a dispatch whose answer
was lost or whose API was unreachable is retried without a second run.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from airflow.utils.state import DagRunState

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.dispatch import MetadataRunTrigger, dispatch_request, dispatch_run_id, pending_dispatches
from governance.identity import SubjectIdentities
from governance.privacy_requests import create_request, verify_request
from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.lineage import LineageEvents
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=90), pytest.mark.integration, pytest.mark.dagrun]


@pytest.fixture(scope="module")
def synced_dags(airflow_db: str) -> None:
    """The DAGs folder written to the metadata DB, as the DAG processor (and dag.test()) does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


def _free_phone(conn: psycopg.Connection[Any]) -> str:
    for _ in range(50):
        phone = f"+1415555{secrets.randbelow(10000):04d}"
        taken = conn.execute("SELECT 1 FROM app.callers WHERE phone = %s UNION ALL SELECT 1 FROM app.users"
                             " WHERE phone_e164 = %s", (phone, phone)).fetchone()  # fmt: skip
        if taken is None:
            return phone
    raise AssertionError("no free phone number")


def seed_canary_person(app_url: str) -> tuple[str, str, list[str]]:
    """A user who is also a caller, every personal field a canary: (e-mail, phone, canaries)."""
    token = f"cnry{secrets.token_hex(5)}"
    with psycopg.connect(app_url) as conn:
        phone = _free_phone(conn)
        business = conn.execute("SELECT min(id) FROM app.businesses").fetchone()[0]
        ids = conn.execute(
            "SELECT max(u.id) + 1, (SELECT max(id) + 1 FROM app.callers), (SELECT max(id) + 1 FROM app.calls),"
            " (SELECT max(id) + 1 FROM app.messages), (SELECT max(id) + 1 FROM app.support_tickets),"
            " (SELECT max(id) + 1 FROM app.usage_events), (SELECT max(id) + 1 FROM app.appointments) FROM app.users u"
        ).fetchone()  # fmt: skip
        user, caller, call, message, ticket, event, appointment = ids
        email = f"{token}.person@canary.example"
        national = f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"
        now = datetime(2026, 11, 20, tzinfo=UTC)
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, phone, phone_e164, job_title,"
                     " billing_address, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                     (user, business, f"{token} Fullname", email, national, phone, f"{token} job title",
                      f"{token} 1 Canary Street", now))  # fmt: skip
        conn.execute("INSERT INTO app.callers (id, business_id, phone, full_name, email, first_seen_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s)", (caller, business, phone, f"{token} Callername", email, now))  # fmt: skip
        conn.execute("INSERT INTO app.calls (id, business_id, caller_id, handled_by_user_id, started_at, duration_s,"
                     " outcome, transcript) VALUES (%s, %s, %s, NULL, %s, 60, 'answered', %s)",
                     (call, business, caller, now, f"{token} transcript: my number is {phone}"))  # fmt: skip
        conn.execute("INSERT INTO app.messages (id, business_id, caller_id, channel, direction, body, sent_at)"
                     " VALUES (%s, %s, %s, 'sms', 'inbound', %s, %s)", (message, business, caller, f"{token} sms body", now))  # fmt: skip
        conn.execute("INSERT INTO app.appointments (id, business_id, caller_id, scheduled_for, notes, created_at)"
                     " VALUES (%s, %s, %s, %s, %s, %s)", (appointment, business, caller, now, f"{token} notes", now))  # fmt: skip
        conn.execute("INSERT INTO app.support_tickets (id, user_id, subject, body, status, created_at)"
                     " VALUES (%s, %s, %s, %s, 'open', %s)", (ticket, user, f"{token} subject", f"{token} body", now))  # fmt: skip
        conn.execute("INSERT INTO app.usage_events (id, user_id, occurred_at, ip_address, user_agent, device_id, path)"
                     " VALUES (%s, %s, %s, '203.0.113.77', %s, %s, '/app')",
                     (event, user, now, f"{token}-agent", f"{token}-device"))  # fmt: skip
    return email, phone, [token, phone, phone[1:], national, phone[2:]]


def _record(app_url: str, kind: str, email: str, phone: str, at: datetime) -> str:
    with psycopg.connect(app_url) as conn:
        return create_request(
            conn, kind=kind, identities=SubjectIdentities.parse(email=email, phone=phone, region="US"),  # type: ignore[arg-type]
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at, source="cli",
        )  # fmt: skip


def _died_run(url: str, at: datetime) -> str:
    """A verified export dispatched to a run that then died: Airflow shows it failed, and no
    task recorded the request's outcome."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with psycopg.connect(url) as conn:
        request_id = _record(url, "export", f"died.{secrets.token_hex(4)}@example.com", _free_phone(conn), at)
    verify_request(url, request_id, method="email_link", by="intake-desk", at=at)
    dispatch_request(url, request_id, trigger=MetadataRunTrigger(), at=at, by="privacy.officer")
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="dsr_export", run_id=dispatch_run_id(request_id)).one()
        run.state, run.end_date = DagRunState.FAILED, at
    return request_id


@contextmanager
def as_scheduler_would(run_id: str) -> Iterator[None]:
    """dag.test() names its own run: give it the run id the intake triggered."""
    from airflow.models.dagrun import DagRun

    with mock.patch.object(DagRun, "generate_run_id", return_value=run_id):
        yield


def run_queued(dag: Any, run_id: str) -> Any:
    """Run a run the intake queued, as the scheduler would: same run id, same configuration."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        queued = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        assert queued.state == DagRunState.QUEUED
        conf = dict(queued.conf or {})
        session.delete(queued)
    with as_scheduler_would(run_id):
        return dag.test(run_conf=conf)


def metadata_text() -> str:
    """Every value of every table of Airflow's metadata database, as text."""
    path = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    out: list[str] = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (names from sqlite_master)
                for value in row:
                    if isinstance(value, bytes):
                        out.append(value.decode("utf-8", errors="replace"))
                    elif value is not None:
                        out.append(str(value))
    assert "dag_run" in tables and "xcom" in tables and "log" in tables and "hitl_detail" in tables
    assert "rendered_task_instance_fields" in tables and "task_instance_note" in tables
    return "\n".join(out)


def log_files_text() -> str:
    home = Path(os.environ["AIRFLOW_HOME"])
    roots = {Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]), home / "logs"}
    return "\n".join(p.read_text(errors="replace") for root in roots if root.exists() for p in root.rglob("*")
                     if p.is_file())  # fmt: skip


def _found(needles: list[str], **haystacks: str) -> list[tuple[str, str]]:
    return [(where, needle) for where, text in haystacks.items() for needle in needles if needle and needle in text]


def test_intake_dispatches_once_and_after_export_erasure_and_scrub_airflow_holds_no_personal_data(
    get_dag: Callable[[str], Any], synced_dags: None, reference_clone: Deployment, lineage_events: LineageEvents,
    s3: Any, capfd: pytest.CaptureFixture[str],
) -> None:
    from governance.export.state import reveal_passphrase
    from governance.run_confs import scrub_run_confs

    url = reference_clone.app_url
    email, phone, canaries = seed_canary_person(url)
    at = datetime.now(UTC) - timedelta(minutes=5)
    export_id = _record(url, "export", email, phone, at)
    erasure_id = _record(url, "erasure", email, phone, at)
    duplicate_id = _record(url, "export", email.upper(), phone, at + timedelta(seconds=1))
    for request_id in (export_id, erasure_id):
        verify_request(url, request_id, method="email_link", by="intake-desk", at=at)
    died_id = _died_run(url, at)

    intake = get_dag("privacy_request_intake").test()
    assert intake.state == DagRunState.SUCCESS, task_states(intake)
    assert xcom_result(intake, "validate_requests") == {"awaiting_verification": [], "rejected": [],
                                                         "duplicates": {duplicate_id: export_id}}  # fmt: skip
    assert sorted(xcom_result(intake, "record_dispatches")["dispatched"]) == sorted([export_id, erasure_id])
    # A run that Airflow shows failed, its request still dispatched: reconciled as failed, with why.
    assert list(xcom_result(intake, "reconcile_runs")) == [died_id]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status, outcome_detail FROM governance.privacy_requests WHERE request_id = %s",
                            (died_id,)).fetchone() == (  # fmt: skip
            "failed", f"run {dispatch_run_id(died_id)} of dsr_export ended failed without recording the request's outcome")
    runs = {"dsr_export": dispatch_run_id(export_id), "dsr_erasure": dispatch_run_id(erasure_id)}
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        queued = {(r.dag_id, r.run_id): dict(r.conf or {}) for r in session.query(DagRun).filter(
            DagRun.run_id.in_(list(runs.values())))}  # fmt: skip
    assert queued == {("dsr_export", runs["dsr_export"]): {"request_id": export_id},
                      ("dsr_erasure", runs["dsr_erasure"]): {"request_id": erasure_id, "dry_run": False}}  # fmt: skip
    # A repeated dispatch (the page, a retried task) finds the run and starts nothing.
    again = dispatch_request(url, export_id, trigger=MetadataRunTrigger(), at=at, by="privacy.officer")
    assert (again.triggered, again.recorded, again.dispatch.run_id) == (False, False, runs["dsr_export"])

    export_run = run_queued(get_dag("dsr_export"), runs["dsr_export"])
    assert export_run.state == DagRunState.SUCCESS, task_states(export_run)
    erasure_run = run_queued(get_dag("dsr_erasure"), runs["dsr_erasure"])
    assert erasure_run.state == DagRunState.SUCCESS, task_states(erasure_run)

    with psycopg.connect(url) as conn:
        outcome = dict(conn.execute("SELECT request_id, status FROM governance.privacy_requests WHERE request_id"
                                    " = ANY(%s)", ([export_id, erasure_id, duplicate_id],)).fetchall())  # fmt: skip
        left = conn.execute("SELECT (SELECT count(*) FROM app.users WHERE email = %s),"
                            " (SELECT count(*) FROM app.callers WHERE phone = %s)", (email, phone)).fetchone()  # fmt: skip
        link = conn.execute("SELECT result_uri FROM governance.privacy_requests WHERE request_id = %s",
                            (export_id,)).fetchone()[0]  # fmt: skip
        passphrase = reveal_passphrase(conn, export_id, cipher=cipher_from_airflow(), at=at, by="privacy.officer")
        lifecycle = conn.execute("SELECT from_status, to_status FROM governance.request_transitions"
                                 " WHERE request_id = %s ORDER BY transition_id", (export_id,)).fetchall()  # fmt: skip
    assert outcome == {export_id: "completed", erasure_id: "completed", duplicate_id: "rejected"}
    assert left == (0, 0), "the erasure removed the person from the app"
    assert link and passphrase
    assert lifecycle == [("received", "verified"), ("verified", "dispatched"), ("dispatched", "in_progress"),
                         ("in_progress", "completed")]  # fmt: skip

    # The daily SLA report counts both completed requests (and is searched with the rest).
    report = get_dag("privacy_request_sla_report").test()
    assert report.state == DagRunState.SUCCESS, task_states(report)
    published = xcom_result(report, "publish_sla_report")
    assert published["completed"]["export"] >= 1 and published["completed"]["erasure"] >= 1
    page = s3.get_object(Bucket=reference_clone.bucket, Key="reports/privacy-requests/latest.html")["Body"].read()
    assert b"<svg" in page and b"Time to complete" in page

    # The one documented exception: identities typed into a trigger form stay in that run's
    # configuration (and a trigger's action-log entry) until scrub-run-confs has run.
    from airflow.models.log import Log

    with create_session() as session:
        form_run = DagRun(dag_id="dsr_export", run_id=f"manual__{secrets.token_hex(8)}", run_type="manual",
                          conf={"email": email, "phone": phone, "request_id": ""}, state="success", logical_date=None,
                          run_after=at, start_date=at)  # fmt: skip
        form_run.end_date = at + timedelta(minutes=1)
        session.add(form_run)
        session.add(Log(event="trigger_dag_run", owner="privacy-staff", dag_id="dsr_export",
                        extra=f'{{"conf": {{"email": "{email}", "phone": "{phone}"}}, "method": "POST"}}'))  # fmt: skip
    assert _found(canaries, metadata=metadata_text()), "the form's identities are in Airflow until the scrub"
    scrub_run_confs(now=datetime.now(UTC), min_age=timedelta(0), dry_run=False, governance_conninfo=url)

    out, err = capfd.readouterr()
    secrets_of_the_person = [*canaries, email, link, passphrase]
    metadata = metadata_text()
    assert runs["dsr_erasure"] in metadata and erasure_id in metadata, "the search reads the runs' rows"
    found = _found(secrets_of_the_person, metadata=metadata, log_files=log_files_text(),
                   task_output=out + err, lineage=lineage_events.raw_text())  # fmt: skip
    assert "Returned value" in out + err + log_files_text(), "the search reads the runs' task logs"
    assert lineage_events.task_events("dsr_export", runs["dsr_export"]), "the search reads the runs' lineage events"
    assert found == [], f"personal data left in Airflow: {[where for where, _ in found]}"


def test_the_page_and_the_intake_share_one_dispatcher_and_a_lost_or_failed_trigger_is_retried_once(
    synced_dags: None, make_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from governance.migrations import migrate
    from governance.ui.mount import MOUNT, LazyApp
    from tests.integration.test_privacy_requests_api import as_user

    url = make_db("dispatch")
    migrate(url)
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", url.replace("postgresql://", "postgres://"))
    at = datetime(2026, 11, 30, 9, tzinfo=UTC)
    token = secrets.token_hex(4)
    ids = [_record(url, "export", f"page.{token}@example.com", f"+1415555{n:04d}", at) for n in (171, 172)]
    for request_id in ids:
        verify_request(url, request_id, method="email_link", by="desk", at=at)
    page_first, lost_answer = ids

    def unreachable(dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        raise ConnectionError("metadata API unreachable")

    def answer_lost(dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        MetadataRunTrigger()(dag_id, run_id, conf)
        raise TimeoutError("the run was created but the answer never came back")

    # The Privacy requests page starts a verified request through the same dispatcher, twice.
    init_auth_manager()
    server = FastAPI()  # mounted as Airflow's API server mounts the plugin's app
    server.mount(MOUNT, LazyApp())
    with TestClient(server, base_url="http://testserver" + MOUNT) as page:
        for _ in range(2):
            started = page.post(f"/api/requests/{page_first}/runs", headers=as_user("privacy.officer", "op"), json={})
            assert started.status_code == 200 and started.json() == {"run_id": dispatch_run_id(page_first)}
    # The API is unreachable, then the answer is lost: the request stays verified each time...
    with pytest.raises(ConnectionError):
        dispatch_request(url, lost_answer, trigger=unreachable, at=at, by="privacy_request_intake")
    with pytest.raises(TimeoutError):
        dispatch_request(url, lost_answer, trigger=answer_lost, at=at, by="privacy_request_intake")
    with psycopg.connect(url) as conn:
        # ...so the next intake pass dispatches it, not the page's request (already dispatched).
        assert [d.request_id for d in pending_dispatches(conn)] == [lost_answer]
    retried = dispatch_request(url, lost_answer, trigger=MetadataRunTrigger(), at=at, by="privacy_request_intake")
    assert (retried.triggered, retried.recorded) == (False, True), "the lost run was found, not started again"
    with create_session() as session:
        runs = sorted((r.run_id, dict(r.conf or {})) for r in session.query(DagRun).filter(
            DagRun.dag_id == "dsr_export", DagRun.run_id.in_([dispatch_run_id(i) for i in ids])))  # fmt: skip
    assert runs == sorted((dispatch_run_id(i), {"request_id": i}) for i in ids), "one run per request"
    with psycopg.connect(url) as conn:
        actions = conn.execute("SELECT request_id, actor FROM governance.request_actions WHERE action = 'dispatched'"
                               " ORDER BY request_id").fetchall()  # fmt: skip
        assert pending_dispatches(conn) == []
    assert sorted(actions) == sorted([(page_first, "privacy.officer"), (lost_answer, "privacy_request_intake")])
