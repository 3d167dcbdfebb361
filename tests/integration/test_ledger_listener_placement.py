"""Where the ledger listener works: in the task's process and the API server, never in the scheduler.

Airflow calls ``on_task_instance_failed`` inside the scheduler loop when the executor reports a task
dead that never reported itself (``TaskInstance.handle_failure``). The listener must not open a
database connection or read keys there; the maintenance pass records that state when the run ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import psycopg
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

from governance.ledger_listener import GovernanceLedgerListener


def _dead_task(task_id: str) -> SimpleNamespace:
    """A task instance as the scheduler holds it (the database model: nothing ran in this process)."""
    return SimpleNamespace(
        dag_id="ledger_probe", run_id="manual__1", task_id=task_id, map_index=-1, try_number=1, state="failed",
        start_date=datetime(2026, 3, 1, 9, tzinfo=UTC), end_date=datetime(2026, 3, 1, 9, 1, tzinfo=UTC),
        dag_run=SimpleNamespace(conf={}),
    )  # fmt: skip


def _recorded(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT task_id, state FROM governance.audit_ledger ORDER BY seq")]


def test_a_task_failed_by_the_scheduler_is_not_written_from_the_scheduler_process(ledger_db: str) -> None:
    in_scheduler = GovernanceLedgerListener()
    in_scheduler.on_starting(component=SimpleNamespace(job_type=SchedulerJobRunner.job_type))
    in_scheduler.on_task_instance_failed(previous_state="running", task_instance=_dead_task("killed"), error=None)
    assert in_scheduler.in_scheduler()
    assert _recorded(ledger_db) == []


def test_a_state_set_through_the_api_server_is_still_written_at_once(ledger_db: str) -> None:
    in_api_server = GovernanceLedgerListener()  # the API server runs no Job: on_starting is not called
    in_api_server.on_task_instance_failed(previous_state="running", task_instance=_dead_task("marked_failed"), error=None)
    assert not in_api_server.in_scheduler()
    assert _recorded(ledger_db) == [("marked_failed", "failed")]
