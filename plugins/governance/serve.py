"""``python -m governance serve REQUEST_ID``: serve one recorded request from the command line.

Runs the request's DAG (``dsr_export`` or ``dsr_erasure``) locally with ``dag.test()``, its run
configuration holding the request id only (never an identity), prints each task as it finishes
and then the result: for an export the bundle's download link and how staff get its passphrase;
for an erasure the certificate (what was removed, what was kept); for an erasure dry run, the plan.

A human step is never waited for. ``dag.test()`` would wait for ever on a Required action (the
identity check of an unverified export, the approval of an erasure), so the request's state is
checked first and the command stops at once, naming the command or page that completes the step
(``python -m governance request verify ...``, the Privacy requests page). Should a run reach a
human step all the same, a watcher sees the task awaiting input within a second or two, stops the
run (marked failed, the request left as it was) and says the same.

Exit status: 0 served (or a dry run planned), 1 the run failed, 2 the request cannot be served
as it stands (unknown, finished, or a human step pending), with what to do.
"""

from __future__ import annotations

import _thread
import argparse
import getpass
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow
from governance.db import connect, conninfo_for
from governance.erasure.readable import erasure_plan_text
from governance.migrations import ensure_schema
from governance.privacy_requests import (
    VERIFICATION_METHOD_CODES,
    finished_request_refusal,
    load_request,
    request_id_arg,
)

DAG_FOR_KIND = {"export": "dsr_export", "erasure": "dsr_erasure"}
# Tasks that wait for a person (Required actions); the watcher stops a run parked on one.
HUMAN_STEPS = {
    "verify_identity": "the identity check of this export",
    "approve_erasure": "the approval of this erasure",
}
FINISHED_TI_STATES = {"success", "failed", "skipped", "upstream_failed", "removed", "up_for_retry"}
POLL_S = 0.5


class HumanStepPending(RuntimeError):
    """The request needs a person before it can be served; the message says who and how."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", type=request_id_arg, help="a request recorded with `request new` or on the page")
    parser.add_argument(
        "--erase", action="store_true",
        help="erasure: carry the plan out (dry_run off); needs the request verified and approved. "
        "Without it an erasure is served as a dry run: the plan is computed, stored and printed",
    )
    parser.add_argument("--by", default=None, help="who serves it (recorded when the link is shown; default: the OS user)")


def human_step_refusal(request_id: str, *, kind: str, status: str, verified: bool, approved: bool, erase: bool) -> str | None:
    """What a person must do before the run can go through unattended, or None."""
    verify = (
        f"python -m governance request verify {request_id} --method METHOD --by YOUR_NAME "
        f"(METHOD: {', '.join(verification_codes())})"
    )
    if kind == "export" and not verified:
        return (
            f"{request_id} is not verified: the run would wait at verify_identity for someone to say how the "
            f"person's identity was verified. Verify them, then serve again: {verify}; or answer the identity check "
            "on the Privacy requests page of a running Airflow (make airflow)."
        )
    if kind == "erasure" and erase and not (verified and approved):
        return (
            f"{request_id} is not verified and approved: the run would wait at approve_erasure. Read the dry run "
            f"(python -m governance serve {request_id}), then have someone other than its recorder approve it: on the "
            f"Privacy requests page (Send for approval), or {verify}, and serve again with --erase."
        )
    return None


def verification_codes() -> list[str]:
    return list(VERIFICATION_METHOD_CODES)


@dataclass
class RunWatcher:
    """Prints each task of the run as it finishes; interrupts the run when a task waits for a
    person. Runs in a thread beside ``dag.test()`` (which must stay in the main thread)."""

    dag_id: str
    started: datetime
    out: Callable[[str], None]
    run_id: str | None = None
    waiting_on: str | None = None
    seen: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="serve-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()  # the last tasks, finished after the final tick

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # the metadata DB busy for a moment: look again next tick
                logging.getLogger(__name__).debug("watcher poll failed", exc_info=True)
            if self.waiting_on is not None:
                _thread.interrupt_main()  # dag.test() sleeps in the main thread: KeyboardInterrupt there
                return

    def poll(self) -> None:
        from airflow.models.dagrun import DagRun
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            if self.run_id is None:
                self.run_id = session.scalars(
                    select(DagRun.run_id)
                    .where(DagRun.dag_id == self.dag_id, DagRun.run_after >= self.started)
                    .order_by(DagRun.run_after.desc())
                ).first()
                if self.run_id is None:
                    return
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.state, TaskInstance.start_date, TaskInstance.end_date)
                .where(TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id)
                .order_by(TaskInstance.end_date)
            ).all()
        for task_id, state, start, end in rows:
            state = str(state.value if hasattr(state, "value") else state) if state else ""
            if state == "awaiting_input" and task_id in HUMAN_STEPS:
                self.waiting_on = task_id
            if state in FINISHED_TI_STATES and self.seen.get(task_id) != state:
                self.seen[task_id] = state
                took = f" in {(end - start).total_seconds():.1f} s" if start and end else ""
                self.out(f"  {task_id:<22} {state}{took}")


def _fail_parked_run(dag_id: str, run_id: str) -> None:
    """A run stopped at a human step is marked failed (its unfinished tasks too), so no scheduler
    or page mistakes it for one still waiting; the request itself is left as it was."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select, update

    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
                   TaskInstance.state.notin_([s.value for s in TaskInstanceState if s.value in FINISHED_TI_STATES]))
            .values(state=TaskInstanceState.FAILED, end_date=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        run.set_state(DagRunState.FAILED)


def run_request_dag(dag_id: str, conf: dict[str, Any], *, out: Callable[[str], None] = print) -> tuple[Any, str | None]:
    """``dag.test(run_conf=conf)`` of ``dag_id`` with the watcher; returns (the run, or None when it
    was stopped at a human step, and the human step's task id)."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(settings.DAGS_FOLDER) / f"{dag_id}.py"))
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise RuntimeError(f"no DAG {dag_id} in {settings.DAGS_FOLDER}: {bag.import_errors or 'not found'}")
    watcher = RunWatcher(dag_id, datetime.now(UTC), out)
    watcher.start()
    try:
        dag_run = dag.test(run_conf=conf)
    except KeyboardInterrupt:
        watcher.stop()
        if watcher.waiting_on is None or watcher.run_id is None:
            raise  # a real Ctrl-C
        _fail_parked_run(dag_id, watcher.run_id)
        return None, watcher.waiting_on
    watcher.stop()
    return dag_run, None


@contextmanager
def _warnings_only() -> Iterator[None]:
    """Airflow's own INFO lines (DAG bags, dag runs, task starts) would bury the task list: only
    warnings and errors while the run goes, Airflow's configured level again after."""
    from airflow.configuration import conf
    from airflow.logging_config import configure_logging

    before = conf.get("logging", "logging_level", fallback="INFO")
    conf.set("logging", "logging_level", "WARNING")
    configure_logging()
    try:
        yield
    finally:
        conf.set("logging", "logging_level", before)
        configure_logging()


def _request_state(conninfo: str, request_id: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row


    with connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT request_id, kind, status, completed_at, result_uri, verified_at IS NOT NULL AS verified,"
            " (approved_at IS NOT NULL OR approved_by IS NOT NULL) AS approved, outcome_detail"
            " FROM governance.privacy_requests WHERE request_id = %s",
            (request_id,),
        ).fetchone()


def run(args: argparse.Namespace) -> int:
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    ensure_schema(conninfo)
    state = _request_state(conninfo, args.request_id)
    if state is None:
        print(f"error: no privacy request {args.request_id}", file=sys.stderr)
        return 2
    kind = str(state["kind"])
    if args.erase and kind != "erasure":
        print(f"error: {args.request_id} is an {kind} request; --erase is for erasures", file=sys.stderr)
        return 2

    with connect(conninfo) as conn:
        refusal = finished_request_refusal(load_request(conn, args.request_id, cipher=cipher_from_airflow()))
    refusal = refusal or human_step_refusal(
        args.request_id, kind=kind, status=str(state["status"]), verified=bool(state["verified"]),
        approved=bool(state["approved"]), erase=args.erase,
    )  # fmt: skip
    if refusal:
        print(f"serve: {refusal}", file=sys.stderr)
        return 2

    dag_id = DAG_FOR_KIND[kind]
    conf: dict[str, Any] = {"request_id": args.request_id}
    if kind == "erasure":
        conf["dry_run"] = not args.erase
    what = "erasure" if args.erase else ("erasure dry run" if kind == "erasure" else "export")
    print(f"serve: {args.request_id}: {dag_id} ({what}), run locally with dag.test(); tasks as they finish:", flush=True)
    began = time.monotonic()
    with _warnings_only():
        dag_run, parked = run_request_dag(dag_id, conf, out=lambda line: print(line, flush=True))
    if parked is not None:
        print(
            f"serve: stopped: the run reached {parked} ({HUMAN_STEPS[parked]}) and would wait for a person. The run "
            f"is marked failed; the request is unchanged. "
            + (human_step_refusal(args.request_id, kind=kind, status="", verified=False, approved=False, erase=True) or ""),
            file=sys.stderr,
        )
        return 2
    seconds = time.monotonic() - began
    print(f"serve: {dag_id} run {dag_run.run_id}: {dag_run.state} in {seconds:.0f} s", flush=True)
    state = _request_state(conninfo, args.request_id) or state
    ok = str(dag_run.state) in ("success", "DagRunState.SUCCESS")
    if kind == "export":
        return _export_result(conninfo, state, ok, by=args.by)
    return _erasure_result(conninfo, state, ok, dry_run=not args.erase, run_id=dag_run.run_id)


def _export_result(conninfo: str, state: dict[str, Any], ok: bool, *, by: str | None) -> int:
    request_id = state["request_id"]
    if not ok or state["status"] != "completed" or not state["result_uri"]:
        print(f"serve: {request_id} not served: {state['status']}; {state.get('outcome_detail') or 'see the task log'}",
              file=sys.stderr)  # fmt: skip
        return 1
    from psycopg.types.json import Jsonb


    with connect(conninfo) as conn:  # shown to a person: recorded, as on the page
        conn.execute(
            "INSERT INTO governance.request_actions (request_id, action, actor, detail) VALUES (%s, 'link_viewed', %s, %s)",
            (request_id, by or getpass.getuser(), Jsonb({"via": "cli serve"})),
        )
    print(f"serve: {request_id} completed: the encrypted bundle is ready.")
    print(f"  download link (send it to the person by e-mail): {state['result_uri']}")
    print(f"  passphrase (give it by another channel, phone or SMS): python -m governance export-passphrase {request_id}")
    print(f"  check it yourself: python -m governance decrypt-bundle --request-id {request_id} --extract DIR")
    return 0


def _erasure_result(conninfo: str, state: dict[str, Any], ok: bool, *, dry_run: bool, run_id: str) -> int:
    from psycopg.rows import dict_row


    request_id = state["request_id"]
    with connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        if dry_run:
            plan = cur.execute(
                "SELECT plan_id, status, summary FROM governance.erasure_plans WHERE request_id = %s AND dag_run_id = %s",
                (request_id, run_id),
            ).fetchone()
        else:
            plan = None
        certificate = cur.execute(
            "SELECT plan_id, json_uri, html_uri, verification_passed, certificate FROM governance.erasure_certificates"
            " WHERE request_id = %s ORDER BY issued_at DESC LIMIT 1",
            (request_id,),
        ).fetchone()
    if dry_run:
        if not ok or plan is None:
            print(f"serve: the dry run of {request_id} failed: {state.get('outcome_detail') or 'see the task log'}",
                  file=sys.stderr)  # fmt: skip
            return 1

        print(f"serve: dry run of {request_id}: plan {plan['plan_id']} ({plan['status']}); nothing changed.")
        print(erasure_plan_text(dict(plan["summary"]), dry_run=True))
        print(f"serve: to erase: have it approved (Privacy requests page, or `request verify` by someone other than "
              f"its recorder), then: python -m governance serve {request_id} --erase")  # fmt: skip
        return 0
    if not ok or certificate is None:
        print(f"serve: {request_id} not erased: {state['status']}; {state.get('outcome_detail') or 'see the task log'}",
              file=sys.stderr)  # fmt: skip
        return 1
    cert = dict(certificate["certificate"])
    print(f"serve: {request_id} {cert.get('outcome')}; verification {'passed' if certificate['verification_passed'] else 'FAILED'}.")
    print(f"  certificate: {certificate['json_uri']} (HTML: {certificate['html_uri']})")
    erased = cert.get("erased", {})
    for db in erased.get("databases", []):
        print(f"  {db['table']}: {db.get('affected')} {db['effect'].replace('_', ' ')}")
    for obj in erased.get("objects", []):
        removed = obj.get("removed")
        listed = f" ({len(removed)} object(s) removed)" if isinstance(removed, list) else ""
        print(f"  {obj['prefix']}: {obj.get('deleted_with_all_versions')} object version(s) deleted{listed}")
    for proc in erased.get("processors", []):
        print(f"  {proc['processor']}: {proc['erased']} erased, {proc['already_absent']} already absent")
    for kept in cert.get("kept", []):
        print(f"  kept: {json.dumps(kept, default=str)}")
    return 0 if certificate["verification_passed"] else 1
