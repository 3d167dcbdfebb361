"""One request served from the command line: ``request new``, ``request verify``, ``serve``.

``serve`` runs the request's DAG with ``dag.test()`` and the request id only. A pending human
step (an unverified export) must stop it within seconds with the command that completes the step,
not leave it waiting for ever; once verified, the same command serves the request end to end and
prints the bundle's link and how to get its passphrase. Checked by what the systems hold: the
request's record, its actions, the runs in Airflow's metadata database, the bundle behind the link.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from governance import serve
from governance.cli import main
from governance.workflows import dsr_export as export_workflow
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment, cloned_deployment

pytestmark = [pytest.mark.slow(seconds=60), pytest.mark.integration, pytest.mark.dagrun]


@pytest.fixture
def deployment(reference_deployment: Deployment, s3: Any, airflow_db: str) -> Iterator[Deployment]:
    with cloned_deployment(reference_deployment, s3, "serve") as (clone, patch):
        patch.setattr(export_workflow, "PROCESSOR_BACKOFF_S", 0.01)
        patch.setattr(export_workflow, "PROCESSOR_ATTEMPTS", 3)
        yield clone


def _new_request(kind: str, email: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """``echo 'email: ...' | python -m governance request new --kind KIND``: the printed id."""
    monkeypatch.setattr("sys.stdin", io.StringIO(f"email: {email}\n"))
    capsys.readouterr()
    assert main(["request", "new", "--kind", kind]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def _request(deployment: Deployment, request_id: str) -> dict[str, Any]:
    with psycopg.connect(deployment.app_url) as conn:
        cur = conn.execute("SELECT * FROM governance.privacy_requests WHERE request_id = %s", (request_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def _runs(dag_id: str) -> list[tuple[str, str]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [(r.run_id, str(r.state)) for r in session.scalars(select(DagRun).where(DagRun.dag_id == dag_id))]


def test_serve_stops_within_seconds_on_an_unverified_export_and_serves_it_after_request_verify(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    member = cast_member("caller_only")
    assert member.email
    request_id = _new_request("export", member.email, monkeypatch, capsys)
    runs_before = _runs("dsr_export")

    began = time.monotonic()
    assert main(["serve", request_id]) == 2
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert f"python -m governance request verify {request_id} --method METHOD --by YOUR_NAME" in err
    assert "Privacy requests page" in err
    assert _runs("dsr_export") == runs_before, "nothing was started that would wait"
    assert _request(deployment, request_id)["status"] == "received"

    assert main(["request", "verify", request_id, "--method", "phone_callback", "--by", "privacy.officer"]) == 0
    row = _request(deployment, request_id)
    # The same record the identity check of the page and the DAG writes for an export.
    assert row["verified_at"] is not None and row["status"] == "verified"
    assert row["verification_method"] == "call-back to the number on file"
    assert row["verification_method"] in export_workflow.VERIFICATION_OPTIONS.values()
    with psycopg.connect(deployment.app_url) as conn:
        actions = conn.execute(
            "SELECT action, actor, detail FROM governance.request_actions WHERE request_id = %s ORDER BY at", (request_id,)
        ).fetchall()
    assert actions == [("verified", "privacy.officer", {"method": "call-back to the number on file", "via": "cli"})]

    capsys.readouterr()
    assert main(["serve", request_id, "--by", "privacy.officer"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for task_id in ("open_request", "record_verification", "build_bundle", "check_bundle", "publish_bundle"):
        assert any(line.split()[:2] == [task_id, "success"] for line in lines), f"{task_id} not printed:\n{out}"
    row = _request(deployment, request_id)
    assert row["status"] == "completed" and row["result_uri"]
    assert f"download link (send it to the person by e-mail): {row['result_uri']}" in out
    assert f"python -m governance export-passphrase {request_id}" in out
    assert requests.get(row["result_uri"], timeout=30).status_code == 200, "the printed link downloads the bundle"
    assert member.email.lower() not in out.lower()


def test_a_run_that_reaches_a_human_step_anyway_is_stopped_and_marked_failed_with_the_request_unchanged(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The watcher behind the check: a run parked at verify_identity is stopped within seconds of
    reaching it, not left waiting for an answer nobody will give."""
    member = cast_member("both_user_and_caller")
    assert member.email
    request_id = _new_request("export", member.email, monkeypatch, capsys)
    printed: list[str] = []

    earlier = dict(_runs("dsr_export"))  # other tests of this worker may have left runs of their own
    began = time.monotonic()
    dag_run, parked = serve.run_request_dag("dsr_export", {"request_id": request_id}, out=printed.append)
    assert time.monotonic() - began < 60
    assert dag_run is None and parked == "verify_identity"
    assert any(line.split()[:2] == ["open_request", "success"] for line in printed), printed
    states = {run_id: state for run_id, state in _runs("dsr_export") if run_id not in earlier}
    assert len(states) == 1, states
    assert "failed" in {s.split(".")[-1].lower() for s in states.values()}
    assert not any(s.split(".")[-1].lower() == "running" for s in states.values()), "no run left waiting"
    row = _request(deployment, request_id)
    assert row["status"] == "received" and row["verified_at"] is None


def test_serve_an_erasure_dry_run_then_refuses_to_erase_unapproved_then_erases_after_request_verify(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    member = cast_member("call_handler")
    assert member.email
    request_id = _new_request("erasure", member.email, monkeypatch, capsys)
    with psycopg.connect(deployment.app_url) as conn:
        users_before = conn.execute("SELECT count(*) FROM app.users").fetchone()

    assert main(["serve", request_id]) == 0  # a dry run: the plan, nothing changes
    out = capsys.readouterr().out
    assert f"serve: dry run of {request_id}: plan epl-" in out and "nothing changed" in out
    assert any(line.split()[:2] == ["plan_erasure", "success"] for line in out.splitlines()), out
    assert f"python -m governance serve {request_id} --erase" in out
    with psycopg.connect(deployment.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM app.users").fetchone() == users_before

    began = time.monotonic()
    assert main(["serve", request_id, "--erase"]) == 2
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert "not verified and approved" in err and f"request verify {request_id}" in err

    assert main(["request", "verify", request_id, "--method", "id_document", "--by", "privacy.officer"]) == 0
    capsys.readouterr()
    assert main(["serve", request_id, "--erase"]) == 0
    out = capsys.readouterr().out
    for task_id in ("execute_database", "record_suppression", "verify_erasure", "issue_certificate"):
        assert any(line.split()[:2] == [task_id, "success"] for line in out.splitlines()), f"{task_id}:\n{out}"
    row = _request(deployment, request_id)
    assert row["status"] == "completed"
    assert f"certificate: {row['result_uri']}" in out or "certificate: s3://" in out
    assert "app.users:" in out
    with psycopg.connect(deployment.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (member.user_id,)).fetchone() == (0,)
    assert member.email.lower() not in out.lower()
