"""The Airflow listener behind lineage isolation and the audit ledger.

Registered by ``plugins/governance_lineage_plugin.py``, so every DAG gets it without code:

* ``on_task_instance_running`` (first among listeners): the task starts with an empty hook
  lineage collector, so datasets of an earlier task in the same process (``dag.test()``,
  ``airflow tasks test``) never reach this task's events or ledger row.
* ``on_task_instance_success|failed|skipped`` (first among listeners, in the task's process):
  promote hook SQL to table datasets, then append the ledger row for this try's final state
  (``up_for_retry`` when a retry follows). Running first means the OpenLineage listener, which
  runs next, reports the same datasets.
* ``on_dag_run_success|failed`` (in the scheduler, which may read Airflow's database): reconcile
  every task instance's final state (skipped and upstream_failed are set there without the task
  running; a crashed worker never called its listener) and anchor the ledger head in the object
  store.

A listener must never fail a task or the scheduler loop, and pluggy stops calling the remaining
listeners when one raises: every hook here logs and swallows its errors. A lost task-side write
is repaired by the reconciliation at the end of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _state_name(state: Any) -> str:
    """'success', 'up_for_retry', ... for any of Airflow's state enums (core or task SDK) or None."""
    return str(getattr(state, "value", state) or "")


def _entry_for_running_task(task_instance: Any, state: str) -> Any:
    """The ledger entry for a task instance that ran in this process (a RuntimeTaskInstance)."""
    from governance.ledger import LedgerEntry, request_id_from_conf
    from governance.lineage import collected_task_lineage

    context = task_instance.get_template_context()
    lineage = collected_task_lineage(context.get("task"))
    dag_run = context.get("dag_run")
    return LedgerEntry(
        dag_id=task_instance.dag_id,
        run_id=task_instance.run_id,
        task_id=task_instance.task_id,
        map_index=int(task_instance.map_index if task_instance.map_index is not None else -1),
        try_number=int(task_instance.try_number or 0),
        state=state,
        started_at=task_instance.start_date,
        ended_at=getattr(task_instance, "end_date", None) or datetime.now(UTC),
        inputs=lineage.inputs,
        outputs=lineage.outputs,
        rows_affected=lineage.rows_affected,
        request_id=request_id_from_conf(getattr(dag_run, "conf", None)),
        source="listener",
    )


def _entry_for_db_task_instance(ti: Any, state: str, conf: Any, source: str) -> Any:
    """The ledger entry for a task instance known only from Airflow's database (nothing ran here)."""
    from governance.ledger import LedgerEntry, request_id_from_conf

    return LedgerEntry(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=int(ti.map_index if ti.map_index is not None else -1),
        try_number=int(ti.try_number or 0),
        state=state,
        started_at=ti.start_date,
        ended_at=ti.end_date,
        request_id=request_id_from_conf(conf),
        source=source,
    )


def _is_configuration_error(exc: BaseException) -> bool:
    from governance.connections import ConnectionNotConfigured
    from governance.crypto import KeyMaterialError

    return isinstance(exc, (ConnectionNotConfigured, KeyMaterialError))


def _append(entries: Iterable[Any]) -> None:
    from governance.config import GOVERNANCE_CONN_ID
    from governance.db import conninfo_for
    from governance.ledger import LedgerWriter, ledger_keyring

    with LedgerWriter.connect(conninfo_for(GOVERNANCE_CONN_ID), ledger_keyring()) as writer:
        writer.append(entries)


def _dag_run_facts(dag_run: Any) -> tuple[list[Any], list[Any]]:
    """(current final states, earlier tries) of every task instance of a finished run."""
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    from governance.ledger import LEDGER_STATES

    session = object_session(dag_run)
    tis = dag_run.get_task_instances(session=session) if session is not None else dag_run.get_task_instances()
    final = [_entry_for_db_task_instance(ti, _state_name(ti.state), dag_run.conf, "reconciled") for ti in tis
             if _state_name(ti.state) in LEDGER_STATES]  # fmt: skip
    history_query = select(TaskInstanceHistory).where(
        TaskInstanceHistory.dag_id == dag_run.dag_id, TaskInstanceHistory.run_id == dag_run.run_id
    )
    if session is not None:
        history = list(session.scalars(history_query))
    else:
        from airflow.utils.session import create_session

        with create_session() as own:
            history = list(own.scalars(history_query))
    # An archived try that was retried is stored as failed; it ended up_for_retry.
    earlier = [
        _entry_for_db_task_instance(h, "up_for_retry" if _state_name(h.state) == "failed" else _state_name(h.state),
                                    dag_run.conf, "reconciled")
        for h in history
        if _state_name(h.state) in LEDGER_STATES
    ]  # fmt: skip
    return final, earlier


def reconcile_and_anchor(dag_run: Any) -> None:
    """End of a run: record every final state the listener did not, then anchor the head."""
    from governance.config import GOVERNANCE_CONN_ID, OBJECTS_CONN_ID
    from governance.db import conninfo_for
    from governance.ledger import LedgerWriter, anchor_bucket, ledger_keyring, reconcile_run, write_anchor
    from governance.objectstore import s3_client

    final, earlier = _dag_run_facts(dag_run)
    with LedgerWriter.connect(conninfo_for(GOVERNANCE_CONN_ID), ledger_keyring()) as writer:
        written = reconcile_run(writer, dag_id=dag_run.dag_id, run_id=dag_run.run_id, final_states=final,
                                earlier_tries=earlier)  # fmt: skip
        anchor = write_anchor(writer, s3_client(OBJECTS_CONN_ID), anchor_bucket())
    log.info(
        "audit ledger: %d row(s) reconciled for %s/%s; head anchored at seq %s",
        len(written), dag_run.dag_id, dag_run.run_id, anchor.seq if anchor else None,
    )  # fmt: skip


class GovernanceLedgerListener:
    """Airflow listener: per-task lineage isolation, ledger rows, end-of-run reconciliation."""

    @hookimpl(tryfirst=True)
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        try:
            from governance.lineage import reset_collected_lineage

            reset_collected_lineage()
        except Exception:
            log.exception("governance listener: could not reset the hook lineage collector")

    def _record(self, task_instance: Any, state: str) -> None:
        try:
            if hasattr(task_instance, "get_template_context"):
                entry = _entry_for_running_task(task_instance, state)
            else:  # a state changed in the UI/API: the DB model, nothing ran in this process
                dag_run = getattr(task_instance, "dag_run", None)
                entry = _entry_for_db_task_instance(task_instance, state, getattr(dag_run, "conf", None), "listener")
            _append([entry])
        except Exception as exc:
            log.error(
                "governance listener: ledger row for %s.%s not written (%s: %s); the end-of-run reconciliation "
                "will add it", getattr(task_instance, "dag_id", "?"), getattr(task_instance, "task_id", "?"),
                type(exc).__name__, exc, exc_info=not _is_configuration_error(exc),
            )  # fmt: skip

    @hookimpl(tryfirst=True)
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._record(task_instance, "success")

    @hookimpl(tryfirst=True)
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        retrying = _state_name(getattr(task_instance, "state", None)) == "up_for_retry"
        self._record(task_instance, "up_for_retry" if retrying else "failed")

    @hookimpl(tryfirst=True)
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self._record(task_instance, "skipped")

    def _finish(self, dag_run: Any) -> None:
        try:
            reconcile_and_anchor(dag_run)
        except Exception as exc:
            log.error(
                "governance listener: reconciliation/anchor for %s/%s failed (%s: %s); the next run's covers it",
                getattr(dag_run, "dag_id", "?"), getattr(dag_run, "run_id", "?"), type(exc).__name__, exc,
                exc_info=not _is_configuration_error(exc),
            )  # fmt: skip

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        self._finish(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        self._finish(dag_run)


ledger_listener = GovernanceLedgerListener()
