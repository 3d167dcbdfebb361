"""The intake pass (DAG ``privacy_request_intake``, every 15 minutes): each function is one task,
testable against PostgreSQL without Airflow.

1. :func:`validate_requests`: every request ``received`` from the CLI or the Privacy requests
   page is checked (its identities decrypt and are well formed; it is not an identical copy of an
   open request: same kind, same identity hashes, same business): a bad one is ``rejected`` with
   the reason, a duplicate ``rejected`` naming the request it repeats, the rest
   ``awaiting_verification`` (staff verify the person: ``request verify``, or the page).
2. :func:`reconcile_runs`: a request ``dispatched`` or ``in_progress`` whose run ended without the
   workflow writing an outcome (a killed worker, a run marked failed in the UI) becomes ``failed``
   with the reason; staff clear it for a retry (``request retry``) and the next pass dispatches a
   new run. The intake never writes ``completed``: only the workflow's last task does.
3. :func:`alert_deadlines`: open requests due within 7 days (``due_soon``) and overdue ones alert
   through the failure notifier's channels, once per request, alert, state and deadline.
4. :func:`governance.dispatch.pending_dispatches` then ``TriggerDagRunOperator`` then
   :func:`record_dispatches`: verified requests are dispatched (see :mod:`governance.dispatch`).

Everything returned (to XCom) is counts and request ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from governance.crypto import KeyMaterialError
from governance.db import connect
from governance.dispatch import Dispatch, record_dispatched
from governance.identity import InvalidIdentity
from governance.notifier import GovernanceFailureNotifier
from governance.privacy_requests import load_request
from governance.request_deadlines import response_periods
from governance.request_lifecycle import FINAL_STATES, InvalidTransition, set_status

INTAKE_ACTOR = "privacy_request_intake"
# Requests these sources record are validated by the intake; a trigger form's request is being
# served by the run that recorded it.
VALIDATED_SOURCES = ("cli", "api", "intake")
RunState = Callable[[str, str], str | None]  # (dag_id, run_id) -> Airflow's run state, None when absent
AlertSender = Callable[[Mapping[str, Any]], None]


@dataclass
class ValidationReport:
    awaiting_verification: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def _reject(conn: psycopg.Connection[Any], request_id: str, reason: str, at: datetime) -> bool:
    try:
        set_status(conn, request_id, "rejected", at=at, detail=reason, expect=("received",), outcome_detail=reason)
    except InvalidTransition:  # moved on meanwhile (verified by staff): left as it is
        return False
    return True


def validate_requests(conn: psycopg.Connection[Any], *, at: datetime, cipher: Any, limit: int = 1000) -> ValidationReport:
    """Check every ``received`` request of the CLI or the page (see the module docstring)."""

    report = ValidationReport()
    rows = conn.execute(
        """
        SELECT r.request_id,
               (SELECT o.request_id FROM governance.privacy_requests o
                 WHERE o.request_id <> r.request_id AND o.kind = r.kind
                   AND o.hash_key_id IS NOT DISTINCT FROM r.hash_key_id
                   AND o.email_hash IS NOT DISTINCT FROM r.email_hash
                   AND o.phone_hash IS NOT DISTINCT FROM r.phone_hash
                   AND o.business_id IS NOT DISTINCT FROM r.business_id
                   AND o.effective_status <> ALL(%(final)s)
                   AND (o.received_at, o.request_id) < (r.received_at, r.request_id)
                 ORDER BY o.received_at, o.request_id LIMIT 1) AS duplicate_of
          FROM governance.privacy_requests r
         WHERE r.effective_status = 'received' AND r.kind IN ('export', 'erasure') AND r.source = ANY(%(sources)s)
         ORDER BY r.received_at, r.request_id LIMIT %(limit)s
        """,
        {"final": list(FINAL_STATES), "sources": list(VALIDATED_SOURCES), "limit": limit},
    ).fetchall()
    for request_id, duplicate_of in rows:
        try:
            load_request(conn, request_id, cipher=cipher)
        except (InvalidIdentity, KeyMaterialError) as exc:
            if isinstance(exc, KeyMaterialError) and "not in the keyring" in str(exc):
                raise  # the deployment's key ring is incomplete: fail loudly, reject nothing
            # The reason names what is wrong, never the value (InvalidIdentity never quotes it).
            reason = f"identities unusable ({type(exc).__name__}): {exc}" if isinstance(exc, InvalidIdentity) else (
                f"identities could not be read ({type(exc).__name__}): record the request again")  # fmt: skip
            if _reject(conn, request_id, reason, at):
                report.rejected.append(request_id)
            continue
        if duplicate_of:
            if _reject(conn, request_id, f"duplicate of open request {duplicate_of} (same kind, person and business)",
                       at):  # fmt: skip
                report.duplicates[request_id] = str(duplicate_of)
            continue
        try:
            set_status(conn, request_id, "awaiting_verification", at=at, expect=("received",),
                       detail="checked by the intake: waiting for staff to verify the person")  # fmt: skip
        except InvalidTransition:
            continue
        report.awaiting_verification.append(request_id)
    return report


def reconcile_runs(conn: psycopg.Connection[Any], *, at: datetime, run_state: RunState) -> dict[str, str]:
    """Requests whose run ended without an outcome become ``failed`` with the reason; returns
    ``{request_id: reason}``. A run still queued or running is left alone."""
    rows = conn.execute(
        """
        SELECT request_id, 'dsr_' || kind, COALESCE(dag_run_id, dispatch_run_id)
          FROM governance.privacy_requests
         WHERE effective_status IN ('dispatched', 'in_progress') AND COALESCE(dag_run_id, dispatch_run_id) IS NOT NULL
           AND kind IN ('export', 'erasure')
         ORDER BY request_id
        """
    ).fetchall()
    failed: dict[str, str] = {}
    for request_id, dag_id, run_id in rows:
        state = run_state(dag_id, run_id)
        if state is None:
            reason = f"run {run_id} of {dag_id} is not in Airflow (deleted?): the request was not served"
        elif state in ("success", "failed"):
            reason = f"run {run_id} of {dag_id} ended {state} without recording the request's outcome"
        else:
            continue
        try:
            set_status(conn, request_id, "failed", at=at, detail=reason, expect=("dispatched", "in_progress"),
                       outcome_detail=reason)  # fmt: skip
        except InvalidTransition:  # its outcome arrived meanwhile
            continue
        failed[request_id] = reason
    return failed


def deadline_alerts_due(conn: psycopg.Connection[Any], *, now: datetime, due_soon: timedelta) -> list[dict[str, Any]]:
    """Record and return the deadline alerts not sent yet: one per request, alert, status and
    deadline (so once per state change, and again after an extension moves the deadline)."""
    rows = conn.execute(
        """
        INSERT INTO governance.request_deadline_alerts (request_id, alert, status, due_at, sent_at)
        SELECT request_id, CASE WHEN due_at <= %(now)s THEN 'overdue' ELSE 'due_soon' END, status, due_at, %(now)s
          FROM governance.privacy_requests
         WHERE status <> ALL(%(final)s) AND due_at <= %(soon)s
        ON CONFLICT DO NOTHING
        RETURNING request_id, alert, status, due_at
        """,
        {"now": now, "soon": now + due_soon, "final": list(FINAL_STATES)},
    ).fetchall()
    kinds = dict(conn.execute(
        "SELECT request_id, kind FROM governance.privacy_requests WHERE request_id = ANY(%s)", ([r[0] for r in rows],)
    ).fetchall()) if rows else {}  # fmt: skip
    alerts = []
    for request_id, alert, status, due_at in sorted(rows):
        alerts.append({
            "event": f"request_{alert}", "request_id": request_id, "kind": kinds.get(request_id), "status": status,
            "due_at": due_at.isoformat(), "days_left": math.ceil((due_at - now).total_seconds() / 86400),
        })  # fmt: skip
    return alerts


def alert_deadlines(conninfo: str, *, now: datetime, send: AlertSender) -> list[dict[str, Any]]:
    """Send each new deadline alert once (committed with its record, so a retried task does not
    send it again; a delivery problem is the notifier's to log)."""

    with connect(conninfo) as conn, conn.transaction():
        alerts = deadline_alerts_due(conn, now=now, due_soon=response_periods().due_soon)
    for alert in alerts:
        send(alert)
    return alerts


def notifier_sender() -> AlertSender:
    """Deliver through the failure notifier's channels (``governance_alerts``)."""

    notifier = GovernanceFailureNotifier()

    def send(alert: Mapping[str, Any]) -> None:
        notifier.deliver(alert, subject=f"privacy request {alert['request_id']}: {alert['event']}")

    return send


def record_dispatches(
    conninfo: str, dispatches: Iterable[Mapping[str, Any]], *, run_exists: Callable[[str, str], bool], at: datetime
) -> dict[str, list[str]]:
    """After the trigger step: each dispatch whose run exists is recorded (``dispatched``); one
    whose run does not (Airflow did not answer) stays ``verified`` for the next pass."""

    out: dict[str, list[str]] = {"dispatched": [], "already": [], "not_started": []}
    with connect(conninfo) as conn:
        for data in dispatches:
            dispatch = Dispatch.from_xcom(data)
            if not run_exists(dispatch.dag_id, dispatch.run_id):
                out["not_started"].append(dispatch.request_id)
            elif record_dispatched(conn, dispatch, at=at, by=INTAKE_ACTOR):
                out["dispatched"].append(dispatch.request_id)
            else:
                out["already"].append(dispatch.request_id)
    return out
