"""What the request workflows' tasks pass to each other through XCom, as typed payloads.

Every payload is JSON (XCom stores JSON) and carries ids, counts, kinds and keyed hashes only,
never an e-mail, phone, name or link: that is the contract the tasks keep and the tests check.
The building blocks (:mod:`governance.airflow`) return these; DAG authors receive them as
``XComArg`` values and pass them on without knowing a task id. Keys a payload may lack (a dry
run has no execution result; a refused export has no digest) are marked ``NotRequired``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class RequestHandlePayload(TypedDict):
    """``open_request``: the request a run works on (``RequestHandle.to_xcom``)."""

    request_id: str
    kind: str
    business_id: int | None
    identity_kinds: list[str]
    verified: bool
    source: str
    status: str


class ErasurePlanPayload(TypedDict):
    """``plan_erasure``: the stored plan in counts (``ErasureWork.summary``) and its status."""

    plan_id: str
    request_id: str
    as_of: str
    business_id: int | None
    identity_kinds: list[str]
    order: list[str]
    tables: dict[str, dict[str, int]]
    objects: dict[str, int]
    processors: dict[str, int]
    kept: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    ambiguities: list[str]
    person_held: bool
    processors_skipped: list[str]
    out_of_scope_tables: list[str]
    guard: dict[str, Any]
    statements: list[dict[str, Any]]
    status: str
    dry_run: bool
    continued: bool
    approval_markdown: str
    needs_approval: NotRequired[bool]


class ApprovalPayload(TypedDict):
    """What Airflow's ``ApprovalOperator`` returns (the HITL answer)."""

    chosen_options: list[str]
    params_input: dict[str, Any]
    responded_by_user: NotRequired[dict[str, Any]]
    responded_at: NotRequired[str]


class DatabaseErasurePayload(TypedDict):
    """``execute_database``: rows changed per table (``system.table``)."""

    plan_id: str
    rows: dict[str, int]
    done_before: list[str]


class ObjectErasurePayload(TypedDict):
    """``delete_objects``: objects deleted (every version) per prefix."""

    plan_id: str
    objects: dict[str, int]
    items: dict[str, int]  # DynamoDB items deleted per table


class ProcessorErasurePayload(TypedDict):
    """``erase_processors``: what each processor's erase call did."""

    plan_id: str
    processors: dict[str, Any]


class VerificationPayload(TypedDict):
    """``verify_erasure``: passed (a residue fails the task instead)."""

    plan_id: str
    passed: bool
    checks: int


class SuppressionPayload(TypedDict):
    """``record_suppression``: identities put on the suppression list."""

    plan_id: str
    recorded: int


class CertificatePayload(TypedDict):
    """``issue_certificate``: where the certificate is (None when nothing was carried out)."""

    plan_id: str
    outcome: str
    verification_passed: bool
    json_uri: str
    html_uri: str
    sha256: NotRequired[str]


class ClosedRequestPayload(TypedDict):
    """``close_request``: the outcome written on the request; ``served`` decides the run's state."""

    served: bool
    request_id: NotRequired[str]
    status: NotRequired[str]
    outcome: NotRequired[str]
    detail: NotRequired[str]
    plan_id: NotRequired[str]
    result_uri: NotRequired[str]
    closed: NotRequired[bool]
    link_valid_days: NotRequired[int]
    staging_objects_removed: NotRequired[int]


class VerificationRecordPayload(TypedDict):
    """``record_verification``: how the person's identity was verified (export)."""

    request_id: str
    verified: bool
    method: str


class BundlePayload(TypedDict, total=False):
    """``build_bundle``: the staged bundle in counts, or a refusal (``refused``, ``reason``)."""

    request_id: str
    refused: bool
    reason: str
    ambiguities: dict[str, Any]
    files_digest: str
    rows: dict[str, int]


class BundleCheckPayload(TypedDict):
    """``check_bundle``: the quality gate passed (a failure fails the task instead)."""

    request_id: str
    passed: bool
    files_digest: str
    rows_checked: int
    files_checked: int


class PublishedBundlePayload(TypedDict):
    """``publish_bundle``: the checked bundle is at the request's published key."""

    request_id: str
    published: bool
    files_digest: str
    ciphertext_bytes: int


class RequestOutcomePayload(TypedDict):
    """``request_outcome``: the request was served, with this outcome."""

    request_id: str | None
    outcome: str | None
