"""The building blocks themselves (re-exported by :mod:`governance.airflow`; import from there).

Each block adds its tasks to the DAG being defined and returns what the next block takes.
Task bodies import the workflow modules when they run, not here: DAG files import this module at
parse time and must stay fast to parse (``benchmarks/parse.py``); the task ids and choices the
workflow modules also name are repeated here, and ``tests/unit/test_building_blocks.py`` keeps
them equal. Task
ids are fixed here (the Privacy requests page, the failure alerts and the tests know them), so a
DAG may use each block once. The blocks call the workflow functions of
:mod:`governance.workflows.dsr_erasure` and :mod:`governance.workflows.dsr_export`, which are
importable and testable without a scheduler and import their drivers only when they run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Param, TriggerRule, chain, get_current_context, task

from governance.dag_defaults import (
    GOVERNANCE_TAG,
    REQUEST_OUTCOME_TASK_ID,
    START_DATE,
    approval_assignees,
    default_args,
)
from governance.dag_params import subject_params
from governance.workflows.outcome import check_request_outcome
from governance.workflows.payloads import (
    BundleCheckPayload,
    BundlePayload,
    CertificatePayload,
    ClosedRequestPayload,
    DatabaseErasurePayload,
    ErasurePlanPayload,
    ObjectErasurePayload,
    ProcessorErasurePayload,
    PublishedBundlePayload,
    RequestHandlePayload,
    RequestOutcomePayload,
    SuppressionPayload,
    VerificationPayload,
    VerificationRecordPayload,
)

if TYPE_CHECKING:
    from airflow.sdk import XComArg
    from airflow.sdk.bases.operator import BaseOperator

# Task ids: known here only (and, for the page and the tests, by the workflows' constants).
OPEN_REQUEST = "open_request"
PLAN_ERASURE = "plan_erasure"
CHOOSE_PATH = "choose_path"
APPROVE_ERASURE = "approve_erasure"  # governance.workflows.dsr_erasure.APPROVAL_TASK
ALREADY_APPROVED = "already_approved"  # governance.workflows.dsr_erasure.PRE_APPROVED_TASK
CLOSE_REQUEST = "close_request"
VERIFY_IDENTITY = "verify_identity"  # governance.workflows.dsr_export.HITL_TASK_ID
RECORD_VERIFICATION = "record_verification"  # governance.workflows.dsr_export.RECORD_VERIFICATION_TASK_ID
PUBLISH_BUNDLE = "publish_bundle"
BUILD_BUNDLE = "build_bundle"

# How a person's identity was verified, in the approver's words (codes are what the request
# records: governance.workflows.dsr_erasure.VERIFICATION_METHODS). No default: the approver
# chooses, so one click never records a method nobody used.
PERSON_VERIFICATION_CHOICES = {
    "account_login": "They asked while signed in to their aircalls account",
    "phone_callback": "We called back the phone number we hold for them",
    "email_link": "They confirmed through a link sent to the e-mail address we hold",
    "id_document": "We checked an identity document",
    "business_client_attestation": "The business client vouched for their caller",
    "not_verified": "Not verified (choose Reject)",
}
# How a business client's departure was confirmed (governance.workflows.dsr_erasure.BUSINESS_METHODS).
BUSINESS_VERIFICATION_CHOICES = {
    "contract_terminated": "The contract ended: the termination is on file",
    "written_instruction": "The business client asked in writing for its account's data to be erased",
    "not_verified": "Not confirmed (choose Reject)",
}
# What staff choose when verifying an export's identity (governance.workflows.dsr_export.HITL_OPTIONS).
EXPORT_VERIFICATION_OPTIONS = [
    "Verified: signed in to their aircalls account",
    "Verified: called back on the number we hold",
    "Verified: replied from the e-mail address we hold",
    "Verified: identity document checked",
    "Verified: by the business client who asked for them",
    "Reject: the identity could not be verified",
]


def _pulled(task_id: str, key: str) -> str:
    """A Jinja expression of one field of a task's result (for HITL subjects and bodies)."""
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['" + key + "'] }}"


def _operator(value: XComArg | BaseOperator) -> BaseOperator:
    """The task behind a block's result."""
    return cast("BaseOperator", getattr(value, "operator", value))


def _task_id(value: XComArg | BaseOperator) -> str:
    return str(_operator(value).task_id)


def _payload(value: XComArg) -> Any:
    """A block's result passed to a task function typed with its payload: Airflow resolves the
    ``XComArg`` to the payload when the task runs."""
    return value


def _run_received_at(dag_run: Any) -> Any:
    return dag_run.logical_date or dag_run.run_after


# --------------------------------------------------------------------------------------------
# DAG arguments and forms


def request_dag_args(**overrides: Any) -> dict[str, Any]:
    """``@dag(...)`` arguments every request DAG shares (give ``schedule=None`` yourself: request
    DAGs are triggered by staff or intake): the project's start date, no catch-up, task defaults whose failures alert once per
    request (from :func:`request_outcome`), the governance and privacy-request tags. Pass
    ``tags=[...]`` to add tags; other keyword arguments override."""
    extra_tags = list(overrides.pop("tags", []))
    args: dict[str, Any] = {
        "start_date": START_DATE,
        "catchup": False,
        "default_args": default_args(alert_only_from=REQUEST_OUTCOME_TASK_ID),
        "tags": [GOVERNANCE_TAG, "privacy-request", *extra_tags],
    }
    args.update(overrides)
    return args


def _dry_run_params(*, subject: str) -> dict[str, Param]:
    return {
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
                f"Erase even when the plan touches more than the allowed share of a table{subject}. "
                "Only after reviewing a dry run."
            ),
            section="Run",
        ),
    }


def erasure_params() -> dict[str, Param]:
    """The erasure form: the person (request id, e-mail, phone, business scope), dry run, guard override."""
    return {
        **subject_params(kind="erasure"),
        **_dry_run_params(subject=" or matches several people with one identity"),
    }


def business_offboarding_params() -> dict[str, Param]:
    """The offboarding form: the business client's id, the reason, dry run, guard override."""
    return {
        "business_id": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Business client id",
            description="The business client leaving: everything its account holds about its callers and users is erased.",
            section="Business",
        ),
        "reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Reason",
            description="Why the data is no longer needed (e.g. contract ended on 2026-11-30). No personal data.",
            section="Business",
        ),
        **_dry_run_params(subject=""),
    }


def export_params() -> dict[str, Param]:
    """The export form: the person, the data files' formats and how long the link stays valid."""
    return {
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
    }


# --------------------------------------------------------------------------------------------
# Opening a request


def open_request(kind: Literal["export", "erasure"]) -> XComArg:
    """``open_request``: validate the form (or load the request named by ``request_id``) before
    anything is read, recording a request for identities typed into the form. Returns
    :class:`~governance.workflows.payloads.RequestHandlePayload`."""

    @task(task_id=OPEN_REQUEST)
    def open_request_task() -> RequestHandlePayload:
        from governance.workflows import dsr_erasure as erasure_tasks
        from governance.workflows import dsr_export as export_tasks

        context = get_current_context()
        dag_run = context["dag_run"]
        opener = export_tasks.open_export_request if kind == "export" else erasure_tasks.open_erasure_request
        handle = opener(context["params"], run_id=dag_run.run_id, received_at=_run_received_at(dag_run))
        return cast(RequestHandlePayload, handle)

    return open_request_task()


def open_business_offboarding() -> XComArg:
    """``open_request`` for a business client leaving: validate ``business_id`` and ``reason``
    and record (or, on a re-run, find) the offboarding request. Returns
    :class:`~governance.workflows.payloads.RequestHandlePayload` (kind ``offboarding``)."""

    @task(task_id=OPEN_REQUEST)
    def open_request_task() -> RequestHandlePayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        context = get_current_context()
        dag_run = context["dag_run"]
        handle = erasure_tasks.open_offboarding_request(
            context["params"], run_id=dag_run.run_id, received_at=_run_received_at(dag_run)
        )
        return cast(RequestHandlePayload, handle)

    return open_request_task()


# --------------------------------------------------------------------------------------------
# Erasure


def plan_erasure(handle: XComArg) -> XComArg:
    """``plan_erasure``: resolve, apply legal holds and exceptions, run the safety guard and store
    the plan before anything changes (the form's ``dry_run`` stops the run here, the plan is its
    result; ``override_guard`` lets a reviewed plan past the guard). Returns
    :class:`~governance.workflows.payloads.ErasurePlanPayload`."""

    @task(task_id=PLAN_ERASURE)
    def plan_erasure_task(request: RequestHandlePayload) -> ErasurePlanPayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        context = get_current_context()
        dag_run, params = context["dag_run"], context["params"]
        summary = erasure_tasks.plan_erasure(
            request, dry_run=bool(params.get("dry_run", True)), override=bool(params.get("override_guard", False)),
            dag_id=dag_run.dag_id, run_id=dag_run.run_id, as_of=_run_received_at(dag_run),
        )  # fmt: skip
        return cast(ErasurePlanPayload, summary)

    return plan_erasure_task(_payload(handle))


@dataclass(frozen=True)
class ErasureApproval:
    """The approval step: the branch, the question in the UI and its bypass for a request approved
    before the run. Pass it to :func:`execute_erasure`."""

    path: BaseOperator
    approval: ApprovalOperator
    bypass: BaseOperator


def approve_erasure(
    plan: XComArg,
    *,
    verification_choices: Mapping[str, str] = PERSON_VERIFICATION_CHOICES,
    subject: str = "Erasure request {request_id}: verify the person, then approve the plan",
    question: str = "How did you verify the person's identity?",
    wait: timedelta = timedelta(days=14),
) -> ErasureApproval:
    """``choose_path`` then ``approve_erasure`` (Required actions in the Airflow UI: the plan in
    counts, and how the request was verified; four eyes: whoever recorded the request or
    triggered the run may not approve it) or ``already_approved`` (approved at intake). A dry run
    takes neither path. ``verification_choices`` maps the codes recorded on the request to the
    words the approver sees; ``subject`` is the Required action's title (``{request_id}`` is
    replaced by the request's id)."""
    plan_task = _task_id(plan)

    @task.branch(task_id=CHOOSE_PATH)
    def choose_path_task(summary: ErasurePlanPayload) -> list[str]:
        from governance.workflows import dsr_erasure as erasure_tasks

        return erasure_tasks.choose_path(summary)

    path = choose_path_task(_payload(plan))
    approval = ApprovalOperator(
        task_id=APPROVE_ERASURE,
        subject=subject.replace("{request_id}", _pulled(plan_task, "request_id")),
        body=_pulled(plan_task, "approval_markdown"),
        params={
            "verification_method": Param(
                None,
                type=["null", "string"],
                enum=[None, *verification_choices],
                values_display=dict(verification_choices),
                title=question,
                description="Recorded on the request and in the certificate. Approve only once it was verified.",
            )
        },
        response_timeout=wait,
        assigned_users=approval_assignees(),  # [governance] approvers; None: whoever Airflow lets answer
        # Waiting for a person is not work: the task may wait as long as the answer may take.
        execution_timeout=wait + timedelta(days=1),
    )

    @task(task_id=ALREADY_APPROVED)
    def already_approved_task() -> None:
        """The request was verified and approved at intake (or by an earlier run)."""

    bypass = already_approved_task()
    path >> [approval, bypass]
    return ErasureApproval(path=_operator(path), approval=approval, bypass=_operator(bypass))


@dataclass(frozen=True)
class ErasureExecution:
    """The carried-out plan: ``database`` (rows, one transaction per database), then ``objects``
    (every version), then ``processors`` (their erase calls; the plan is then executed)."""

    database: XComArg
    objects: XComArg
    processors: XComArg


def execute_erasure(plan: XComArg, approval: ErasureApproval) -> ErasureExecution:
    """``execute_database``, ``delete_objects``, ``erase_processors``: the stored plan carried out
    after the approval (or its bypass), each step recorded so a re-run continues where it stopped;
    a plan whose statements no longer match the data map is refused before anything changes."""
    plan_task, approval_task = _task_id(plan), approval.approval.task_id

    # Runs after the approval or its bypass, whichever the branch chose (the plan is pulled, not
    # passed, so that a dry run, where both are skipped, skips this too).
    @task(task_id="execute_database", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def execute_database_task() -> DatabaseErasurePayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        result = erasure_tasks.execute_database(
            ti.xcom_pull(task_ids=plan_task), approval=ti.xcom_pull(task_ids=approval_task), run_id=dag_run.run_id,
            triggered_by=getattr(dag_run, "triggering_user_name", None),
        )  # fmt: skip
        return cast(DatabaseErasurePayload, result)

    @task(task_id="delete_objects")
    def delete_objects_task(summary: ErasurePlanPayload) -> ObjectErasurePayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        return cast(ObjectErasurePayload, erasure_tasks.delete_objects(summary))

    @task(task_id="erase_processors")
    def erase_processors_task(summary: ErasurePlanPayload) -> ProcessorErasurePayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        return cast(ProcessorErasurePayload, erasure_tasks.erase_processors(summary))

    database = execute_database_task()
    [approval.approval, approval.bypass] >> _operator(database)
    objects = delete_objects_task(_payload(plan))
    processors = erase_processors_task(_payload(plan))
    database >> objects >> processors
    return ErasureExecution(database=database, objects=objects, processors=processors)


def verify_erasure(plan: XComArg, execution: ErasureExecution) -> XComArg:
    """``verify_erasure``: look again everywhere (Great Expectations checks the findings); anything
    left that the plan did not keep fails the run, named. Returns
    :class:`~governance.workflows.payloads.VerificationPayload`."""

    @task(task_id="verify_erasure")
    def verify_erasure_task(summary: ErasurePlanPayload) -> VerificationPayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        return cast(VerificationPayload, erasure_tasks.verify_erasure(summary))

    verified = verify_erasure_task(_payload(plan))
    execution.processors >> verified
    return verified


def record_suppression(plan: XComArg, execution: ErasureExecution) -> XComArg:
    """``record_suppression``: the erased identities' keyed hashes on the suppression list (for
    re-erasure after a restore). Returns :class:`~governance.workflows.payloads.SuppressionPayload`."""

    @task(task_id="record_suppression")
    def record_suppression_task(summary: ErasurePlanPayload) -> SuppressionPayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        return cast(SuppressionPayload, erasure_tasks.record_suppression(summary))

    suppressed = record_suppression_task(_payload(plan))
    execution.database >> suppressed
    return suppressed


def certify_erasure(handle: XComArg, *after: XComArg) -> XComArg:
    """``issue_certificate`` (runs after failures too, once everything in ``after`` is done): the
    certificate of the plan this run carried out, JSON and HTML, keyed hashes only; None when
    nothing was carried out. Returns :class:`~governance.workflows.payloads.CertificatePayload`."""
    open_task = _task_id(handle)

    @task(task_id="issue_certificate", trigger_rule=TriggerRule.ALL_DONE)
    def issue_certificate_task() -> CertificatePayload | None:
        from governance.workflows import dsr_erasure as erasure_tasks

        context = get_current_context()
        dag_run = context["dag_run"]
        certificate = erasure_tasks.issue_certificate(
            context["ti"].xcom_pull(task_ids=open_task), dag_id=dag_run.dag_id, run_id=dag_run.run_id
        )
        return cast(CertificatePayload | None, certificate)

    certificate = issue_certificate_task()
    [handle, *after] >> certificate
    return certificate


def close_erasure(handle: XComArg, certificate: XComArg) -> XComArg:
    """``close_request`` (runs after failures too): the request's outcome, from the plan and its
    certificate. Returns :class:`~governance.workflows.payloads.ClosedRequestPayload`."""
    open_task = _task_id(handle)

    @task(task_id=CLOSE_REQUEST, trigger_rule=TriggerRule.ALL_DONE)
    def close_request_task() -> ClosedRequestPayload:
        from governance.workflows import dsr_erasure as erasure_tasks

        context = get_current_context()
        closed = erasure_tasks.close_erasure_request(
            context["ti"].xcom_pull(task_ids=open_task), run_id=context["dag_run"].run_id
        )
        return cast(ClosedRequestPayload, closed)

    closed = close_request_task()
    certificate >> closed
    return closed


# --------------------------------------------------------------------------------------------
# Export


def verify_identity(handle: XComArg, *, wait: timedelta = timedelta(days=7)) -> XComArg:
    """``route_verification``, then ``verify_identity`` (Required actions in the Airflow UI: how the
    identity was verified, or a rejection) for an unverified request, and ``record_verification``
    (stores the answer; a rejection ends the run with nothing collected). Returns
    :class:`~governance.workflows.payloads.VerificationRecordPayload`."""
    request_id = _pulled(_task_id(handle), "request_id")

    @task.branch(task_id="route_verification")
    def route_verification_task(request: RequestHandlePayload) -> str:
        from governance.workflows import dsr_export as export_tasks

        return export_tasks.verification_route(request)

    question = HITLOperator(
        task_id=VERIFY_IDENTITY,
        subject=f"Verify the identity behind export request {request_id}",
        body=(
            f"Export request **{request_id}** is not verified yet. Check the person's identity against "
            "what we hold (for example call back the number on their account, or ask them to reply from "
            "the address we hold), then choose how you verified it, or reject the request. Nothing is "
            "collected before you answer. Do not type the person's e-mail, phone or name here."
        ),
        options=EXPORT_VERIFICATION_OPTIONS,
        response_timeout=wait,
        assigned_users=approval_assignees(),  # [governance] approvers; None: whoever Airflow lets answer
        # Waiting for a person is not work: the task may wait as long as the answer may take.
        execution_timeout=wait + timedelta(days=1),
    )

    @task(task_id=RECORD_VERIFICATION, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def record_verification_task(request: RequestHandlePayload) -> VerificationRecordPayload:
        from governance.workflows import dsr_export as export_tasks

        response = get_current_context()["ti"].xcom_pull(task_ids=VERIFY_IDENTITY)
        return cast(VerificationRecordPayload, export_tasks.record_verification(request, response))

    recorded = record_verification_task(_payload(handle))
    chain(route_verification_task(_payload(handle)), [question, recorded])
    question >> recorded
    return recorded


def export_bundle(handle: XComArg, verification: XComArg) -> XComArg:
    """``build_bundle`` (the person's data from every system into one encrypted ZIP, streamed),
    ``check_bundle`` (Great Expectations reads it back against the sources) and ``publish_bundle``
    (the checked bundle moved to the request's folder). Returns
    :class:`~governance.workflows.payloads.PublishedBundlePayload`."""

    @task(task_id=BUILD_BUNDLE, execution_timeout=timedelta(hours=6))
    def build_bundle_task(
        request: RequestHandlePayload, _verification: VerificationRecordPayload
    ) -> BundlePayload:
        from governance.workflows import dsr_export as export_tasks

        context = get_current_context()
        return cast(
            BundlePayload,
            export_tasks.build_bundle(request, context["params"], run_id=context["dag_run"].run_id),
        )

    @task(task_id="check_bundle")
    def check_bundle_task(request: RequestHandlePayload, summary: BundlePayload) -> BundleCheckPayload:
        from governance.workflows import dsr_export as export_tasks

        run_id = get_current_context()["dag_run"].run_id
        return cast(BundleCheckPayload, export_tasks.check_bundle(request, summary, run_id=run_id))

    @task(task_id=PUBLISH_BUNDLE)
    def publish_bundle_task(
        request: RequestHandlePayload, gate: BundleCheckPayload
    ) -> PublishedBundlePayload:
        from governance.workflows import dsr_export as export_tasks

        run_id = get_current_context()["dag_run"].run_id
        return cast(PublishedBundlePayload, export_tasks.publish_bundle(request, gate, run_id=run_id))

    summary = build_bundle_task(_payload(handle), _payload(verification))
    gate = check_bundle_task(_payload(handle), _payload(summary))
    return publish_bundle_task(_payload(handle), _payload(gate))


def close_export(handle: XComArg, published: XComArg) -> XComArg:
    """``close_request`` (runs after failures too): staging removed, the outcome written; on
    success the download link is stored on the request and nowhere else. Returns
    :class:`~governance.workflows.payloads.ClosedRequestPayload`."""
    open_task, published_task = _task_id(handle), _task_id(published)

    @task(task_id=CLOSE_REQUEST, trigger_rule=TriggerRule.ALL_DONE)
    def close_request_task() -> ClosedRequestPayload:
        from governance.workflows import dsr_export as export_tasks

        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        closed = export_tasks.close_export_request(
            ti.xcom_pull(task_ids=open_task),
            run_id=dag_run.run_id,
            published=ti.xcom_pull(task_ids=published_task),
            verification_response=ti.xcom_pull(task_ids=VERIFY_IDENTITY),
            task_states=export_tasks.task_states_of_run(ti, dag_id=dag_run.dag_id, run_id=dag_run.run_id),
            link_valid_days=context["params"].get("link_valid_days"),
            built=ti.xcom_pull(task_ids=BUILD_BUNDLE),
        )
        return cast(ClosedRequestPayload, closed)

    closed = close_request_task()
    [handle, published] >> closed
    return closed


# --------------------------------------------------------------------------------------------
# The watcher


def _run_order(tasks: Sequence[Any]) -> tuple[str, ...]:
    """Task ids in the order they run: by the longest path from a root, then as defined."""
    depth: dict[str, int] = {}
    by_id = {t.task_id: t for t in tasks}

    def level(task_id: str) -> int:
        if task_id not in depth:
            ups = [u for u in by_id[task_id].upstream_task_ids if u in by_id]
            depth[task_id] = 1 + max((level(u) for u in ups), default=-1)
        return depth[task_id]

    position = {t.task_id: n for n, t in enumerate(tasks)}
    return tuple(sorted(by_id, key=lambda t: (level(t), position[t])))


def request_outcome() -> XComArg:
    """``request_outcome``, the run's last task (call it last, after every other block): it runs
    whatever happened before it and fails the run when the request was not served (a step failed,
    or the recorded outcome does not serve it), naming the failed steps, so a green run is a served
    request and a failed request alerts once. Returns
    :class:`~governance.workflows.payloads.RequestOutcomePayload`."""
    order: list[str] = []

    @task(task_id=REQUEST_OUTCOME_TASK_ID, trigger_rule=TriggerRule.ALL_DONE)
    def request_outcome_task() -> RequestOutcomePayload:
        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        try:
            states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id], task_ids=list(order))
            run_states = dict(states.get(dag_run.run_id, {}))
        except Exception:  # without the states, the recorded outcome alone decides
            run_states = {}
        outcome = check_request_outcome(
            ti.xcom_pull(task_ids=CLOSE_REQUEST), handle=ti.xcom_pull(task_ids=OPEN_REQUEST), states=run_states,
            order=order,
        )  # fmt: skip
        return cast(RequestOutcomePayload, outcome)

    watcher = request_outcome_task()
    dag = _operator(watcher).dag
    others = [t for t in dag.tasks if t.task_id != REQUEST_OUTCOME_TASK_ID]
    order.extend(_run_order(others))
    others >> _operator(watcher)
    return watcher
