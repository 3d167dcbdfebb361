"""A request workflow's run state tells the truth: its last task fails the run when the request
was not served.

Every request DAG ends with ``request_outcome`` (trigger rule ``all_done``, downstream of every
other task): the ``watcher`` of Airflow's own system tests, made to read the request's outcome as
well. ``close_request`` still records the outcome whatever happened; ``request_outcome`` then
fails when any task failed or the recorded outcome is not one that serves the request, so the DAG
run ends ``failed`` and the failure notifier fires once for the run, with the request id, the
failed steps and the outcome's reason. A successful run means the request was served: completed,
rejected with a reason (the person is told why), or a dry run that changed nothing by design.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

REQUEST_OUTCOME_TASK_ID = "request_outcome"
# Outcomes that answer the request (close_request's "status" or "outcome").
SERVED = frozenset({"completed", "rejected", "dry_run"})


class RequestNotServed(AirflowFailException):
    """The request this run worked on was not served; the run must end failed (no retry)."""

    def __init__(self, message: str, *, request_id: str | None, failed_tasks: Sequence[str]) -> None:
        super().__init__(message)
        # Ids and task names only: what the failure notifier may forward (governance.notifier).
        self.alert_fields: dict[str, Any] = {"request_id": request_id, "failed_tasks": list(failed_tasks)}


def failed_tasks(states: Mapping[str, Any], order: Sequence[str] = ()) -> list[str]:
    """Tasks that failed themselves (not ``upstream_failed``), in ``order`` first, then by name."""
    failed = {task_id for task_id, state in states.items() if str(state or "").lower().rsplit(".", 1)[-1] == "failed"}
    ordered = [task_id for task_id in order if task_id in failed]
    return ordered + sorted(failed - set(ordered))


def check_request_outcome(
    closed: Mapping[str, Any] | None,
    *,
    handle: Mapping[str, Any] | None,
    states: Mapping[str, Any],
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """Return the served outcome, or raise ``RequestNotServed`` saying what stopped it.

    ``closed`` is what close_request returned (None when it failed; its ``served`` flag, when
    present, overrides the status: an export refused for a missing identity is ``rejected`` but
    not served, so staff see it), ``handle`` what
    open_request returned (None when the form was refused), ``states`` the run's task states.
    """
    request_id = str(handle["request_id"]) if handle else None
    failed = [task_id for task_id in failed_tasks(states, order) if task_id != REQUEST_OUTCOME_TASK_ID]
    outcome = None if closed is None else str(closed.get("status") or closed.get("outcome") or "")
    served = closed is not None and bool(closed["served"] if "served" in closed else outcome in SERVED)
    if served and not failed:
        return {"request_id": request_id, "outcome": outcome}
    if handle is None:
        reason = "the run configuration was refused before a request was opened (see open_request's log)"
    elif closed is None:
        reason = "its outcome could not be recorded (close_request failed)"
    else:
        detail = str(closed.get("detail") or "")
        reason = f"it ended {outcome or 'without an outcome'}" + (f": {detail}" if detail else "")
    steps = f" Failed: {', '.join(failed)}." if failed else ""
    head = f"request {request_id} was not served" if request_id else "this run served no request"
    again = " A new run with the request id resumes it." if request_id else ""
    raise RequestNotServed(
        f"{head}: {reason}.{steps}{again}",
        request_id=request_id,
        failed_tasks=failed,
    )
