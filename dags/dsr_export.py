"""
### dsr_export: a copy of a person's data (privacy policy 5.1, access and portability)

Privacy staff trigger this DAG from its form (or the intake workflow does, with a request id).
It gathers everything the data map says we hold about the person, in every database, the object
store and every processor, into **one encrypted ZIP**, checks it, and records a download link
on the request.

**Form.** Either an existing *request id*, or the person's *e-mail* and/or *phone* (a request is
then recorded for them, so the export is tracked to its 30-day deadline like any other). A
*business client id* limits the export to what was collected for that business (a business
asking on behalf of its caller). *Formats* chooses JSON, CSV and/or HTML for the table data;
`index.html` (a plain-words summary) and `manifest.json` (checksums) are always included.

**Steps.**
1. `open_request` checks the form before anything is read and loads or records the request.
2. An **unverified** request waits at `verify_identity` (Airflow UI, *Required actions*) until
   a privacy officer says how the person's identity was verified, or rejects the request
   (GDPR Art. 12(6)). Never paste an identity into the answer. `record_verification` stores it.
3. `build_bundle` resolves the person through the data map in one database snapshot and
   streams the rows, recordings, transcripts and processor records into the ZIP, encrypted with
   age (passphrase) on its way to the exports prefix (server-side encrypted, staging key).
   Rows of someone who shares an identity with the person (a household phone) are left out.
   When the identities given fit more than one person equally well (two callers of one business
   sharing a phone, no e-mail to tell them apart), nothing is collected: the request is
   rejected, with a message saying to record a new request with the identity that tells them
   apart.
4. `check_bundle` (Great Expectations) reads the bundle back: row counts equal the source
   counts of the same snapshot, every row and file belongs to the person, checksums match.
   If it fails, the run fails and no link is issued.
5. `publish_bundle` moves the checked bundle to the request's folder.
6. `close_request` always runs: it removes staging objects and sets the request's outcome, and
   `request_outcome` (the last task) fails the run when the request was not served.
   On success the download link (valid 7 days by default) is stored in
   `governance.privacy_requests.result_uri`, and nowhere else.

**The passphrase** is per request: `python -m governance export-passphrase REQUEST_ID` shows it
to privacy staff, who give it to the person by phone or SMS, separately from the e-mail with
the link. The person opens the bundle with `age -d` (or `rage -d`) and the passphrase.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, TriggerRule, chain, dag, get_current_context, task

from governance.dag_defaults import (
    GOVERNANCE_TAG,
    REQUEST_OUTCOME_TASK_ID,
    START_DATE,
    approval_assignees,
    default_args,
    request_outcome,
)
from governance.dag_params import subject_params

# Kept here (not imported from the workflow module) so parsing stays wiring only; a test checks
# they match governance.workflows.dsr_export.HITL_OPTIONS.
VERIFICATION_OPTIONS = [
    "Verified: signed in to their aircalls account",
    "Verified: called back on the number we hold",
    "Verified: replied from the e-mail address we hold",
    "Verified: identity document checked",
    "Verified: by the business client who asked for them",
    "Reject: the identity could not be verified",
]
RUN_ORDER = ("open_request", "route_verification", "verify_identity", "record_verification", "build_bundle",
             "check_bundle", "publish_bundle", "close_request")  # fmt: skip
REQUEST_ID = "{{ ti.xcom_pull(task_ids='open_request')['request_id'] }}"


@dag(
    dag_id="dsr_export",
    description="Give one person a copy of their data: an encrypted bundle from every system, checked, with a link",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=4,
    default_args=default_args(alert_only_from=REQUEST_OUTCOME_TASK_ID),
    tags=[GOVERNANCE_TAG, "privacy-request", "export"],
    doc_md=__doc__,
    params={
        **subject_params(kind="export"),
        "formats": Param(
            ["json", "csv"],
            type="array",
            items={"type": "string", "enum": ["json", "csv", "html"]},
            uniqueItems=True,
            minItems=1,
            examples=["json", "csv", "html"],
            values_display={"json": "JSON", "csv": "CSV (spreadsheets)", "html": "HTML (web browser)"},
            title="Formats of the data files",
            description="How each table's rows are written. index.html and manifest.json are always included.",
            section="Bundle",
        ),
        "link_valid_days": Param(
            7,
            type="integer",
            minimum=1,
            maximum=7,
            title="Download link valid for (days)",
            description="The link stored on the request expires after this many days (at most 7).",
            section="Bundle",
        ),
    },
)
def dsr_export() -> None:
    @task
    def open_request() -> dict[str, Any]:
        from governance.workflows.dsr_export import open_export_request

        context = get_current_context()
        dag_run = context["dag_run"]
        return open_export_request(
            context["params"], run_id=dag_run.run_id, received_at=dag_run.logical_date or dag_run.run_after
        )

    @task.branch
    def route_verification(handle: dict[str, Any]) -> str:
        from governance.workflows.dsr_export import verification_route

        return verification_route(handle)

    verify_identity = HITLOperator(
        task_id="verify_identity",
        subject=f"Verify the identity behind export request {REQUEST_ID}",
        body=(
            f"Export request **{REQUEST_ID}** is not verified yet. Check the person's identity against "
            "what we hold (for example call back the number on their account, or ask them to reply from "
            "the address we hold), then choose how you verified it, or reject the request. Nothing is "
            "collected before you answer. Do not type the person's e-mail, phone or name here."
        ),
        options=VERIFICATION_OPTIONS,
        response_timeout=timedelta(days=7),
        assigned_users=approval_assignees(),  # [governance] approvers; None: whoever Airflow lets answer
        # Waiting for a person is not work: the task may wait as long as the answer may take.
        execution_timeout=timedelta(days=7) + timedelta(days=1),
    )

    @task(task_id="record_verification", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def record_verification(handle: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_export import HITL_TASK_ID
        from governance.workflows.dsr_export import record_verification as record

        return record(handle, get_current_context()["ti"].xcom_pull(task_ids=HITL_TASK_ID))

    @task(execution_timeout=timedelta(hours=6))
    def build_bundle(handle: dict[str, Any], _verification: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_export import build_bundle as build

        context = get_current_context()
        return build(handle, context["params"], run_id=context["dag_run"].run_id)

    @task
    def check_bundle(handle: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_export import check_bundle as check

        return check(handle, summary, run_id=get_current_context()["dag_run"].run_id)

    @task
    def publish_bundle(handle: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.dsr_export import publish_bundle as publish

        return publish(handle, gate, run_id=get_current_context()["dag_run"].run_id)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def close_request() -> dict[str, Any]:
        from governance.workflows.dsr_export import (
            DAG_ID,
            HITL_TASK_ID,
            close_export_request,
            task_states_of_run,
        )

        context = get_current_context()
        ti, run_id = context["ti"], context["dag_run"].run_id
        return close_export_request(
            ti.xcom_pull(task_ids="open_request"),
            run_id=run_id,
            published=ti.xcom_pull(task_ids="publish_bundle"),
            verification_response=ti.xcom_pull(task_ids=HITL_TASK_ID),
            task_states=task_states_of_run(ti, dag_id=DAG_ID, run_id=run_id),
            link_valid_days=context["params"].get("link_valid_days"),
            built=ti.xcom_pull(task_ids="build_bundle"),
        )

    handle = open_request()
    verified = record_verification(handle)
    chain(route_verification(handle), [verify_identity, verified])
    verify_identity >> verified
    summary = build_bundle(handle, verified)
    gate = check_bundle(handle, summary)
    published = publish_bundle(handle, gate)
    # close_request runs whatever happened before it and writes the outcome; request_outcome, the
    # run's only leaf, fails the run when the request was not served.
    closed = close_request()
    [handle, published] >> closed
    [handle, verified, verify_identity, summary, gate, published, closed] >> request_outcome(order=RUN_ORDER)


dsr_export()
