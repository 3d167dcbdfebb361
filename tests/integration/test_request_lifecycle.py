"""The privacy-request lifecycle against PostgreSQL (no Airflow): states and refused transitions,
deadlines per jurisdiction and the one extension, the intake's validation and de-duplication,
reconciliation of runs that ended without an outcome, deadline alerts under a frozen clock, and
the one dispatcher's idempotence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.dispatch import NotDispatchable, dispatch_request, dispatch_run_id, pending_dispatches
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request
from governance.request_lifecycle import (
    TRANSITIONS,
    InvalidTransition,
    allowed,
    extend_deadline,
    history,
    record_response,
    retry_request,
    set_status,
)
from governance.workflows import privacy_request_intake as intake
from governance.workflows.request_intake import close_request, mark_in_progress, mark_verified, reject_request

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ALICE = SubjectIdentities(email="alice.lifecycle@example.com")
BOB = SubjectIdentities(phone="+14155550177")


@pytest.fixture
def gov(make_db: Callable[[str], str]) -> str:
    url = make_db("lifecycle")
    migrate(url)
    return url


def _new(url: str, who: SubjectIdentities = ALICE, *, kind: str = "export", at: datetime = T0, **kw: Any) -> str:
    with psycopg.connect(url) as conn:
        return create_request(conn, kind=kind, identities=who, hasher=hasher_from_airflow(),  # type: ignore[arg-type]
                              cipher=cipher_from_airflow(), received_at=at, **kw)  # fmt: skip


def _row(url: str, request_id: str, *cols: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {', '.join(cols)} FROM governance.privacy_requests WHERE request_id = %s",  # noqa: S608
                           (request_id,)).fetchone()  # fmt: skip
    assert row is not None
    return tuple(row)


def test_the_lifecycle_table_in_the_database_is_the_documented_one(gov: str) -> None:
    with psycopg.connect(gov) as conn:
        rows = conn.execute("SELECT from_status, to_status FROM governance.request_status_transitions").fetchall()
    assert {(a, b) for a, b in rows} == {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert allowed("extended", "dispatched", extended_from="verified")
    assert not allowed("extended", "dispatched", extended_from="received")
    assert not allowed("in_progress", "extended", already_extended=True)


def test_a_request_served_end_to_end_walks_the_lifecycle_and_every_change_is_kept(gov: str) -> None:
    request_id = _new(gov)
    with psycopg.connect(gov) as conn:
        report = intake.validate_requests(conn, at=T0, cipher=cipher_from_airflow())
    assert report.awaiting_verification == [request_id]
    mark_verified(request_id, method="email_link", verified_by="desk", at=T0, conninfo=gov)
    result = dispatch_request(gov, request_id, trigger=lambda dag_id, run_id, conf: True, at=T0, by="desk")
    assert result.dispatch.run_id == dispatch_run_id(request_id) and result.dispatch.conf == {"request_id": request_id}
    mark_in_progress(request_id, dag_run_id=result.dispatch.run_id, at=T0, conninfo=gov)
    close_request(request_id, succeeded=True, at=T0, result_uri="s3://b/k", conninfo=gov)
    with psycopg.connect(gov) as conn:
        record_response(conn, request_id, via="email", at=T0 + timedelta(days=1), by="desk")
        assert history(conn, request_id) == [
            ("received", "awaiting_verification"), ("awaiting_verification", "verified"), ("verified", "dispatched"),
            ("dispatched", "in_progress"), ("in_progress", "completed"), ("completed", "responded"),
        ]  # fmt: skip
    assert _row(gov, request_id, "status", "responded_via") == ("responded", "email")


def test_invalid_transitions_are_refused_and_change_nothing(gov: str) -> None:
    request_id = _new(gov)
    with psycopg.connect(gov) as conn:
        with pytest.raises(InvalidTransition, match="may not go from received to completed"):
            set_status(conn, request_id, "completed", at=T0, completed_at=T0)
        with pytest.raises(InvalidTransition, match="not completed or rejected"):
            record_response(conn, request_id, via="email", at=T0, by="desk")
        # Whoever writes the status, the database refuses it: not only this module's writers.
        with pytest.raises(psycopg.Error, match="not a transition of the request lifecycle"):
            conn.execute("UPDATE governance.privacy_requests SET status = 'dispatched' WHERE request_id = %s",
                         (request_id,))  # fmt: skip
        conn.rollback()
    reject_request(request_id, at=T0, detail="identity could not be verified", conninfo=gov)
    # A failed outcome after the rejection is not written: the rejection stands.
    close_request(request_id, succeeded=False, at=T0, detail="late failure", conninfo=gov)
    with psycopg.connect(gov) as conn:
        assert history(conn, request_id) == [("received", "rejected")]
    assert _row(gov, request_id, "status", "outcome_detail") == ("rejected", "identity could not be verified")
    with psycopg.connect(gov) as conn, pytest.raises(NotDispatchable):
        dispatch_request(gov, request_id, trigger=lambda *a: True, at=T0, by="desk")


def test_deadline_is_thirty_days_or_the_jurisdictions_and_is_extended_once_with_a_reason(gov: str) -> None:
    default = _new(gov)
    california = _new(gov, BOB, jurisdiction="us-ca")
    assert _row(gov, default, "due_at")[0] == T0 + timedelta(days=30)
    assert _row(gov, california, "due_at", "jurisdiction") == (T0 + timedelta(days=45), "US-CA")
    mark_verified(default, method="email_link", verified_by="desk", at=T0, conninfo=gov)
    with psycopg.connect(gov) as conn:
        with pytest.raises(InvalidTransition, match="at least 10 characters"):
            extend_deadline(conn, default, extra=timedelta(days=30), reason="busy", by="dpo", at=T0)
        new_due = extend_deadline(conn, default, extra=timedelta(days=60), reason="complex: six systems, two backups",
                                  by="dpo", at=T0 + timedelta(days=20))  # fmt: skip
        conn.commit()
        with pytest.raises(InvalidTransition, match="extended once"):
            extend_deadline(conn, default, extra=timedelta(days=10), reason="and once more please", by="dpo", at=T0)
    assert new_due == T0 + timedelta(days=90)
    assert _row(gov, default, "status", "extended_from", "original_due_at", "due_at") == (
        "extended", "verified", T0 + timedelta(days=30), new_due)  # fmt: skip
    # It goes on as from the state it was extended in: a verified request is dispatched.
    with psycopg.connect(gov) as conn:
        assert [d.request_id for d in pending_dispatches(conn)] == [default]
    dispatch_request(gov, default, trigger=lambda *a: True, at=T0, by="desk")
    assert _row(gov, default, "status", "extended_at IS NOT NULL") == ("dispatched", True)


def test_intake_rejects_unreadable_identities_and_an_identical_open_request_with_the_reason(gov: str) -> None:
    first = _new(gov, at=T0)
    duplicate = _new(gov, at=T0 + timedelta(hours=1))
    other_business = _new(gov, at=T0 + timedelta(hours=2), business_id=7)
    other_kind = _new(gov, kind="erasure", at=T0 + timedelta(hours=3))
    unreadable = _new(gov, BOB, at=T0 + timedelta(hours=4))
    with psycopg.connect(gov) as conn:  # a token encrypted under another context cannot be decrypted
        conn.execute("UPDATE governance.privacy_requests SET phone_encrypted = (SELECT email_encrypted FROM"
                     " governance.privacy_requests WHERE request_id = %s) WHERE request_id = %s", (first, unreadable))  # fmt: skip
    with psycopg.connect(gov) as conn:
        report = intake.validate_requests(conn, at=T0 + timedelta(hours=5), cipher=cipher_from_airflow())
        again = intake.validate_requests(conn, at=T0 + timedelta(hours=6), cipher=cipher_from_airflow())
    assert sorted(report.awaiting_verification) == sorted([first, other_business, other_kind])
    assert report.duplicates == {duplicate: first} and report.rejected == [unreadable]
    assert again.to_xcom() == {"awaiting_verification": [], "rejected": [], "duplicates": {}}
    assert _row(gov, duplicate, "status", "outcome_detail") == (
        "rejected", f"duplicate of open request {first} (same kind, person and business)")  # fmt: skip
    detail = _row(gov, unreadable, "outcome_detail")[0]
    assert "could not be read" in detail and "+1415" not in detail


def test_a_run_that_ended_without_an_outcome_fails_the_request_and_a_cleared_retry_gets_a_new_run(gov: str) -> None:
    died, running = _new(gov), _new(gov, BOB)
    for request_id in (died, running):
        mark_verified(request_id, method="email_link", verified_by="desk", at=T0, conninfo=gov)
        dispatch_request(gov, request_id, trigger=lambda *a: True, at=T0, by="intake")
    mark_in_progress(died, dag_run_id=dispatch_run_id(died), at=T0, conninfo=gov)
    states = {dispatch_run_id(died): "failed", dispatch_run_id(running): "running"}
    with psycopg.connect(gov) as conn:
        failed = intake.reconcile_runs(conn, at=T0, run_state=lambda dag_id, run_id: states.get(run_id))
    assert list(failed) == [died] and "ended failed without recording" in failed[died]
    assert _row(gov, died, "status")[0] == "failed" and _row(gov, running, "status")[0] == "dispatched"
    with psycopg.connect(gov) as conn:
        with pytest.raises(InvalidTransition, match="at least 10"):
            retry_request(conn, died, reason="again", by="dpo", at=T0)
        assert retry_request(conn, died, reason="worker was killed by the OOM killer", by="dpo", at=T0) == 2
        conn.commit()
        [retry] = pending_dispatches(conn)
    assert retry.run_id == dispatch_run_id(died, 2) != dispatch_run_id(died)


def test_deadline_alerts_are_sent_once_per_state_change_under_a_frozen_clock(gov: str) -> None:
    soon = _new(gov, at=T0)  # due T0 + 30 days
    later = _new(gov, BOB, at=T0 + timedelta(days=10))  # due T0 + 40 days
    sent: list[dict[str, Any]] = []

    def at(day: float) -> list[tuple[str, str, str]]:
        before = len(sent)
        intake.alert_deadlines(gov, now=T0 + timedelta(days=day), send=sent.append)
        return [(a["request_id"], a["event"], a["status"]) for a in sent[before:]]

    assert at(20) == []
    assert at(23.5) == [(soon, "request_due_soon", "received")]
    assert at(23.6) == []  # the same state: not again
    with psycopg.connect(gov) as conn:
        intake.validate_requests(conn, at=T0 + timedelta(days=24), cipher=cipher_from_airflow())
    assert at(24) == [(soon, "request_due_soon", "awaiting_verification")]
    assert at(31) == [(soon, "request_overdue", "awaiting_verification")]
    assert at(33) == [(later, "request_due_soon", "awaiting_verification")]
    assert at(34) == []
    assert sent[0]["days_left"] == 7 and sent[-2]["days_left"] == -1 and sent[-1]["days_left"] == 7
    assert all(set(a) == {"event", "request_id", "kind", "status", "due_at", "days_left"} for a in sent)


def test_the_request_command_extends_retries_and_records_the_response_refusing_what_the_lifecycle_forbids(
    gov: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from governance.cli import main

    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", gov.replace("postgresql://", "postgres://"))
    request_id = _new(gov)
    assert main(["request", "extend", request_id, "--days", "30", "--reason", "six systems to search", "--by", "dpo"]) == 0
    assert main(["request", "extend", request_id, "--days", "5", "--reason", "one more time please", "--by", "dpo"]) == 2
    assert "extended once" in capsys.readouterr().err
    assert main(["request", "retry", request_id, "--reason", "nothing failed yet", "--by", "dpo"]) == 2
    assert main(["request", "respond", request_id, "--via", "email", "--by", "dpo"]) == 2
    mark_in_progress(request_id, dag_run_id="run-1", at=T0, conninfo=gov)
    close_request(request_id, succeeded=False, at=T0, detail="processor down", conninfo=gov)
    mark_verified(request_id, method="email_link", verified_by="desk", at=T0, conninfo=gov)
    assert main(["request", "retry", request_id, "--reason", "the processor is back up", "--by", "dpo"]) == 0
    assert "attempt 2" in capsys.readouterr().out
    assert _row(gov, request_id, "status", "dispatch_attempt", "due_at") == ("verified", 2, T0 + timedelta(days=60))
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("email: narnia@example.com\n"))
    assert main(["request", "new", "--kind", "export", "--jurisdiction", "Narnia"]) == 2
    assert "ISO 3166" in capsys.readouterr().err


def test_the_sla_report_shows_open_requests_by_age_and_state_and_time_to_complete_per_kind(
    gov: str, s3: Any, make_bucket: Callable[[str], str]
) -> None:
    from governance.sla_report import publish, sla_figures

    as_of = T0 + timedelta(days=40)
    fast, slow = _new(gov, at=T0 + timedelta(days=30)), _new(gov, BOB, at=T0)
    waiting, late = _new(gov, at=T0 + timedelta(days=38), kind="erasure"), _new(gov, BOB, at=T0 + timedelta(days=5),
                                                                                  kind="erasure")  # fmt: skip
    for request_id, took in ((fast, 2), (slow, 10)):
        mark_in_progress(request_id, dag_run_id="run-1", at=T0, conninfo=gov)
        received = _row(gov, request_id, "received_at")[0]
        close_request(request_id, succeeded=True, at=received + timedelta(days=took), result_uri="s3://b/k", conninfo=gov)
    with psycopg.connect(gov) as conn:
        intake.validate_requests(conn, at=as_of, cipher=cipher_from_airflow())
        figures = sla_figures(conn, as_of=as_of)
    assert figures.open_by_band["0-7 days"] == {"awaiting_verification": 1}
    assert figures.open_by_band["over 30 days"] == {"awaiting_verification": 1}
    assert (figures.overdue, figures.due_soon) == (1, 0)
    [export] = figures.kinds
    assert (export.kind, export.completed, export.median_days, export.worst_days) == ("export", 2, 6.0, 10.0)
    bucket = make_bucket("sla")
    uris = publish(s3, bucket, figures)
    assert uris[1] == f"s3://{bucket}/reports/privacy-requests/latest.html"
    page = s3.get_object(Bucket=bucket, Key="reports/privacy-requests/latest.html")["Body"].read().decode()
    assert "<svg" in page and "6.0 days" in page and "10.0 days" in page and "<strong>1</strong> open request(s) overdue" in page
    assert waiting not in page and late not in page and "@" not in page and "+1415" not in page
