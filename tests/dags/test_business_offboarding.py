"""business_offboarding end to end with ``dag.test()`` on a copy of the reference deployment: the
guard refuses an offboarding nobody overrode, a dry run changes nothing, then an approved erasure
of one small business removes (or, under the tax exception, minimises) every row of its callers
and users, their objects and their processor records, leaves every other business's rows
untouched, and issues one certificate. Expectations are SQL written here, not the plan."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import requests
from airflow.utils.state import DagRunState

from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import all_versions, diff, snapshot

pytestmark = [pytest.mark.slow(seconds=150), pytest.mark.integration, pytest.mark.dagrun]
DAG_ID = "business_offboarding"
# Businesses 1..7 hold the cast other tests erase; the smallest of the rest is offboarded.
SMALL_BUSINESS = """
    SELECT b.id FROM app.businesses b
     WHERE b.id > 7
     ORDER BY (SELECT count(*) FROM app.users u WHERE u.business_id = b.id)
            + (SELECT count(*) FROM app.callers c WHERE c.business_id = b.id), b.id
     LIMIT 1
"""


def form(**values: Any) -> dict[str, Any]:
    """The whole form (dag.test() keeps a run's conf in the DAG's params for the next run)."""
    return {"business_id": None, "reason": None, "dry_run": True, "override_guard": False, **values}


def _rows_of_business(url: str, business_id: int) -> dict[str, set[Any]]:
    """Keys of every row the business's account holds about its callers and users, by table,
    and the rows elsewhere that mention its users."""
    queries = {
        "users": "SELECT id FROM app.users WHERE business_id = %(b)s",
        "callers": "SELECT id FROM app.callers WHERE business_id = %(b)s",
        "calls": "SELECT id FROM app.calls WHERE business_id = %(b)s AND caller_id IN"
                 " (SELECT id FROM app.callers WHERE business_id = %(b)s)",
        "messages": "SELECT id FROM app.messages WHERE business_id = %(b)s AND caller_id IN"
                    " (SELECT id FROM app.callers WHERE business_id = %(b)s)",
        "appointments": "SELECT id FROM app.appointments WHERE business_id = %(b)s AND caller_id IN"
                        " (SELECT id FROM app.callers WHERE business_id = %(b)s)",
        "support_tickets": "SELECT id FROM app.support_tickets WHERE user_id IN"
                           " (SELECT id FROM app.users WHERE business_id = %(b)s)",
        "usage_events": "SELECT id FROM app.usage_events WHERE user_id IN (SELECT id FROM app.users WHERE business_id = %(b)s)",
        "marketing_preferences": "SELECT user_id FROM app.marketing_preferences WHERE user_id IN"
                                 " (SELECT id FROM app.users WHERE business_id = %(b)s)",
        "payments": "SELECT id FROM app.payments WHERE business_id = %(b)s AND user_id IN"
                    " (SELECT id FROM app.users WHERE business_id = %(b)s)",
        "calls_mentioning": "SELECT id FROM app.calls WHERE handled_by_user_id IN"
                            " (SELECT id FROM app.users WHERE business_id = %(b)s) AND caller_id NOT IN"
                            " (SELECT id FROM app.callers WHERE business_id = %(b)s)",
        "messages_mentioning": "SELECT id FROM app.messages WHERE user_id IN"
                               " (SELECT id FROM app.users WHERE business_id = %(b)s) AND (caller_id IS NULL OR"
                               " caller_id NOT IN (SELECT id FROM app.callers WHERE business_id = %(b)s))",
    }  # fmt: skip
    with psycopg.connect(url) as conn:
        return {name: {r[0] for r in conn.execute(q, {"b": business_id}).fetchall()} for name, q in queries.items()}  # type: ignore[call-overload]


def _emails_of_business(url: str, business_id: int) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT lower(trim(email)) FROM app.users WHERE business_id = %s AND email IS NOT NULL"
            " UNION SELECT lower(trim(email)) FROM app.callers WHERE business_id = %s AND email IS NOT NULL",
            (business_id, business_id),
        ).fetchall()
    return {r[0] for r in rows}


def _processor_emails(deployment: Deployment) -> dict[str, list[str]]:
    """Every record's e-mail at each processor stand-in (lower case), one entry per record."""
    desk = requests.get(deployment.support_desk.url + "/_admin/state", timeout=10).json()["requesters"]
    return {
        "crm": sorted((c.get("email") or "").lower() for c in deployment.crm.contacts()),
        "payments_processor": sorted((c.get("email") or "").lower() for c in deployment.payments.customers()),
        "support_desk": sorted((r.get("email") or "").lower() for r in desk),
    }


def _objects(s3: Any, bucket: str) -> list[str]:
    """Every version's key in the bucket but the certificates (governance's own documents)."""
    return sorted(k for k in all_versions(s3, bucket, "") if not k.startswith("governance/"))


def _all_xcom(dag_run: Any) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = session.query(XComModel.value).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
    return "\n".join(str(v[0]) for v in values)


def _approve_when_asked(method: str, timeout_s: float = 300) -> None:
    """A privacy officer answers the Required action: Approve, saying how the departure was confirmed."""
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
                    .filter_by(dag_id=DAG_ID, task_id="approve_erasure", state=TaskInstanceState.AWAITING_INPUT)
                    .one_or_none()
                )
                if ti is not None:
                    try:
                        update_hitl_detail(
                            dag_id=DAG_ID, dag_run_id=ti.run_id, task_id="approve_erasure", map_index=-1,
                            session=session, user=Officer(),  # type: ignore[arg-type]
                            update_hitl_detail_payload=UpdateHITLDetailPayload(
                                chosen_options=["Approve"], params_input={"verification_method": method}
                            ),
                        )  # fmt: skip
                        return
                    except HTTPException:  # the request for input is not written yet
                        session.rollback()
            time.sleep(0.5)
        raise TimeoutError("the approval task never asked for input")
    except BaseException:
        with create_session() as session:  # never leave dag.test() waiting for an answer
            session.query(TaskInstance).filter_by(dag_id=DAG_ID, task_id="approve_erasure").update(
                {"state": TaskInstanceState.FAILED}, synchronize_session=False
            )
        raise


def test_the_offboarding_form_refuses_a_business_that_does_not_exist_before_anything_changes(
    get_dag: Callable[[str], Any], reference_clone: Deployment
) -> None:
    before = snapshot(reference_clone.app_url)
    dag_run = get_dag(DAG_ID).test(run_conf=form(business_id=987654, dry_run=False, override_guard=True))
    states = task_states(dag_run)
    assert dag_run.state == DagRunState.FAILED and states["open_request"] == "failed", states
    assert states["plan_erasure"] == "upstream_failed"
    assert diff(before, snapshot(reference_clone.app_url)) == {
        t: {"deleted": set(), "changed": set(), "added": set()} for t in before
    }
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT count(*) FROM governance.privacy_requests WHERE kind = 'offboarding'").fetchone() == (0,)


def test_a_dry_run_changes_nothing_then_an_approved_offboarding_erases_one_business_everywhere_with_one_certificate(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A production-sized guard for a small seed: a few rows always allowed, 0.1% of a table beyond.
    monkeypatch.setenv("GOVERNANCE_ERASURE_GUARD_MIN_ROWS", "5")
    url = reference_clone.app_url
    with psycopg.connect(url) as conn:
        business_id = int(conn.execute(SMALL_BUSINESS).fetchone()[0])  # type: ignore[index]
    rows = _rows_of_business(url, business_id)
    emails = _emails_of_business(url, business_id)
    assert rows["users"] and rows["callers"] and rows["calls"] and emails, "the business must hold people to erase"
    before = snapshot(url)
    processors_before = _processor_emails(reference_clone)
    objects_before = _objects(s3, reference_clone.bucket)
    ours = [k for k in objects_before if k.startswith((f"recordings/{business_id}/", f"transcripts/{business_id}/"))]
    dag = get_dag(DAG_ID)

    # 1. Not overridden: the guard refuses (the business's callers are far more than 0.1% of callers).
    refused = dag.test(run_conf=form(business_id=business_id, reason="contract ended"))
    assert refused.state == DagRunState.FAILED and task_states(refused)["plan_erasure"] == "failed"
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT status, refusal FROM governance.erasure_plans WHERE request_id = %s",
            (xcom_result(refused, "open_request")["request_id"],),
        ).fetchall()
    assert [status for status, _ in stored] == ["refused"] and "refused by the safety guard" in stored[0][1]
    # 2. A reviewed dry run: the plan, in counts; nothing changes anywhere.
    dry = dag.test(run_conf=form(business_id=business_id, reason="contract ended", override_guard=True))
    states = task_states(dry)
    assert dry.state == DagRunState.SUCCESS, states
    assert states["execute_database"] == "skipped" and states["approve_erasure"] == "skipped"
    plan = xcom_result(dry, "plan_erasure")
    assert plan["dry_run"] and plan["business_id"] == business_id and plan["identity_kinds"] == []
    assert sum(plan["tables"]["aircalls_app.users"].values()) == len(rows["users"])
    assert sum(plan["tables"]["aircalls_app.callers"].values()) == len(rows["callers"])
    assert sum(plan["tables"]["aircalls_app.calls"].values()) >= len(rows["calls"])
    assert plan["guard"]["overridden"] is True
    assert diff(before, snapshot(url)) == {t: {"deleted": set(), "changed": set(), "added": set()} for t in before}
    assert _processor_emails(reference_clone) == processors_before
    assert _objects(s3, reference_clone.bucket) == objects_before

    # 3. The erasure, approved in the UI by someone who says how the departure was confirmed.
    responder = threading.Thread(target=_approve_when_asked, args=("contract_terminated",), daemon=True)
    responder.start()
    run = dag.test(run_conf=form(business_id=business_id, reason="contract ended", dry_run=False, override_guard=True))
    responder.join(timeout=5)
    states = task_states(run)
    assert run.state == DagRunState.SUCCESS, states
    assert states["approve_erasure"] == "success" and states["verify_erasure"] == "success"

    after = snapshot(url)
    changes = diff(before, after)
    # Every row of the business's people is gone, but payments, which the tax exception keeps
    # minimised (or deletes once past the legal period).
    for table in ("users", "callers", "calls", "messages", "appointments", "support_tickets", "usage_events",
                  "marketing_preferences"):  # fmt: skip
        assert rows[table] <= changes[table]["deleted"], table
        assert not changes[table]["added"], table
    with psycopg.connect(url) as conn:
        kept = conn.execute(
            "SELECT id, user_id, card_last4, billing_address FROM app.payments WHERE id = ANY(%s)", (list(rows["payments"]),)
        ).fetchall()
        mentions = conn.execute(
            "SELECT (SELECT count(*) FROM app.calls WHERE id = ANY(%s) AND handled_by_user_id IS NOT NULL),"
            " (SELECT count(*) FROM app.messages WHERE id = ANY(%s) AND user_id IS NOT NULL)",
            (list(rows["calls_mentioning"]), list(rows["messages_mentioning"])),
        ).fetchone()
        for table in ("users", "callers", "calls", "messages", "appointments", "payments"):
            left = conn.execute(f"SELECT count(*) FROM app.{table} WHERE business_id = %s"  # noqa: S608 - fixed names
                                + (" AND user_id IS NOT NULL" if table == "payments" else "")
                                + (" AND caller_id IS NOT NULL" if table in ("calls", "messages") else ""),
                                (business_id,)).fetchone()  # fmt: skip
            assert left == (0,), f"{table} still holds people of business {business_id}"
    assert all(user_id is None and card == "****" and address is None for _id, user_id, card, address in kept)
    assert {k for k, *_ in kept} | changes["payments"]["deleted"] >= rows["payments"]
    assert mentions == (0, 0)
    # Other businesses' rows are fingerprint-identical: only the business's rows and the rows
    # that mentioned its users changed.
    allowed = {t: set(rows.get(t, set())) for t in before}
    allowed["calls"] |= rows["calls_mentioning"]
    allowed["messages"] |= rows["messages_mentioning"]
    for table, change in changes.items():
        assert change["changed"] | change["deleted"] <= allowed[table], table
    # Objects: every version of the business's recordings and transcripts gone, nothing else.
    objects_after = _objects(s3, reference_clone.bucket)
    assert not [k for k in objects_after if k.startswith((f"recordings/{business_id}/", f"transcripts/{business_id}/"))]
    assert sorted(set(objects_before) - set(ours)) == sorted(set(objects_after))
    # Processors: the business's people's records erased, everyone else's kept.
    processors_after = _processor_emails(reference_clone)
    for name, records in processors_before.items():
        assert not set(processors_after[name]) & emails, name
        assert processors_after[name] == [e for e in records if e not in emails], name
    assert any(set(records) & emails for records in processors_before.values()), "no processor held the people"
    # One certificate, for this business, with no identity in it; the request completed.
    request_id = xcom_result(run, "open_request")["request_id"]
    with psycopg.connect(url) as conn:
        certificates = conn.execute(
            "SELECT verification_passed, certificate FROM governance.erasure_certificates WHERE request_id = %s",
            (request_id,),
        ).fetchall()
        request = conn.execute(
            "SELECT kind, status, business_id, verification_method, approved_by FROM governance.privacy_requests"
            " WHERE request_id = %s", (request_id,)).fetchone()  # fmt: skip
        people_left = conn.execute("SELECT count(*) FROM governance.offboarding_people WHERE request_id = %s",
                                   (request_id,)).fetchone()  # fmt: skip
    assert len(certificates) == 1 and certificates[0][0] is True
    certificate = certificates[0][1]
    assert certificate["offboarding"]["business_id"] == business_id and certificate["offboarding"]["people"] >= 1
    assert certificate["policy"].startswith("aircalls.ai privacy policy, 6 Data retention")
    assert request == ("offboarding", "completed", business_id, "contract_terminated", "privacy-officer")
    assert people_left == (0,)
    documents = json.dumps(certificate) + _all_xcom(run) + _all_xcom(dry)
    assert not [e for e in emails if e in documents.lower()], "an e-mail of the business's people reached XCom or the certificate"
