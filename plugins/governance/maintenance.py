"""``python -m governance maintain``: the governance work that needs Airflow's metadata database.

Task code cannot open Airflow's metadata database in Airflow 3, and the scheduler must never wait
on the project's work, so this runs beside them (the ``governance-maintenance`` service in
docker-compose, a background process of ``make airflow``, once at the end of ``make demo``). Each
pass:

1. **scrubs** the identities typed into trigger forms from ended privacy-request runs
   (:func:`governance.run_confs.scrub_run_confs`), as soon as they end;
2. **closes superseded runs**: a run whose request a newer run took over (a killed run, which
   Airflow keeps showing ``running`` because nothing is left to report its end) is marked
   ``failed`` in Airflow, its unfinished tasks failed or skipped, with a note on the run naming
   the run that superseded it; the request's run record says when and what was done
   (:func:`close_superseded_runs`);
3. **reconciles** the audit ledger for every run that ended since the previous pass: the task
   states the scheduler sets without running the task (skipped, upstream_failed) and any row a
   task-side listener lost (a crashed worker) are appended; idempotent, so overlapping passes and
   restarts never write a fact twice;
4. **forgets erasure keys no run will use** (:func:`forget_unused_erasure_keys`): the key
   tables of heavy subjects keep a plan's row ids until the run that carried it out closes; a run
   killed before its close, or a plan left waiting for an approval its run never got, would keep
   them for ever;
5. **keeps Airflow's own records within retention** (:mod:`governance.metadata_retention`): at
   most every ``--clean-every`` (default 1 hour), ``airflow db clean`` of the run, task, XCom and
   action-log tables, task log files and OpenLineage event files older than
   ``--metadata-max-age`` (default 30 days), each bounded per pass;
6. **anchors** the ledger head in the object store when rows were added and the newest anchor is
   older than ``--anchor-interval`` (default 5 minutes): a tail cut from the ledger goes unnoticed
   for at most that long.

It loops every ``--every`` seconds (default 60); ``--once`` makes one pass (cron, the demo, tests).
Each pass writes a heartbeat file (``--heartbeat``) that the compose healthcheck reads. Prints one
JSON line of counts per pass: never a configuration value, never personal data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from governance.config import GOVERNANCE_CONN_ID, OBJECTS_CONN_ID
from governance.datamap import load_datamap
from governance.db import conninfo_for
from governance.erasure.keys import forget_plan_keys, stored_plan_ids
from governance.erasure.store import plan_id_for
from governance.ledger import (
    LEDGER_STATES,
    LedgerAnchor,
    LedgerEntry,
    LedgerWriter,
    anchor_bucket,
    anchor_dir,
    anchor_if_due,
    entry_from_task_instance,
    ledger_keyring,
    reconcile_run,
)
from governance.metadata_retention import DEFAULT_METADATA_MAX_AGE, clean_airflow_records
from governance.objectstore import s3_client
from governance.run_confs import parse_age, scrub_run_confs

log = logging.getLogger(__name__)

ENDED_STATES = ("success", "failed")
DEFAULT_EVERY_SECONDS = 60
DEFAULT_ANCHOR_INTERVAL = "5m"
# The first pass after a start looks back this far, so a restart of this service misses nothing.
DEFAULT_LOOKBACK = "1d"
DEFAULT_CLEAN_EVERY = "1h"


@dataclass
class MaintenanceReport:
    runs_closed: int = 0
    erasure_keys_forgotten: int = 0
    # Systems of the data map whose connection this process lacks: their key tables go unswept.
    erasure_keys_unswept_systems: list[str] = field(default_factory=list)
    runs_reconciled: int = 0
    ledger_rows_reconciled: int = 0
    anchored_seq: int | None = None
    scrub: dict[str, Any] = field(default_factory=dict)
    metadata_cleanup: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state) or "")


def run_facts(session: Any, dag_run: Any) -> tuple[list[LedgerEntry], list[LedgerEntry]]:
    """(current final states, earlier tries) of every task instance of an ended run."""
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from sqlalchemy import select

    final = [
        entry_from_task_instance(ti, _state_name(ti.state), dag_run.conf, "reconciled")
        for ti in dag_run.get_task_instances(session=session)
        if _state_name(ti.state) in LEDGER_STATES
    ]
    history = session.scalars(
        select(TaskInstanceHistory).where(
            TaskInstanceHistory.dag_id == dag_run.dag_id, TaskInstanceHistory.run_id == dag_run.run_id
        )
    )
    # An archived try that was retried is stored as failed; it ended up_for_retry.
    earlier = [
        entry_from_task_instance(h, "up_for_retry" if _state_name(h.state) == "failed" else _state_name(h.state),
                                 dag_run.conf, "reconciled")
        for h in history
        if _state_name(h.state) in LEDGER_STATES
    ]  # fmt: skip
    return final, earlier


def reconcile_ended_runs(writer: LedgerWriter, *, ended_after: datetime, batch: int = 200) -> tuple[int, int]:
    """Reconcile every run that ended after ``ended_after``; (runs looked at, rows written)."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    runs_seen = rows_written = 0
    last_id = 0
    with create_session() as session:
        while True:
            runs = list(
                session.scalars(
                    select(DagRun)
                    .where(DagRun.state.in_(ENDED_STATES), DagRun.end_date > ended_after, DagRun.id > last_id)
                    .order_by(DagRun.id)
                    .limit(batch)
                )
            )
            if not runs:
                break
            last_id = runs[-1].id
            for dag_run in runs:
                final, earlier = run_facts(session, dag_run)
                written = reconcile_run(writer, dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                                        final_states=final, earlier_tries=earlier)  # fmt: skip
                runs_seen += 1
                rows_written += len(written)
    return runs_seen, rows_written


# Task states of a run that is still working (failed when the run is closed); other unfinished
# states (none, scheduled, queued, up_for_retry, ...) are skipped, as Airflow's "mark failed" does.
_WORKING_TASK_STATES = ("running", "deferred", "up_for_reschedule", "awaiting_input", "restarting")
_FINISHED_TASK_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")


def close_run_note(request_id: str, superseded_by: str, superseded_at: datetime) -> str:
    """The note put on a superseded run closed as failed (ids only)."""
    return (
        f"Closed as failed by the governance maintenance pass: run {superseded_by} took over privacy request "
        f"{request_id} at {superseded_at.astimezone(UTC).isoformat(timespec='seconds')}, and this run had stopped "
        "working on it (killed, or overtaken). The request's outcome is the newer run's."
    )


def close_superseded_runs(governance_conninfo: str, *, now: datetime, batch: int = 200) -> int:
    """Close every superseded request run Airflow still shows running or queued; return how many.

    Each superseded run not closed yet (``governance.request_runs``) is looked up in Airflow's
    metadata database: a run still running or queued is set ``failed``, its working tasks
    ``failed`` and its other unfinished tasks ``skipped``, with a note naming the run that
    superseded it; a run that ended (or that Airflow no longer has) is left as it is. Either way
    the request's run record gets ``run_closed_at`` and what was done, so each run is handled once.
    """
    import psycopg
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    with psycopg.connect(governance_conninfo, application_name="governance-maintenance") as gov:
        pending = gov.execute(
            """
            SELECT r.request_id, r.dag_run_id, COALESCE(r.dag_id, 'dsr_' || p.kind), r.superseded_by, r.superseded_at
              FROM governance.request_runs r JOIN governance.privacy_requests p USING (request_id)
             WHERE r.superseded_by IS NOT NULL AND r.run_closed_at IS NULL
             ORDER BY r.superseded_at LIMIT %s
            """,
            (batch,),
        ).fetchall()
    closed = 0
    for request_id, run_id, dag_id, superseded_by, superseded_at in pending:
        with create_session() as session:
            dag_run = session.scalars(
                select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            ).one_or_none()
            state = _state_name(dag_run.state) if dag_run is not None else None
            if dag_run is None:
                note = f"Airflow has no run {run_id} of {dag_id}: nothing to close"
            elif state in ("running", "queued"):
                note = close_run_note(request_id, superseded_by, superseded_at)
                for ti in dag_run.get_task_instances(session=session):
                    ti_state = _state_name(ti.state)
                    if ti_state in _FINISHED_TASK_STATES:
                        continue
                    working = ti_state in _WORKING_TASK_STATES
                    ti.set_state(TaskInstanceState.FAILED if working else TaskInstanceState.SKIPPED, session=session)
                dag_run.set_state(DagRunState.FAILED)
                dag_run.note = note if not dag_run.note else f"{dag_run.note}\n\n{note}"
                closed += 1
                log.warning("maintenance: run %s of %s superseded by %s (request %s): closed as failed", run_id,
                            dag_id, superseded_by, request_id)  # fmt: skip
            else:
                note = f"the run had ended {state}: left as it is"
        with psycopg.connect(governance_conninfo, application_name="governance-maintenance") as gov:
            gov.execute(
                "UPDATE governance.request_runs SET run_closed_at = %s, run_close_note = %s"
                " WHERE request_id = %s AND dag_run_id = %s AND run_closed_at IS NULL",
                (now, note, request_id, run_id),
            )
    return closed


# Plans whose stored keys no run will use: done, refused or replaced. ``approved`` and
# ``executing`` plans are continued by the request's next run (governance.erasure.store.CONTINUABLE);
# a ``planned`` one waits for the approval of the run that made it.
_FINISHED_PLAN_STATES = ("refused", "superseded", "executed", "verified", "verification_failed")


def forget_unused_erasure_keys(governance_conninfo: str, unconfigured: list[str] | None = None) -> tuple[int, int]:
    """Remove the stored erasure keys (row ids of heavy subjects' tables) of every plan no run will
    use; return (plans, key rows) removed. Databases of the map whose connection is not configured
    here are skipped and their systems added to ``unconfigured`` (the pass reports them).

    A run's close removes its request's finished plans' keys; this catches what no close reached.
    Removed: the keys of finished plans (:data:`_FINISHED_PLAN_STATES`) and of plans that waited for
    an approval in a run Airflow no longer runs (ended, or gone). Kept: plans being carried out
    (``approved``, ``executing``: the request's next run continues them), plans waiting in a
    queued or running run. Keys whose plan row is missing (planning stores the keys, then saves
    the plan) belong to the run whose plan id they carry (``store.plan_id_for`` of a recorded
    request run): removed once that run is no longer running, kept while it is or when no recorded
    run matches.
    """
    import psycopg
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    datamap = load_datamap()
    skipped: list[str] = [] if unconfigured is None else unconfigured
    stored = stored_plan_ids(datamap, conninfo_for, skipped)
    if not stored:
        return 0, 0
    with psycopg.connect(governance_conninfo, application_name="governance-maintenance") as gov:
        plans = gov.execute(
            "SELECT plan_id, status, dag_id, dag_run_id FROM governance.erasure_plans WHERE plan_id = ANY(%s)",
            (sorted(stored),),
        ).fetchall()
        unsaved = stored - {plan_id for plan_id, *_rest in plans}
        runs = gov.execute(
            "SELECT r.request_id, r.dag_run_id, COALESCE(r.dag_id, 'dsr_' || p.kind)"
            " FROM governance.request_runs r JOIN governance.privacy_requests p USING (request_id)"
        ).fetchall() if unsaved else []  # fmt: skip
    unused = {plan_id for plan_id, status, _dag, _run in plans if status in _FINISHED_PLAN_STATES}
    waiting = {(dag_id, run_id): plan_id for plan_id, status, dag_id, run_id in plans if status == "planned"}
    for request_id, run_id, dag_id in runs:  # keys stored by a planning task that never saved its plan
        plan_id = plan_id_for(request_id, run_id)
        if plan_id in unsaved:
            waiting[(dag_id, run_id)] = plan_id
    if waiting:
        with create_session() as session:
            live = {(dag_id, run_id) for dag_id, run_id, state in session.execute(
                select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(DagRun.run_id.in_([r for _d, r in waiting]))
            ) if _state_name(state) in ("queued", "running")}  # fmt: skip
        unused |= {plan_id for run, plan_id in waiting.items() if run not in live}
    if not unused:
        return 0, 0
    removed = forget_plan_keys(datamap, unused, conninfo_for, [])
    log.info("maintenance: removed %d stored erasure keys of %d plans no run will use", removed, len(unused))
    return len(unused), removed


@dataclass
class Maintainer:
    """One maintenance loop's state: where the previous pass got to."""

    anchor_interval: timedelta
    scrub_min_age: timedelta
    ended_after: datetime
    latest_anchor: LedgerAnchor | None = None
    metadata_max_age: timedelta = timedelta(days=30)
    clean_every: timedelta = timedelta(hours=1)
    last_cleaned: datetime | None = None

    def run_once(self, now: datetime | None = None) -> MaintenanceReport:
        """One pass; each step runs even when an earlier one failed (its error is reported)."""
        now = now or datetime.now(UTC)
        report = MaintenanceReport()
        governance = conninfo_for(GOVERNANCE_CONN_ID)
        try:
            scrubbed = scrub_run_confs(now=now, min_age=self.scrub_min_age, dry_run=False, governance_conninfo=governance)
            report.scrub = asdict(scrubbed)
        except Exception as exc:
            log.exception("maintenance: scrubbing run configurations failed")
            report.errors.append(f"scrub: {type(exc).__name__}")
        try:  # before reconciling, so the runs closed now are reconciled in this pass
            report.runs_closed = close_superseded_runs(governance, now=now)
        except Exception as exc:
            log.exception("maintenance: closing superseded runs failed")
            report.errors.append(f"superseded runs: {type(exc).__name__}")
        try:
            report.erasure_keys_forgotten = forget_unused_erasure_keys(governance, report.erasure_keys_unswept_systems)[1]
        except Exception as exc:
            log.exception("maintenance: forgetting unused erasure keys failed")
            report.errors.append(f"erasure keys: {type(exc).__name__}")
        if self.last_cleaned is None or now - self.last_cleaned >= self.clean_every:
            try:
                report.metadata_cleanup = asdict(clean_airflow_records(now - self.metadata_max_age, now=now))
                self.last_cleaned = now
            except Exception as exc:
                log.exception("maintenance: cleaning Airflow's records failed")
                report.errors.append(f"metadata cleanup: {type(exc).__name__}")
        try:
            with LedgerWriter.connect(governance, ledger_keyring(), application_name="governance-maintenance") as writer:
                # Runs still ending while this pass reads are picked up by the next one: the
                # watermark only moves to the start of this pass.
                report.runs_reconciled, report.ledger_rows_reconciled = reconcile_ended_runs(
                    writer, ended_after=self.ended_after
                )
                self.ended_after = now - timedelta(seconds=5)
                anchor = anchor_if_due(writer, s3_client(OBJECTS_CONN_ID), anchor_bucket(), directory=anchor_dir(),
                                       interval=self.anchor_interval, now=now, latest=self.latest_anchor)  # fmt: skip
                if anchor is not None:
                    report.anchored_seq = anchor.seq
                    self.latest_anchor = anchor
        except Exception as exc:
            log.exception("maintenance: ledger reconciliation or anchoring failed")
            report.errors.append(f"ledger: {type(exc).__name__}")
        return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one pass, then exit (non-zero if a step failed)")
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY_SECONDS, metavar="SECONDS",
                        help=f"seconds between passes (default {DEFAULT_EVERY_SECONDS})")  # fmt: skip
    parser.add_argument("--anchor-interval", default=DEFAULT_ANCHOR_INTERVAL, metavar="AGE",
                        help="anchor the ledger head when the newest anchor is older than this and rows were added "
                             f"(default {DEFAULT_ANCHOR_INTERVAL}; 0s: every pass that added rows)")  # fmt: skip
    parser.add_argument("--scrub-min-age", default="0s", metavar="AGE",
                        help="scrub runs that ended at least this long ago (default 0s: as soon as they end)")  # fmt: skip
    parser.add_argument("--lookback", default=DEFAULT_LOOKBACK, metavar="AGE",
                        help=f"the first pass reconciles runs that ended this far back (default {DEFAULT_LOOKBACK})")  # fmt: skip
    parser.add_argument("--metadata-max-age", default=DEFAULT_METADATA_MAX_AGE, metavar="AGE",
                        help="Airflow's run, task, XCom and action-log records, task log files and lineage event files "
                             f"older than this are removed (default {DEFAULT_METADATA_MAX_AGE})")  # fmt: skip
    parser.add_argument("--clean-every", default=DEFAULT_CLEAN_EVERY, metavar="AGE",
                        help=f"clean those at most this often (default {DEFAULT_CLEAN_EVERY}; the first pass always does)")  # fmt: skip
    parser.add_argument("--heartbeat", type=Path, default=None,
                        help="touch this file after every pass (the compose healthcheck reads its age)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        anchor_interval = parse_age(args.anchor_interval)
        scrub_min_age = parse_age(args.scrub_min_age)
        lookback = parse_age(args.lookback)
        metadata_max_age = parse_age(args.metadata_max_age)
        clean_every = parse_age(args.clean_every)
    except ValueError as exc:
        print(f"maintain: {exc}", file=sys.stderr)
        return 2
    if args.every <= 0:
        print("maintain: --every must be a positive number of seconds", file=sys.stderr)
        return 2
    if metadata_max_age < timedelta(days=1):
        print("maintain: --metadata-max-age must be at least 1d (younger records may belong to running work)", file=sys.stderr)
        return 2
    maintainer = Maintainer(anchor_interval, scrub_min_age, ended_after=datetime.now(UTC) - lookback,
                            metadata_max_age=metadata_max_age, clean_every=clean_every)  # fmt: skip
    while True:
        report = maintainer.run_once()
        print(json.dumps({**asdict(report), "at": datetime.now(UTC).isoformat(timespec="seconds")}, sort_keys=True),
              flush=True)  # fmt: skip
        if args.heartbeat is not None and report.ok:
            args.heartbeat.parent.mkdir(parents=True, exist_ok=True)
            args.heartbeat.touch()
        if args.once:
            return 0 if report.ok else 1
        time.sleep(args.every)
