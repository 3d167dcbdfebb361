"""The one dispatcher of verified privacy requests, shared by the intake DAG and the Privacy
requests page.

A verified request is served by a run of its workflow (``dsr_export``, ``dsr_erasure``) whose
configuration carries the request id only (and, for an erasure, ``dry_run: false``: its
verification was its approval), never an identity. The run id derives from the request id and the
dispatch attempt (:func:`dispatch_run_id`), so dispatching the same request twice, from the page
and from the intake, or after a lost answer from Airflow, names the same run: the second trigger
finds it and changes nothing. The request moves ``verified -> dispatched`` only once the run
exists (:func:`record_dispatched`), so a dispatch that failed half-way is simply done again.

Triggering is the one step that differs: the intake DAG's tasks cannot open Airflow's metadata
database, so the DAG triggers through ``TriggerDagRunOperator`` (mapped over
:func:`pending_dispatches`, ``skip_when_already_exists``) and then calls :func:`record_dispatched`;
the page runs inside the API server and passes :class:`MetadataRunTrigger` to
:func:`dispatch_request`, which plans, triggers and records in one call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg

from governance.db import connect
from governance.privacy_requests import UnknownRequest
from governance.request_lifecycle import InvalidTransition, set_status

DAG_FOR_KIND: dict[str, str] = {"export": "dsr_export", "erasure": "dsr_erasure"}
RUN_ID_PREFIX = "intake__"


class NotDispatchable(InvalidTransition):
    """The request cannot be dispatched now (not verified, finished, or of a kind with no DAG)."""


@dataclass(frozen=True)
class Dispatch:
    """One request's run to start: ids only (safe for XCom and logs)."""

    request_id: str
    kind: str
    dag_id: str
    run_id: str
    conf: dict[str, Any]

    def operator_kwargs(self) -> dict[str, Any]:
        """Arguments of a mapped ``TriggerDagRunOperator`` (``expand_kwargs``)."""
        return {"trigger_dag_id": self.dag_id, "trigger_run_id": self.run_id, "conf": dict(self.conf)}

    def to_xcom(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "kind": self.kind, "dag_id": self.dag_id, "run_id": self.run_id,
                "conf": dict(self.conf)}  # fmt: skip

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> Dispatch:
        return cls(str(data["request_id"]), str(data["kind"]), str(data["dag_id"]), str(data["run_id"]),
                   dict(data["conf"]))  # fmt: skip


def dispatch_run_id(request_id: str, attempt: int = 1) -> str:
    """The run id of a request's ``attempt``-th dispatch: the same every time it is computed."""
    return f"{RUN_ID_PREFIX}{request_id}" if attempt <= 1 else f"{RUN_ID_PREFIX}{request_id}__retry{attempt - 1}"


def _dispatch_of(request_id: str, kind: str, attempt: int) -> Dispatch:
    if kind not in DAG_FOR_KIND:
        raise NotDispatchable(f"privacy request {request_id} is of kind {kind}: the intake dispatches only "
                              f"{', '.join(DAG_FOR_KIND)}")  # fmt: skip
    conf: dict[str, Any] = {"request_id": request_id}
    if kind == "erasure":
        conf["dry_run"] = False
    return Dispatch(request_id, kind, DAG_FOR_KIND[kind], dispatch_run_id(request_id, attempt), conf)


def plan_dispatch(conn: psycopg.Connection[Any], request_id: str) -> Dispatch:
    """The run that serves a verified request; NotDispatchable when it is not verified (or is
    already dispatched: then its run is the one returned by :func:`dispatched_run`)."""
    row = conn.execute(
        "SELECT kind, effective_status, dispatch_attempt FROM governance.privacy_requests WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    if row is None:
        raise UnknownRequest(f"no privacy request {request_id}")
    kind, status, attempt = row
    if status != "verified":
        raise NotDispatchable(f"privacy request {request_id} is {status}: only a verified request is dispatched")
    return _dispatch_of(request_id, str(kind), int(attempt))


def pending_dispatches(conn: psycopg.Connection[Any], *, limit: int = 500) -> list[Dispatch]:
    """Every verified export or erasure, oldest deadline first (at most ``limit``)."""
    rows = conn.execute(
        "SELECT request_id, kind, dispatch_attempt FROM governance.privacy_requests"
        " WHERE effective_status = 'verified' AND kind = ANY(%s) ORDER BY due_at, request_id LIMIT %s",
        (list(DAG_FOR_KIND), limit),
    ).fetchall()
    return [_dispatch_of(str(r), str(k), int(a)) for r, k, a in rows]


def record_dispatched(conn: psycopg.Connection[Any], dispatch: Dispatch, *, at: datetime, by: str) -> bool:
    """Record that ``dispatch``'s run exists: ``verified -> dispatched`` with its run id, and a
    ``dispatched`` action. Idempotent: False (nothing written) when the request already moved on
    or was dispatched under another attempt."""
    from psycopg.types.json import Jsonb

    try:
        previous = set_status(conn, dispatch.request_id, "dispatched", at=at, expect=("verified",),
                              detail=f"run {dispatch.run_id} of {dispatch.dag_id} started by {by}",
                              dispatch_run_id=dispatch.run_id, dispatched_at=at)  # fmt: skip
    except InvalidTransition:
        return False
    conn.execute(
        "INSERT INTO governance.request_actions (request_id, action, actor, detail, at) VALUES (%s, 'dispatched', %s, %s, %s)",
        (dispatch.request_id, by, Jsonb({"dag_id": dispatch.dag_id, "run_id": dispatch.run_id, "from": previous}), at),
    )
    return True


class RunTrigger(Protocol):
    """Starts a DAG run with a given run id; returns False when that run already exists."""

    def __call__(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class MetadataRunTrigger:
    """Triggers through Airflow's own ``trigger_dag`` (the API server's process, the CLI, tests:
    wherever the metadata database is reachable)."""

    user: str | None = None

    def __call__(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagRunAlreadyExists
        from airflow.utils.session import create_session
        from airflow.utils.types import DagRunTriggeredByType

        try:
            with create_session() as session:
                created = trigger_dag(dag_id, run_id=run_id, conf=conf, logical_date=None, session=session,
                                      triggered_by=DagRunTriggeredByType.UI, triggering_user_name=self.user)  # fmt: skip
        except DagRunAlreadyExists:
            return False
        return created is not None


@dataclass(frozen=True)
class DispatchResult:
    dispatch: Dispatch
    triggered: bool  # False: the run already existed (a repeated dispatch)
    recorded: bool  # False: the request had already been recorded as dispatched


def dispatch_request(
    conninfo: str, request_id: str, *, trigger: RunTrigger, at: datetime, by: str
) -> DispatchResult:
    """Start the run that serves a verified request, once: plan, trigger, record.

    A request already dispatched returns its recorded run (nothing triggered). A trigger that
    raises (Airflow unreachable) leaves the request verified: calling again is safe, the run id is
    the same. NotDispatchable when the request is not verified."""

    with connect(conninfo) as conn:
        row = conn.execute(
            "SELECT kind, effective_status, dispatch_attempt, dispatch_run_id FROM governance.privacy_requests"
            " WHERE request_id = %s",
            (request_id,),
        ).fetchone()
        if row is not None and row[1] == "dispatched" and row[3]:
            return DispatchResult(_dispatch_of(request_id, str(row[0]), int(row[2])), triggered=False, recorded=False)
        dispatch = plan_dispatch(conn, request_id)
    triggered = trigger(dispatch.dag_id, dispatch.run_id, dispatch.conf)
    with connect(conninfo) as conn:
        recorded = record_dispatched(conn, dispatch, at=at, by=by)
    return DispatchResult(dispatch, triggered=triggered, recorded=recorded)
