"""
### dsr_erasure

Erases one person across every system the data map names (privacy policy 5.3: deletion rights,
subject to legal retention), and proves it:

1. **open_request**: the form's e-mail and/or phone (or an existing `request_id`) is validated
   before anything is read; a form trigger records its own request.
2. **plan_erasure**: the person's rows are resolved in one snapshot from the data map, narrowed to
   one person, legal holds and the 7-year tax exception applied, and the safety guard run (more
   than 0.1% of a table, or several people behind one identity, is refused unless overridden).
   The plan is stored before anything changes. **A dry run (the default) stops here**: its
   result is the plan, in counts.
3. **approve_erasure**: privacy staff verify the person and approve the plan in the Airflow UI
   (Required actions), unless the request was approved at intake (**already_approved**).
4. **execute_database**, **delete_objects**, **erase_processors**: set-based statements keyed by
   the planned primary keys, one transaction per database; every version of every object;
   the processors' erase calls. Progress is recorded per step: a re-run continues.
5. **verify_erasure**: the person is looked up again everywhere (Great Expectations checks the
   findings); anything left that the plan did not keep fails the run and is named.
6. **record_suppression**: keyed hashes on the suppression list, for re-erasure after a restore
   (`python -m governance reapply-suppressions`).
7. **issue_certificate** and **close_request** run after failures too: the certificate (JSON and
   HTML, keyed hashes only) and the request's outcome.
8. **request_outcome** fails the run when the request was not served (a step failed, or the
   outcome is failed), naming the failed steps: a green run is a served request (or a dry run),
   and a failed request alerts once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

from governance.dag_defaults import (
    GOVERNANCE_TAG,
    REQUEST_OUTCOME_TASK_ID,
    START_DATE,
    approval_assignees,
    default_args,
    request_outcome,
)
from governance.dag_params import subject_params

# How the identity was verified, in the approver's words (codes are what the request records; a
# test keeps them in step with governance.workflows.dsr_erasure.VERIFICATION_METHODS). No default:
# the approver chooses, so one click never records a method nobody used (approving with none
# chosen, or with "not verified", changes nothing and says so).
VERIFICATION_CHOICES = {
    "account_login": "They asked while signed in to their aircalls account",
    "phone_callback": "We called back the phone number we hold for them",
    "email_link": "They confirmed through a link sent to the e-mail address we hold",
    "id_document": "We checked an identity document",
    "business_client_attestation": "The business client vouched for their caller",
    "not_verified": "Not verified (choose Reject)",
}
PLAN = "ti.xcom_pull(task_ids='plan_erasure')"
RUN_ORDER = ("open_request", "plan_erasure", "choose_path", "approve_erasure", "already_approved", "execute_database",
             "delete_objects", "erase_processors", "verify_erasure", "record_suppression", "issue_certificate",
             "close_request")  # fmt: skip


@dag(
    dag_id="dsr_erasure",
    description="Erase one person everywhere the data map reaches, after a dry run and an approval, with a certificate",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=8,
    default_args=default_args(alert_only_from=REQUEST_OUTCOME_TASK_ID),
    params={
        **subject_params(kind="erasure"),
        "dry_run": Param(
            True,
            type="boolean",
            title="Dry run",
            description="Compute and store the plan, change nothing. Turn off to erase (after approval).",
            section="Run",
        ),
        "override_guard": Param(
            False,
            type="boolean",
            title="Override the safety guard",
            description=(
                "Erase even when the plan touches more than the allowed share of a table or matches several "
                "people with one identity. Only after reviewing a dry run."
            ),
            section="Run",
        ),
    },
    tags=[GOVERNANCE_TAG, "privacy-request"],
    doc_md=__doc__,
)
def dsr_erasure() -> None:
    @task
    def open_request() -> dict[str, Any]:
        from governance.workflows.dsr_erasure import open_erasure_request

        context = get_current_context()
        dag_run = context["dag_run"]
        return open_erasure_request(
            context["params"], run_id=dag_run.run_id, received_at=dag_run.logical_date or dag_run.run_after
        )

    @task
    def plan_erasure(handle: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_erasure import plan_erasure as plan

        context = get_current_context()
        dag_run = context["dag_run"]
        return plan(
            handle,
            dry_run=bool(context["params"].get("dry_run", True)),
            override=bool(context["params"].get("override_guard", False)),
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            as_of=dag_run.logical_date or dag_run.run_after,
        )

    @task.branch
    def choose_path(summary: dict[str, Any]) -> list[str]:
        from governance.workflows.dsr_erasure import choose_path as choose

        return choose(summary)

    approve_erasure = ApprovalOperator(
        task_id="approve_erasure",
        subject="Erasure request {{ " + PLAN + "['request_id'] }}: verify the person, then approve the plan",
        body="{{ " + PLAN + "['approval_markdown'] }}",
        params={
            "verification_method": Param(
                None,
                type=["null", "string"],
                enum=[None, *VERIFICATION_CHOICES],
                values_display=VERIFICATION_CHOICES,
                title="How did you verify the person's identity?",
                description="Recorded on the request and in the certificate. Approve only once it was verified.",
            )
        },
        response_timeout=timedelta(days=14),
        assigned_users=approval_assignees(),  # [governance] approvers; None: whoever Airflow lets answer
        # Waiting for a person is not work: the task may wait as long as the answer may take.
        execution_timeout=timedelta(days=14) + timedelta(days=1),
    )

    @task
    def already_approved() -> None:
        """The request was verified and approved at intake (or by an earlier run)."""

    # Runs after the approval or its bypass, whichever the branch chose (the plan is pulled, not
    # passed, so that a dry run, where both are skipped, skips this too).
    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def execute_database() -> dict[str, Any]:
        from governance.workflows.dsr_erasure import execute_database as execute

        context = get_current_context()
        summary = context["ti"].xcom_pull(task_ids="plan_erasure")
        approval = context["ti"].xcom_pull(task_ids="approve_erasure")
        dag_run = context["dag_run"]
        return execute(summary, approval=approval, run_id=dag_run.run_id,
                       triggered_by=getattr(dag_run, "triggering_user_name", None))  # fmt: skip

    @task
    def delete_objects(summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_erasure import delete_objects as delete

        return delete(summary)

    @task
    def erase_processors(summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_erasure import erase_processors as erase

        return erase(summary)

    @task
    def verify_erasure(summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_erasure import verify_erasure as verify

        return verify(summary)

    @task
    def record_suppression(summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_erasure import record_suppression as record

        return record(summary)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def issue_certificate() -> dict[str, Any] | None:
        from governance.workflows.dsr_erasure import issue_certificate as issue

        context = get_current_context()
        dag_run = context["dag_run"]
        handle = context["ti"].xcom_pull(task_ids="open_request")
        return issue(handle, dag_id=dag_run.dag_id, run_id=dag_run.run_id)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def close_request() -> dict[str, Any]:
        from governance.workflows.dsr_erasure import close_erasure_request

        context = get_current_context()
        handle = context["ti"].xcom_pull(task_ids="open_request")
        return close_erasure_request(handle, run_id=context["dag_run"].run_id)

    handle = open_request()
    summary = plan_erasure(handle)
    path = choose_path(summary)
    executed = execute_database()
    path >> [approve_erasure, already_approved()] >> executed
    verified = verify_erasure(summary)
    executed >> delete_objects(summary) >> erase_processors(summary) >> verified
    suppressed = record_suppression(summary)
    executed >> suppressed
    certificate = issue_certificate()
    [handle, verified, suppressed] >> certificate
    closed = close_request()
    certificate >> closed
    # The run fails when the request was not served (any step failed, or the outcome says so).
    outcome = request_outcome(order=RUN_ORDER)
    [handle, summary, path, approve_erasure, executed, verified, suppressed, certificate, closed] >> outcome


dsr_erasure()
