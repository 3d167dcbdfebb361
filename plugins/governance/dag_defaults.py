"""What every governance DAG shares: owner, retries with backoff, the failure notifier, tags.

DAG files import only this module and ``airflow.sdk`` at parse time; task bodies import the
heavy modules they need.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task

from governance.notifier import GovernanceFailureNotifier

OWNER = "privacy-engineering"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
GOVERNANCE_TAG = "governance"


# The last task of every request workflow (governance.workflows.outcome.REQUEST_OUTCOME_TASK_ID,
# repeated so DAG files import nothing heavy; a test keeps them equal).
REQUEST_OUTCOME_TASK_ID = "request_outcome"


def approval_assignees() -> list[Any] | None:
    """``assigned_users`` of every approval step: ``[governance] approvers``, or None (anyone
    Airflow lets answer); see :mod:`governance.approvers`."""
    from governance.approvers import configured_approvers

    return list(configured_approvers() or []) or None


def default_args(*, alert_only_from: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Task defaults for every DAG: retried with exponential backoff, failures alerted.

    ``GOVERNANCE_RETRY_DELAY_SECONDS`` (default 30) sets the first retry's delay: deployments
    with slow-recovering processors raise it; the test suite lowers it. ``alert_only_from`` names
    the one task whose failure alerts (request workflows: ``request_outcome``, which fails once per
    unserved request and names the failed steps), so one failed request is one alert.
    """
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(seconds=float(os.environ.get("GOVERNANCE_RETRY_DELAY_SECONDS", "30"))),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        # The last resort for work that is slow rather than stuck (every call inside a task has its
        # own, much shorter deadline: governance.deadlines). Tasks with more work set their own.
        "execution_timeout": timedelta(hours=2),
        "on_failure_callback": [GovernanceFailureNotifier(only_task_id=alert_only_from)],
    }
    args.update(overrides)
    return args


def request_outcome(*, order: tuple[str, ...]) -> Any:
    """The request workflow's last task: fails the run when the request was not served.

    It raises AirflowFailException (never retried); its retries cover only its own reads.
    Put it downstream of every other task (``[...] >> request_outcome(order=...)``); ``order`` is the
    run order of the tasks, used to name the first failed step first. See
    ``governance.workflows.outcome``.
    """

    @task(task_id=REQUEST_OUTCOME_TASK_ID, trigger_rule=TriggerRule.ALL_DONE)
    def outcome() -> dict[str, Any]:
        from governance.workflows.outcome import check_request_outcome

        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        try:
            states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id], task_ids=list(order))
            run_states = dict(states.get(dag_run.run_id, {}))
        except Exception:  # without the states, the recorded outcome alone decides
            run_states = {}
        return check_request_outcome(
            ti.xcom_pull(task_ids="close_request"),
            handle=ti.xcom_pull(task_ids="open_request"),
            states=run_states,
            order=order,
        )

    return outcome()
