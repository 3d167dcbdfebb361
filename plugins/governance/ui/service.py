"""What the Privacy requests page does, without HTTP: record a request, start its runs, answer its
Required actions, reveal an export's passphrase, read a request back.

Identities arrive here from a POST body, are normalised (:mod:`governance.identity`), encrypted
and stored by :func:`governance.privacy_requests.create_request`, and never go further: a run is
started with ``{"request_id": ...}`` (and the dry-run switch) as its configuration, so nothing
identifying enters Airflow's metadata database. Every staff action is appended to
``governance.request_actions`` with the authenticated user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap
from governance.db import connect, conninfo_for
from governance.dispatch import MetadataRunTrigger, NotDispatchable, dispatch_request
from governance.erasure.certificate import render_html
from governance.erasure.readable import plan_changes as changes
from governance.erasure.readable import readable_plan
from governance.export.state import ExportStateError
from governance.export.state import reveal_passphrase as reveal
from governance.identity import InvalidIdentity, SubjectIdentities
from governance.migrations import ensure_schema
from governance.privacy_requests import (
    REQUEST_KINDS,
    InvalidRequest,
    RequestKind,
    UnknownRequest,
    create_request,
    validate_request_id,
)
from governance.request_lifecycle import (
    MAX_EXTENSION,
    RESPONSE_CHANNELS,
    InvalidTransition,
    extend_deadline,
    record_response,
    retry_request,
)
from governance.ui.access import Staff
from governance.workflows.dsr_erasure import VERIFICATION_METHODS

# A business client's offboarding is a request too (recorded by its DAG, shown on the page).
DAG_FOR_KIND: dict[str, str] = {"export": "dsr_export", "erasure": "dsr_erasure", "offboarding": "business_offboarding"}
APPROVAL_TASK = "approve_erasure"
EXPORT_VERIFICATION_TASK = "verify_identity"
STATUSES = ("received", "awaiting_verification", "verified", "dispatched", "in_progress", "completed", "failed",
            "rejected", "extended", "responded")
SORTS = {"received": "received_at", "deadline": "due_at", "kind": "kind", "status": "status"}
_migrated: set[str] = set()


class PageError(Exception):
    """Something staff can fix (shown to them); ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _now() -> datetime:
    return datetime.now(UTC)


def governance_conninfo() -> str:
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    if conninfo not in _migrated:
        ensure_schema(conninfo)
        _migrated.add(conninfo)
    return conninfo


def record_action(conn: Any, request_id: str, action: str, staff: Staff, detail: Mapping[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO governance.request_actions (request_id, action, actor, actor_role, detail, at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (request_id, action, staff.name, staff.role or None, Jsonb(dict(detail or {})), _now()),
    )


def days_left(due_at: datetime, now: datetime | None = None) -> int:
    """Whole days until the deadline (negative when overdue)."""
    return math.ceil(((due_at - (now or _now())).total_seconds()) / 86400)


# --------------------------------------------------------------------------------------------
# Recording and starting runs


def record_request(
    *, kind: str, email: str | None, phone: str | None, business_id: str | int | None, staff: Staff
) -> str:
    """Normalise, encrypt and store a new request; return its id (InvalidIdentity -> PageError)."""

    if kind not in REQUEST_KINDS:
        raise PageError("Choose what the person asks for: a copy of their data (export) or erasure.")
    request_kind: RequestKind = "export" if kind == "export" else "erasure"
    scope: int | None = None
    if business_id not in (None, ""):
        try:
            scope = int(str(business_id).strip())
        except ValueError:
            raise PageError("Business client id: a whole number, or leave it empty.") from None
    try:
        identities = SubjectIdentities.parse(email=email or None, phone=phone or None)
    except InvalidIdentity as exc:
        raise PageError(str(exc)) from None
    try:
        with connect(governance_conninfo()) as conn:
            request_id = create_request(
                conn, kind=request_kind, identities=identities, hasher=hasher_from_airflow(), cipher=cipher_from_airflow(),
                received_at=_now(), business_id=scope, source="api",
            )  # fmt: skip
            record_action(conn, request_id, "recorded", staff, {"identity_kinds": [k for k, _ in identities.items()]})
    except InvalidRequest as exc:
        raise PageError(str(exc)) from None
    return request_id


def start_run(request_id: str, *, staff: Staff, dry_run: bool | None = None) -> str:
    """Trigger the request's DAG with only the request id (and the dry-run switch) as its
    configuration; return the run id."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType


    row = request_row(request_id)
    dag_id = DAG_FOR_KIND[row["kind"]]
    if row["status"] in ("completed", "rejected", "responded"):
        raise PageError(f"The request is {row['status']}: record a new request instead.", 409)
    if row["effective_status"] in ("verified", "dispatched") and (row["kind"] == "export" or (row["kind"] == "erasure" and dry_run is False)):
        return dispatch_verified(row["request_id"], staff=staff)
    conf: dict[str, Any] = {"request_id": request_id}
    if row["kind"] == "erasure":
        conf["dry_run"] = True if dry_run is None else bool(dry_run)
    with create_session() as session:
        dag_run = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.UI, triggering_user_name=staff.name, conf=conf,
                              session=session)  # fmt: skip
        if dag_run is None:
            raise PageError(f"{dag_id} could not be started", 500)
        run_id = str(dag_run.run_id)
    with connect(governance_conninfo()) as conn:
        record_action(conn, request_id, "run_started", staff, {"dag_id": dag_id, "run_id": run_id, **{
            k: v for k, v in conf.items() if k != "request_id"}})  # fmt: skip
    return run_id


def dispatch_verified(request_id: str, *, staff: Staff) -> str:
    """Serve a verified request through the intake's dispatcher (:mod:`governance.dispatch`):
    the run id derives from the request id, so the page and the next intake pass start it once.
    Returns the run id."""

    try:
        result = dispatch_request(governance_conninfo(), request_id, trigger=MetadataRunTrigger(user=staff.name),
                                  at=_now(), by=staff.name)  # fmt: skip
    except NotDispatchable as exc:
        raise PageError(str(exc), 409) from None
    if result.triggered:
        with connect(governance_conninfo()) as conn:
            record_action(conn, request_id, "run_started", staff, {"dag_id": result.dispatch.dag_id,
                          "run_id": result.dispatch.run_id, **{k: v for k, v in result.dispatch.conf.items()
                                                               if k != "request_id"}})  # fmt: skip
    return result.dispatch.run_id


# --------------------------------------------------------------------------------------------
# Reading requests back (never an identity)

_COLUMNS = (
    "request_id, kind, status, effective_status, source, received_at, due_at, completed_at, business_id, verified_at, "
    "verification_method, approved_at, approved_by, dag_run_id, outcome_detail, result_uri IS NOT NULL AS has_result, "
    "email_hash IS NOT NULL AS has_email, phone_hash IS NOT NULL AS has_phone, original_due_at, extended_at, "
    "extended_by, extension_reason, responded_at, responded_via, dispatch_attempt, dispatch_run_id"
)


def list_requests(*, kind: str | None = None, status: str | None = None, sort: str = "deadline",
                  descending: bool = False, limit: int = 500) -> list[dict[str, Any]]:  # fmt: skip
    """Requests with kind, status, received, deadline and days left; filtered and sorted."""
    from psycopg import sql


    where = [sql.SQL("TRUE")]
    values: list[Any] = []
    if kind:
        where.append(sql.SQL("kind = %s"))
        values.append(kind)
    if status:
        where.append(sql.SQL("status = %s"))
        values.append(status)
    order = sql.Identifier(SORTS.get(sort, "due_at"))
    query = sql.SQL("SELECT " + _COLUMNS + " FROM governance.privacy_requests WHERE {} ORDER BY {} {}, request_id LIMIT {}").format(  # noqa: S608 (constant columns)
        sql.SQL(" AND ").join(where), order, sql.SQL("DESC" if descending else "ASC"), sql.Literal(int(limit))
    )  # fmt: skip
    with connect(governance_conninfo()) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, values).fetchall()
    now = _now()
    for row in rows:
        row["days_left"] = None if row["status"] in ("completed", "rejected", "responded") else days_left(row["due_at"], now)
    return rows


def request_row(request_id: str) -> dict[str, Any]:
    try:
        request_id = validate_request_id(request_id)
    except InvalidRequest as exc:
        raise PageError(str(exc), 404) from None
    with connect(governance_conninfo()) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT " + _COLUMNS + " FROM governance.privacy_requests WHERE request_id = %s",  # noqa: S608
                          (request_id,)).fetchone()  # fmt: skip
    if row is None:
        raise PageError(f"No privacy request {request_id}.", 404)
    row["days_left"] = None if row["status"] in ("completed", "rejected", "responded") else days_left(row["due_at"])
    return row


@dataclass
class RunInfo:
    dag_id: str
    run_id: str
    state: str
    dry_run: bool | None
    started_by: str | None
    queued_at: datetime | None
    waiting_for: str | None = None  # task id of an unanswered Required action

    @property
    def ui_path(self) -> str:
        from urllib.parse import quote

        return f"/dags/{quote(self.dag_id)}/runs/{quote(self.run_id, safe='')}"


@dataclass
class RequestView:
    request: dict[str, Any]
    actions: list[dict[str, Any]]
    runs: list[RunInfo]
    plans: list[dict[str, Any]] = field(default_factory=list)
    certificate: dict[str, Any] | None = None
    bundle: dict[str, Any] | None = None
    passphrase: dict[str, Any] | None = None
    paused: bool = False  # the request's workflow is paused in Airflow: its runs wait, queued

    @property
    def recorded_by(self) -> str | None:
        for action in self.actions:
            if action["action"] == "recorded":
                return str(action["actor"])
        return None

    def latest_plan(self, *, dry_run: bool) -> dict[str, Any] | None:
        for plan in self.plans:  # newest first; a dry run's plan is superseded by the next plan, still shown
            if bool(plan["dry_run"]) == dry_run and (dry_run or plan["status"] != "superseded"):
                return plan
        return None

    def waiting(self, task_id: str) -> RunInfo | None:
        for run in self.runs:
            if run.waiting_for == task_id:
                return run
        return None


def hitl_settle_seconds() -> float:
    """How long a Required action must have been waiting before the page offers to answer it.

    Airflow 3.3.2 races when a response arrives before the executor has reported the exit of the
    process that parked the task: the scheduler then retries the task, which asks again and loses
    the answer (seen under load, about 1-2 s after parking). ``[governance] hitl_settle_seconds``.
    """
    from airflow.configuration import conf

    return float(conf.get("governance", "hitl_settle_seconds", fallback="10") or 10)


def _runs(request_id: str, run_ids: dict[tuple[str, str], dict[str, Any]]) -> list[RunInfo]:
    """State of each known run in Airflow, and which Required action it waits for."""
    if not run_ids:
        return []
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import and_, or_, select

    runs: list[RunInfo] = []
    with create_session() as session:
        found = session.scalars(select(DagRun).where(or_(*[and_(DagRun.dag_id == d, DagRun.run_id == r) for d, r in run_ids]))).all()
        waiting = session.execute(
            select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id)
            .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
            .where(or_(*[and_(TaskInstance.dag_id == d, TaskInstance.run_id == r) for d, r in run_ids]))
            .where(HITLDetail.responded_at.is_(None))
            .where(TaskInstance.state.in_(["deferred", "awaiting_input"]))
            .where(HITLDetail.created_at <= _now() - timedelta(seconds=hitl_settle_seconds()))
        ).all()  # fmt: skip
        waits = {(w.dag_id, w.run_id): w.task_id for w in waiting}
        for dag_run in found:
            known = run_ids.get((dag_run.dag_id, dag_run.run_id), {})
            runs.append(RunInfo(
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, state=str(dag_run.state), dry_run=known.get("dry_run"),
                started_by=known.get("by") or dag_run.triggering_user_name, queued_at=dag_run.queued_at,
                waiting_for=waits.get((dag_run.dag_id, dag_run.run_id)),
            ))  # fmt: skip
    runs.sort(key=lambda r: r.queued_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return runs


def request_view(request_id: str) -> RequestView:
    """Everything the request page shows (ids, counts, states, staff names; never an identity)."""

    row = request_row(request_id)
    request_id = row["request_id"]
    dag_id = DAG_FOR_KIND[row["kind"]]
    with connect(governance_conninfo()) as conn, conn.cursor(row_factory=dict_row) as cur:
        actions = cur.execute(
            "SELECT action, actor, actor_role, detail, at FROM governance.request_actions WHERE request_id = %s ORDER BY at, action_id",
            (request_id,),
        ).fetchall()  # fmt: skip
        plans = cur.execute(
            "SELECT plan_id, dag_run_id, status, dry_run, as_of, summary, created_at, approved_at, approved_by, refusal"
            " FROM governance.erasure_plans WHERE request_id = %s ORDER BY created_at DESC",
            (request_id,),
        ).fetchall()  # fmt: skip
        certificate = cur.execute(
            "SELECT plan_id, issued_at, verification_passed, sha256 FROM governance.erasure_certificates"
            " WHERE request_id = %s ORDER BY issued_at DESC LIMIT 1",
            (request_id,),
        ).fetchone()  # fmt: skip
        bundle = cur.execute(
            "SELECT run_id, status, generated_at, files, published_at, link_expires_at FROM governance.export_bundles"
            " WHERE request_id = %s ORDER BY generated_at DESC LIMIT 1",
            (request_id,),
        ).fetchone()  # fmt: skip
        passphrase = cur.execute(
            "SELECT reveal_count, last_revealed_at, last_revealed_by FROM governance.export_passphrases WHERE request_id = %s",
            (request_id,),
        ).fetchone()  # fmt: skip
    run_ids: dict[tuple[str, str], dict[str, Any]] = {}
    for action in actions:
        detail = action["detail"] or {}
        if action["action"] == "run_started" and detail.get("run_id"):
            run_ids[(str(detail.get("dag_id") or dag_id), str(detail["run_id"]))] = {"dry_run": detail.get("dry_run"), "by": action["actor"]}
    for plan in plans:
        run_ids.setdefault((dag_id, plan["dag_run_id"]), {"dry_run": plan["dry_run"]})
    if bundle is not None:
        run_ids.setdefault((dag_id, bundle["run_id"]), {})
    if row["dag_run_id"]:
        run_ids.setdefault((dag_id, row["dag_run_id"]), {})
    finished = row["status"] in ("completed", "rejected", "responded")
    return RequestView(request=row, actions=actions, runs=_runs(request_id, run_ids), plans=plans,
                       certificate=certificate, bundle=bundle, passphrase=passphrase,
                       paused=not finished and workflow_paused(dag_id))  # fmt: skip


def workflow_paused(dag_id: str) -> bool:
    """Whether ``dag_id`` is paused in Airflow (a run triggered then waits, queued, until unpaused)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return bool(session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == dag_id)))


# --------------------------------------------------------------------------------------------
# Required actions (the same record as Browse > Required actions)


def hitl_choices(dag_id: str, run_id: str, task_id: str) -> tuple[list[str], dict[str, str]]:
    """The options of a waiting Required action and, for an approval, the verification methods
    its form offers (value -> label), as the task stored them."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select


    with create_session() as session:
        detail = session.scalar(
            select(HITLDetail).join(TaskInstance, HITLDetail.ti_id == TaskInstance.id).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
        )  # fmt: skip
        if detail is None:
            raise PageError("That run is not waiting for an answer any more.", 409)
        options = list(detail.options or [])
        param = (detail.params or {}).get("verification_method") or {}
    schema = param.get("schema", param) if isinstance(param, Mapping) else {}
    values = list(schema.get("enum") or VERIFICATION_METHODS)
    display = dict(schema.get("values_display") or {})
    methods = {str(v): str(display.get(v) or VERIFICATION_METHODS.get(str(v)) or str(v).replace("_", " ")) for v in values if v is not None}
    return options, methods


def respond(dag_id: str, run_id: str, task_id: str, *, chosen: list[str], params_input: Mapping[str, Any], staff: Staff) -> None:
    """Answer a Required action through Airflow's own handler (same checks, same record, the
    task resumed as when answered in Browse > Required actions)."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.utils.session import create_session
    from fastapi import HTTPException

    with create_session() as session:
        try:
            update_hitl_detail(dag_id=dag_id, dag_run_id=run_id, task_id=task_id,
                               update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=chosen, params_input=dict(params_input)),
                               user=staff.user, session=session, map_index=-1)  # fmt: skip
        except HTTPException as exc:
            raise PageError(str(exc.detail), exc.status_code) from None


def approve_erasure(request_id: str, *, verification_method: str, staff: Staff) -> str:
    """Four eyes: the approver is not who recorded the request. Returns the run id approved."""

    view = request_view(request_id)
    if view.request["kind"] != "erasure":
        raise PageError("Only an erasure is approved; an export is verified.", 409)
    if view.recorded_by and view.recorded_by == staff.name:
        raise PageError("Four eyes: someone other than the person who recorded this request must approve it.", 403)
    run = view.waiting(APPROVAL_TASK)
    if run is None:
        raise PageError("No run of this request is waiting for approval: start the erasure first.", 409)
    if run.started_by and run.started_by == staff.name and not view.recorded_by:
        raise PageError("Four eyes: someone other than the person who started this erasure must approve it.", 403)
    _options, methods = hitl_choices(run.dag_id, run.run_id, APPROVAL_TASK)
    if verification_method not in methods:
        raise PageError("Say how the person's identity was verified.")
    respond(run.dag_id, run.run_id, APPROVAL_TASK, chosen=["Approve"], params_input={"verification_method": verification_method},
            staff=staff)  # fmt: skip
    with connect(governance_conninfo()) as conn:
        record_action(conn, view.request["request_id"], "approved", staff,
                      {"run_id": run.run_id, "verification_method": verification_method})  # fmt: skip
    return run.run_id


def verify_export(request_id: str, *, option: str, staff: Staff) -> str:
    """Answer an export's identity check (verify_identity) with one of its options."""

    view = request_view(request_id)
    run = view.waiting(EXPORT_VERIFICATION_TASK)
    if view.request["kind"] != "export" or run is None:
        raise PageError("No run of this request is waiting for an identity check.", 409)
    options, _methods = hitl_choices(run.dag_id, run.run_id, EXPORT_VERIFICATION_TASK)
    if option not in options:
        raise PageError("Choose how the person's identity was verified.")
    respond(run.dag_id, run.run_id, EXPORT_VERIFICATION_TASK, chosen=[option], params_input={}, staff=staff)
    with connect(governance_conninfo()) as conn:
        record_action(conn, view.request["request_id"], "verified", staff, {"run_id": run.run_id, "option": option})
    return run.run_id


# --------------------------------------------------------------------------------------------
# Lifecycle steps (the same functions as ``python -m governance request extend|retry|respond``)


def extend_request(request_id: str, *, days: str | int, reason: str, staff: Staff) -> datetime:
    """The legal extension, once, with a reason, by the authenticated user; returns the new
    deadline. A refused step (extended before, finished, no reason) is a 409 and changes nothing."""
    row = request_row(request_id)
    try:
        extra = int(str(days).strip())
    except ValueError:
        raise PageError(f"Extend by a whole number of days (1 to {MAX_EXTENSION.days}).") from None
    try:
        with connect(governance_conninfo()) as conn:
            due = extend_deadline(conn, row["request_id"], extra=timedelta(days=extra), reason=reason, by=staff.name,
                                  at=_now())  # fmt: skip
            record_action(conn, row["request_id"], "extended", staff,
                          {"days": extra, "due_at": due.isoformat(), "from": row["effective_status"]})  # fmt: skip
    except InvalidTransition as exc:
        raise PageError(f"Not extended: {exc}.", 409) from None
    except UnknownRequest as exc:
        raise PageError(str(exc), 404) from None
    return due


def retry_failed(request_id: str, *, reason: str, staff: Staff) -> str:
    """Clear a failed request (back to ``verified``, next dispatch attempt) and dispatch it at once
    through the intake's dispatcher; returns the new run id. Were the trigger to fail, the request
    stays verified and the next intake pass dispatches it (same run id)."""
    row = request_row(request_id)
    if row["kind"] not in ("export", "erasure"):
        raise PageError(f"A {row['kind']} request is retried from its own workflow, not here.", 409)
    try:
        with connect(governance_conninfo()) as conn:
            attempt = retry_request(conn, row["request_id"], reason=reason, by=staff.name, at=_now())
            record_action(conn, row["request_id"], "retried", staff, {"attempt": attempt})
    except InvalidTransition as exc:
        raise PageError(f"Not retried: {exc}.", 409) from None
    except UnknownRequest as exc:
        raise PageError(str(exc), 404) from None
    return dispatch_verified(row["request_id"], staff=staff)


def record_told(request_id: str, *, via: str, when: str | None, staff: Staff) -> datetime:
    """Record that the person was told the outcome of a completed or rejected request: how
    (``via``) and when (``when``: an ISO date-time in UTC, not in the future; empty: now)."""
    row = request_row(request_id)
    now = _now()
    at = now
    if when and when.strip():
        try:
            at = datetime.fromisoformat(when.strip())
        except ValueError:
            raise PageError("When: a date and time (YYYY-MM-DD HH:MM, UTC), or leave it empty for now.") from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        if at > now + timedelta(minutes=1):
            raise PageError("When: the person cannot have been told in the future.")
        if at < (row["completed_at"] or row["received_at"]):
            raise PageError("When: not before the request was completed or rejected.")
    if via not in RESPONSE_CHANNELS:
        raise PageError(f"Say how the person was told: one of {', '.join(RESPONSE_CHANNELS)}.")
    try:
        with connect(governance_conninfo()) as conn:
            record_response(conn, row["request_id"], via=via, at=at, by=staff.name)
            record_action(conn, row["request_id"], "responded", staff, {"via": via, "responded_at": at.isoformat()})
    except InvalidTransition as exc:
        raise PageError(f"Not recorded: {exc}.", 409) from None
    return at


# --------------------------------------------------------------------------------------------
# Results


def reveal_passphrase(request_id: str, *, staff: Staff) -> str:
    """An export's passphrase; each reveal is recorded with the user."""

    row = request_row(request_id)
    if row["kind"] != "export" or row["status"] != "completed":
        raise PageError("The passphrase is shown for a completed export only.", 409)
    with connect(governance_conninfo()) as conn:
        try:
            passphrase = reveal(conn, row["request_id"], cipher=cipher_from_airflow(), at=_now(), by=staff.name)
        except ExportStateError as exc:
            raise PageError(str(exc), 409) from None
        record_action(conn, row["request_id"], "passphrase_revealed", staff)
    return passphrase


def download_link(request_id: str, *, staff: Staff) -> tuple[str, datetime | None]:
    """A completed export's download link and when it expires; the view is recorded."""

    row = request_row(request_id)
    if row["kind"] != "export" or row["status"] != "completed" or not row["has_result"]:
        raise PageError("The download link is shown for a completed export only.", 409)
    with connect(governance_conninfo()) as conn:
        link = conn.execute("SELECT result_uri FROM governance.privacy_requests WHERE request_id = %s",
                            (row["request_id"],)).fetchone()  # fmt: skip
        expiry = conn.execute(
            "SELECT max(link_expires_at) FROM governance.export_bundles WHERE request_id = %s", (row["request_id"],)
        ).fetchone()
        record_action(conn, row["request_id"], "link_viewed", staff)
    if link is None or not link[0]:
        raise PageError("The download link is shown for a completed export only.", 409)
    return str(link[0]), (expiry[0] if expiry else None)


def certificate_html(request_id: str, *, staff: Staff) -> str:
    """The erasure certificate of a request as HTML (rendered from the indexed document)."""

    row = request_row(request_id)
    with connect(governance_conninfo()) as conn:
        found = conn.execute(
            "SELECT certificate FROM governance.erasure_certificates WHERE request_id = %s ORDER BY issued_at DESC LIMIT 1",
            (row["request_id"],),
        ).fetchone()
        if found is None:
            raise PageError("No certificate was issued for this request yet.", 404)
        record_action(conn, row["request_id"], "certificate_viewed", staff)
    return render_html(found[0])


def plan_lines(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The readable plan of a stored summary (structured rows for the page)."""

    return readable_plan(summary, load_datamap()).to_json()


def plan_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return changes(before, after, load_datamap())


def request_kind(value: str) -> RequestKind:
    if value not in DAG_FOR_KIND:
        raise PageError("unknown kind")
    return value  # type: ignore[return-value]
