"""The last task of a request workflow decides the run's state from the request's outcome."""

from __future__ import annotations

import pytest

from governance.dag_defaults import REQUEST_OUTCOME_TASK_ID as DAG_SIDE_ID
from governance.notifier import failure_alert_from_context
from governance.workflows.outcome import REQUEST_OUTCOME_TASK_ID, RequestNotServed, check_request_outcome

HANDLE = {"request_id": "era-20261203-0123456789ab"}


def test_dag_files_and_the_workflow_name_the_same_last_task() -> None:
    assert DAG_SIDE_ID == REQUEST_OUTCOME_TASK_ID


@pytest.mark.parametrize(
    "closed",
    [{"status": "completed", "served": True}, {"outcome": "dry_run", "served": True}, {"status": "rejected"}],
)
def test_a_served_request_with_no_failed_step_passes(closed: dict[str, object]) -> None:
    result = check_request_outcome(closed, handle=HANDLE, states={"open_request": "success"})
    assert result["request_id"] == HANDLE["request_id"]


def test_a_failed_step_fails_the_run_naming_the_first_failed_step_first_even_when_the_outcome_was_written() -> None:
    states = {"verify_erasure": "failed", "erase_processors": "failed", "issue_certificate": "upstream_failed"}
    with pytest.raises(RequestNotServed) as raised:
        check_request_outcome({"status": "failed", "served": False, "detail": "stopped while executing"},
                              handle=HANDLE, states=states, order=("erase_processors", "verify_erasure"))  # fmt: skip
    message = str(raised.value)
    assert message.startswith(f"request {HANDLE['request_id']} was not served: it ended failed: stopped while")
    assert "Failed: erase_processors, verify_erasure." in message
    assert raised.value.alert_fields == {"request_id": HANDLE["request_id"],
                                         "failed_tasks": ["erase_processors", "verify_erasure"]}  # fmt: skip


def test_an_outcome_that_does_not_serve_the_request_fails_the_run_without_any_failed_task() -> None:
    with pytest.raises(RequestNotServed, match="it ended rejected: refused before anything was collected"):
        check_request_outcome({"status": "rejected", "served": False, "detail": "refused before anything was collected"},
                              handle=HANDLE, states={})  # fmt: skip


def test_a_refused_form_and_a_lost_outcome_fail_the_run_and_say_so() -> None:
    with pytest.raises(RequestNotServed, match="this run served no request: the run configuration was refused"):
        check_request_outcome({"closed": False, "served": False}, handle=None, states={"open_request": "failed"})
    with pytest.raises(RequestNotServed, match="outcome could not be recorded"):
        check_request_outcome(None, handle=HANDLE, states={"close_request": "failed"})


def test_the_alert_of_an_unserved_request_carries_its_id_and_failed_steps_from_the_exception_only() -> None:
    class Ti:
        dag_id, run_id, task_id, try_number = "dsr_erasure", "manual__1", REQUEST_OUTCOME_TASK_ID, 1

    class DagRun:
        conf = {"email": "someone@example.com"}  # a form-triggered run: no request id in conf

    exception = RequestNotServed("x", request_id=HANDLE["request_id"], failed_tasks=["erase_processors", "bad id!"])
    alert = failure_alert_from_context({"ti": Ti(), "dag_run": DagRun(), "exception": exception})
    assert alert.request_id == HANDLE["request_id"] and alert.exception_type == "RequestNotServed"
    assert alert.log_fields()["failed_tasks"] == ["erase_processors"], "only task-id shaped names are forwarded"
    assert "someone@example.com" not in str(alert.log_fields())
