"""The Airflow listener behind lineage isolation and the audit ledger.

Registered by ``plugins/governance_lineage_plugin.py``, so every DAG gets it without code:

* ``on_task_instance_running`` (first among listeners): the task starts with an empty hook
  lineage collector, so datasets of an earlier task in the same process (``dag.test()``,
  ``airflow tasks test``) never reach this task's events or ledger row.
* ``on_task_instance_success|failed|skipped`` (first among listeners, in the task's process):
  promote hook SQL to table datasets, then append the ledger row for this try's final state
  (``up_for_retry`` when a retry follows). Running first means the OpenLineage listener, which
  runs next, reports the same datasets.

Nothing runs in the scheduler: reconciling the states the scheduler sets without running the
task (skipped, upstream_failed; a crashed worker never called its listener) and anchoring the
ledger head (every 5 minutes when rows were added) are done beside it by
``python -m governance maintain`` (:mod:`governance.maintenance`), so the ledger can never slow the
scheduler loop. The one task hook Airflow calls inside the scheduler (``on_task_instance_failed``,
when the executor reports a task dead that never reported itself) writes nothing there: the
listener notes at ``on_starting`` that it lives in a scheduler, and the maintenance pass adds the
row when the run ends. The listener implements no DAG-run hooks.

A listener must never fail a task or the scheduler loop, and pluggy stops calling the remaining
listeners when one raises: every hook here logs and swallows its errors. A lost task-side write
is repaired by the next maintenance pass after the run ends.
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


def _is_scheduler(component: Any) -> bool:
    return str(getattr(component, "job_type", "") or "") == "SchedulerJob"


class GovernanceLedgerListener:
    """Airflow listener: per-task lineage isolation and a ledger row for every task final state."""

    def __init__(self) -> None:
        # The component this process runs (a Job in the scheduler, triggerer, dag processor); its
        # job_type is set after on_starting, so it is read when a hook fires.
        self._component: Any = None

    @hookimpl
    def on_starting(self, component: Any) -> None:
        self._component = component

    def in_scheduler(self) -> bool:
        """Whether this process is Airflow's scheduler (where the ledger must not do work)."""
        return _is_scheduler(self._component)

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
            elif self.in_scheduler():  # never in the scheduler loop: maintenance reconciles it
                log.debug("governance listener: %s.%s left to the maintenance pass",
                          getattr(task_instance, "dag_id", "?"), getattr(task_instance, "task_id", "?"))  # fmt: skip
                return
            else:  # a state changed in the UI/API: the DB model, nothing ran in this process
                from governance.ledger import entry_from_task_instance

                dag_run = getattr(task_instance, "dag_run", None)
                entry = entry_from_task_instance(task_instance, state, getattr(dag_run, "conf", None), "listener")
            _append([entry])
        except Exception as exc:
            log.error(
                "governance listener: ledger row for %s.%s not written (%s: %s); the next maintenance pass "
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


ledger_listener = GovernanceLedgerListener()
