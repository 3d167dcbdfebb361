"""One run carries out an erasure request at a time: a run that finds another live run holding
the request changes nothing (no execution, no certificate, no outcome); a killed run's stale
claim is taken over by the next run, and the request records who superseded whom, and when."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request
from governance.workflows import dsr_erasure as wf
from governance.workflows.request_intake import ClaimRefused, claim_request, mark_verified
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import assert_erased_exactly_once, ground_truth_before

pytestmark = pytest.mark.integration
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def approved_request(url: str, key: str) -> str:
    """An erasure request recorded, verified and approved at intake."""
    subject = cast_member(key)
    migrate(url)
    with psycopg.connect(url) as conn:
        request_id = create_request(
            conn, kind="erasure", identities=SubjectIdentities.parse(email=subject.email, phone=subject.phone, region="US"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=AT, source="intake",
        )  # fmt: skip
    mark_verified(request_id, method="email_link", verified_by="intake-desk", at=AT, conninfo=url)
    return request_id


def _open_and_plan(request_id: str, run_id: str, opened: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    handle = wf.open_erasure_request({"request_id": request_id}, run_id=run_id, received_at=opened)
    summary = wf.plan_erasure(handle, dry_run=False, override=False, dag_id="dsr_erasure", run_id=run_id, as_of=AT)
    return handle, summary


def _request_row(url: str, request_id: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status, dag_run_id, outcome_detail FROM governance.privacy_requests"
                           " WHERE request_id = %s", (request_id,)).fetchone()  # fmt: skip
    assert row is not None
    return tuple(row)


def test_a_live_runs_claim_is_kept_and_a_killed_runs_stale_claim_is_taken_over_with_the_supersession_recorded(
    reference_clone: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = reference_clone.app_url
    before = ground_truth_before(reference_clone, "caller_only")
    request_id = approved_request(url, "caller_only")

    # Run A executes the database step, then dies (nothing more of it runs).
    _handle_a, summary_a = _open_and_plan(request_id, "manual__a", AT)
    wf.execute_database(summary_a, approval=None, run_id="manual__a")
    assert _request_row(url, request_id)[:2] == ("in_progress", "manual__a")

    # Run B starts while A's claim is fresh: it continues the same plan but may not execute it,
    # and neither its certificate task nor its outcome task writes anything for the request.
    handle_b, summary_b = _open_and_plan(request_id, "manual__b", AT + timedelta(minutes=1))
    assert summary_b["plan_id"] == summary_a["plan_id"] and summary_b["continued"]
    with pytest.raises(AirflowFailException, match="being carried out by run manual__a"):
        wf.execute_database(summary_b, approval=None, run_id="manual__b")
    assert wf.issue_certificate(handle_b, dag_id="dsr_erasure", run_id="manual__b") is None
    closed_b = wf.close_erasure_request(handle_b, run_id="manual__b")
    assert closed_b["status"] == "superseded" and not closed_b["served"]
    assert _request_row(url, request_id) == ("in_progress", "manual__a", None), "A's claim and outcome stand"

    # Once A has done nothing for the configured bound, run C takes the request over.
    monkeypatch.setenv("GOVERNANCE_CLAIM_STALE_AFTER_S", "1")
    time.sleep(1.2)
    handle_c, summary_c = _open_and_plan(request_id, "manual__c", AT + timedelta(minutes=2))
    database = wf.execute_database(summary_c, approval=None, run_id="manual__c")
    assert database["done_before"] == ["aircalls_app", "aircalls_warehouse"], "the database step A did is not run twice"
    wf.delete_objects(summary_c)
    wf.erase_processors(summary_c)
    wf.verify_erasure(summary_c)
    wf.record_suppression(summary_c)
    assert wf.issue_certificate(handle_c, dag_id="dsr_erasure", run_id="manual__c") is not None
    assert wf.close_erasure_request(handle_c, run_id="manual__c")["status"] == "completed"

    with psycopg.connect(url) as conn:
        runs = conn.execute("SELECT dag_run_id, dag_id, superseded_by, held_claim, superseded_at IS NOT NULL"
                            " FROM governance.request_runs WHERE request_id = %s ORDER BY 1", (request_id,)).fetchall()  # fmt: skip
    assert runs == [
        ("manual__a", "dsr_erasure", "manual__c", True, True),
        ("manual__b", "dsr_erasure", "manual__c", False, True),
        ("manual__c", "dsr_erasure", None, False, False),
    ]
    assert _request_row(url, request_id)[:2] == ("completed", "manual__c")
    # A completed request is claimed by nobody (a run racing the completion changes nothing).
    with pytest.raises(ClaimRefused, match="is completed"):
        claim_request(request_id, dag_run_id="manual__d", at=datetime.now(UTC), conninfo=url)
    assert _request_row(url, request_id)[:2] == ("completed", "manual__c")
    # (Tasks called as functions write no audit ledger: the DAG-run fault tests check it.)
    assert_erased_exactly_once(reference_clone, s3, "caller_only", request_id, before, ledger=False)
