"""The Privacy requests page's lifecycle steps over HTTP (FastAPI's TestClient, Airflow's real
simple auth manager issuing real JWTs, the page's HTML form posts): Extend (once, with a reason,
showing the new deadline), Retry (a failed request dispatched again through the intake's
dispatcher, as a new run) and Record the response (when and how). Each records the authenticated
user; refused steps are shown on the page and change nothing. Asserted on the rows left in
``governance.privacy_requests``, ``governance.request_transitions`` and ``request_actions``, and on
the run left in Airflow's metadata database."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.dispatch import dispatch_run_id
from governance.identity import SubjectIdentities
from governance.privacy_requests import create_request, verify_request
from governance.workflows.request_intake import close_request, mark_in_progress
from tests.dags.test_privacy_request_intake import synced_dags  # noqa: F401 (fixture: the DAGs in the metadata DB)
from tests.integration.test_privacy_requests_api import as_user, mounted_page, use_as_governance_db

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=30)]


@pytest.fixture
def gov(make_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> str:
    return use_as_governance_db(make_db("pagelife"), monkeypatch)


@pytest.fixture
def page(airflow_db: str) -> Iterator[Any]:
    with mounted_page(follow_redirects=False) as c:
        yield c


def _record(url: str, kind: str, at: datetime) -> str:
    with psycopg.connect(url) as conn:
        return create_request(conn, kind=kind, identities=SubjectIdentities.parse(email=f"p.{secrets.token_hex(4)}@example.com"),  # type: ignore[arg-type]
                              hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at, source="cli")  # fmt: skip


def _location(response: Any) -> str:
    """Where the page redirected to, relative to the mounted app (the test client's base)."""
    from governance.ui.mount import MOUNT

    return str(response.headers["location"]).removeprefix(MOUNT)


def _row(url: str, request_id: str, *columns: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {', '.join(columns)} FROM governance.privacy_requests WHERE request_id = %s",  # noqa: S608
                           (request_id,)).fetchone()  # fmt: skip
    assert row is not None
    return tuple(row)


def _transitions(url: str, request_id: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT from_status, to_status, detail FROM governance.request_transitions WHERE request_id = %s ORDER BY transition_id",
            (request_id,)).fetchall()]  # fmt: skip


def _actions(url: str, request_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT action, actor, detail FROM governance.request_actions WHERE request_id = %s ORDER BY action_id",
            (request_id,)).fetchall()]  # fmt: skip


def test_extend_once_with_a_reason_by_the_signed_in_user_shows_the_new_deadline_and_a_second_is_refused(
    page: Any, gov: str
) -> None:
    received = datetime.now(UTC) - timedelta(days=3)
    request_id = _record(gov, "export", received)
    due = _row(gov, request_id, "due_at")[0]
    officer = as_user("olga", "op")

    # A role that may not approve may not extend; a short reason is refused: nothing changes.
    assert page.post(f"/requests/{request_id}/extend", headers=as_user("uma", "user"),
                     data={"days": "30", "reason": "complex request, many systems"}).status_code == 403  # fmt: skip
    short = page.post(f"/requests/{request_id}/extend", headers=officer, data={"days": "30", "reason": "busy"})
    assert short.status_code == 409 and "Not extended" in short.text and "at least 10 characters" in short.text
    too_long = page.post(f"/requests/{request_id}/extend", headers=officer, data={"days": "90", "reason": "complex request"})
    assert too_long.status_code == 409 and "between 1 and 62 days" in too_long.text
    assert _row(gov, request_id, "status", "due_at", "extended_at") == ("received", due, None)

    done = page.post(f"/requests/{request_id}/extend", headers=officer,
                     data={"days": "30", "reason": "complex request, many systems"})  # fmt: skip
    assert done.status_code == 303 and done.headers["location"].endswith(f"/requests/{request_id}?done=extended")
    shown = page.get(_location(done), headers=officer)
    new_due = due + timedelta(days=30)
    assert f"now due {new_due:%Y-%m-%d %H:%M} UTC" in shown.text and f"was {due:%Y-%m-%d %H:%M} UTC" in shown.text
    assert "id='extend-form'" not in shown.text, "the form is gone once extended"
    assert _row(gov, request_id, "status", "due_at", "original_due_at", "extended_by", "extension_reason") == (
        "extended", new_due, due, "olga", "complex request, many systems")
    assert _transitions(gov, request_id) == [("received", "extended", "deadline extended by 30 days: complex request, many systems")]

    again = page.post(f"/requests/{request_id}/extend", headers=as_user("otto", "admin"),
                      data={"days": "10", "reason": "still more systems to ask"})  # fmt: skip
    assert again.status_code == 409 and "a deadline is extended once" in again.text
    assert _row(gov, request_id, "due_at", "extended_by") == (new_due, "olga")
    assert [(a, who, d["days"]) for a, who, d in _actions(gov, request_id)] == [("extended", "olga", 30)]


def test_retry_dispatches_a_failed_request_again_through_the_dispatcher_as_a_new_run_by_the_user(
    page: Any, gov: str, synced_dags: None  # noqa: F811
) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    at = datetime.now(UTC) - timedelta(hours=2)
    request_id = _record(gov, "export", at)
    officer = as_user("rafa", "op")
    # Never verified (received): a retry is refused on the page, nothing changes.
    refused = page.post(f"/requests/{request_id}/retry", headers=officer, data={"reason": "processor was down"})
    assert refused.status_code == 409 and "Not retried" in refused.text and "was never verified" in refused.text
    verify_request(gov, request_id, method="email_link", by="desk", at=at)
    mark_in_progress(request_id, dag_run_id="manual__died", at=at, conninfo=gov)
    close_request(request_id, succeeded=False, at=at, detail="processor stand-in unreachable", conninfo=gov)
    assert 'id=\'retry-form\'' in page.get(f"/requests/{request_id}", headers=officer).text

    assert page.post(f"/requests/{request_id}/retry", headers=as_user("vera", "viewer"),
                     data={"reason": "processor was down"}).status_code == 403  # fmt: skip
    no_reason = page.post(f"/requests/{request_id}/retry", headers=officer, data={"reason": ""})
    assert no_reason.status_code == 409 and "reason of at least 10 characters" in no_reason.text
    assert _row(gov, request_id, "status", "dispatch_attempt") == ("failed", 1)

    done = page.post(f"/requests/{request_id}/retry", headers=officer, data={"reason": "processor was down"})
    assert done.status_code == 303, done.text
    run_id = dispatch_run_id(request_id, 2)
    assert f"Dispatched again as run {run_id} (attempt 2)" in page.get(_location(done), headers=officer).text
    assert _row(gov, request_id, "status", "dispatch_attempt", "dispatch_run_id") == ("dispatched", 2, run_id)
    assert [(a, b) for a, b, _ in _transitions(gov, request_id)][-2:] == [("failed", "verified"), ("verified", "dispatched")]
    assert _transitions(gov, request_id)[-2][2] == "cleared for retry by rafa: processor was down"
    assert [(a, who) for a, who, _ in _actions(gov, request_id)] == [("verified", "desk"), ("retried", "rafa"),
                                                                     ("dispatched", "rafa"), ("run_started", "rafa")]  # fmt: skip
    with create_session() as session:
        runs = [(r.run_id, dict(r.conf or {}), r.triggering_user_name)
                for r in session.query(DagRun).filter(DagRun.dag_id == "dsr_export", DagRun.run_id.like(f"%{request_id}%"))]  # fmt: skip
    assert runs == [(run_id, {"request_id": request_id}, "rafa")], "one new run, carrying the request id only"
    # A second retry (a double click): the request is dispatched, not failed: refused, no second run.
    twice = page.post(f"/requests/{request_id}/retry", headers=officer, data={"reason": "processor was down"})
    assert twice.status_code == 409 and "is dispatched, not failed" in twice.text


def test_record_response_says_when_and_how_only_for_a_finished_request(page: Any, gov: str) -> None:
    at = datetime.now(UTC) - timedelta(days=2)
    request_id = _record(gov, "export", at)
    desk = as_user("dora", "user")
    early = page.post(f"/requests/{request_id}/respond", headers=desk, data={"via": "email", "when": ""})
    assert early.status_code == 409 and "is received, not completed or rejected" in early.text
    mark_in_progress(request_id, dag_run_id="run-1", at=at, conninfo=gov)
    completed_at = at + timedelta(hours=1)
    close_request(request_id, succeeded=True, at=completed_at, result_uri="https://objects.example/b?sig=1", conninfo=gov)

    assert page.post(f"/requests/{request_id}/respond", headers=as_user("vera", "viewer"),
                     data={"via": "email"}).status_code == 403  # fmt: skip
    no_how = page.post(f"/requests/{request_id}/respond", headers=desk, data={"via": "pigeon"})
    assert no_how.status_code == 400 and "Say how the person was told" in no_how.text
    future = page.post(f"/requests/{request_id}/respond", headers=desk,
                       data={"via": "email", "when": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")})  # fmt: skip
    assert future.status_code == 400 and "in the future" in future.text
    assert _row(gov, request_id, "status", "responded_at") == ("completed", None)

    told = completed_at + timedelta(hours=2)
    done = page.post(f"/requests/{request_id}/respond", headers=desk, data={"via": "phone", "when": told.strftime("%Y-%m-%dT%H:%M")})
    assert done.status_code == 303
    told = told.replace(second=0, microsecond=0)
    assert f"the person was told on {told:%Y-%m-%d %H:%M} UTC by phone" in page.get(_location(done), headers=desk).text
    assert _row(gov, request_id, "status", "responded_at", "responded_via") == ("responded", told, "phone")
    assert _transitions(gov, request_id)[-1] == ("completed", "responded", "outcome sent by phone (dora)")
    assert [(a, who, d["via"]) for a, who, d in _actions(gov, request_id)] == [("responded", "dora", "phone")]
    again = page.post(f"/requests/{request_id}/respond", headers=desk, data={"via": "email"})
    assert again.status_code == 409 and "is responded" in again.text
    assert _row(gov, request_id, "responded_via") == ("phone",)


def test_request_page_warns_while_its_workflow_is_paused_in_airflow_and_not_once_unpaused(
    page: Any, gov: str, synced_dags: None  # noqa: F811 (the fixture imported above)
) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select, update

    with create_session() as session:  # restored after: the metadata DB is the session's
        was = session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == "dsr_export"))
    assert was is not None, "dsr_export is in the metadata DB"

    def pause(paused: bool) -> None:
        with create_session() as session:
            session.execute(update(DagModel).where(DagModel.dag_id == "dsr_export").values(is_paused=paused))

    request_id = _record(gov, "export", datetime.now(UTC))
    officer = as_user("olga", "op")
    try:
        pause(True)
        shown = page.get(f"/requests/{request_id}", headers=officer)
        assert shown.status_code == 200 and "id='paused'" in shown.text
        assert "dsr_export</a> is paused in Airflow" in shown.text
        pause(False)
        assert "id='paused'" not in page.get(f"/requests/{request_id}", headers=officer).text
    finally:
        pause(was)
