"""Building blocks for governance DAGs: the tasks privacy-request workflows are made of.

A request DAG opens a request, has a person verify or approve it in the Airflow UI, plans, carries
the plan out, verifies the result, certifies it, closes the request, and ends with
:func:`request_outcome`, which fails the run when the request was not served. Each block below
adds those tasks to the DAG being defined, with the task ids, trigger rules, retries and
timeouts the workflows rely on, and returns typed payloads (``XComArg``; see
:mod:`governance.workflows.payloads`) to pass to the next block: a DAG author never names a task
id or pulls an XCom by string.

Erasure of one person (``dags/dsr_erasure.py``)::

    handle = open_request("erasure")
    plan = plan_erasure(handle)
    approval = approve_erasure(plan, verification_choices=PERSON_VERIFICATION_CHOICES)
    executed = execute_erasure(plan, approval)
    certificate = certify_erasure(handle, verify_erasure(plan, executed), record_suppression(plan, executed))
    close_erasure(handle, certificate)
    request_outcome()

Erasure of everything a business client's account holds (``dags/business_offboarding.py``) uses
:func:`open_business_offboarding` in place of :func:`open_request` and the same blocks after it.
An export (``dags/dsr_export.py``) uses :func:`verify_identity`, :func:`export_bundle` and
:func:`close_export`.

Anonymised industry insights (``dags/aggregate_anonymisation.py``) use :func:`insights_params` and
:func:`insights_release` (check, stage, verify, publish).

Contracts every block keeps: XCom carries ids, counts and keyed hashes only; each task is
idempotent (a retry or a cleared run continues); bad input fails the first task before anything
is read. Importing this module is cheap (``airflow.sdk`` and the workflows' light modules): task
bodies import drivers and clients when they run, so DAG files stay fast to parse.
"""

from __future__ import annotations

from governance.airflow.blocks import (
    BUSINESS_VERIFICATION_CHOICES,
    EXPORT_VERIFICATION_OPTIONS,
    PERSON_VERIFICATION_CHOICES,
    ErasureApproval,
    ErasureExecution,
    approve_erasure,
    business_offboarding_params,
    certify_erasure,
    close_erasure,
    close_export,
    erasure_params,
    execute_erasure,
    export_bundle,
    export_params,
    open_business_offboarding,
    open_request,
    plan_erasure,
    record_suppression,
    request_dag_args,
    request_outcome,
    verify_erasure,
    verify_identity,
)
from governance.airflow.insights import INDUSTRY_INSIGHTS, insights_params, insights_release
from governance.workflows.payloads import (
    ApprovalPayload,
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

__all__ = [
    "BUSINESS_VERIFICATION_CHOICES",
    "EXPORT_VERIFICATION_OPTIONS",
    "INDUSTRY_INSIGHTS",
    "PERSON_VERIFICATION_CHOICES",
    "ApprovalPayload",
    "BundleCheckPayload",
    "BundlePayload",
    "CertificatePayload",
    "ClosedRequestPayload",
    "DatabaseErasurePayload",
    "ErasureApproval",
    "ErasureExecution",
    "ErasurePlanPayload",
    "ObjectErasurePayload",
    "ProcessorErasurePayload",
    "PublishedBundlePayload",
    "RequestHandlePayload",
    "RequestOutcomePayload",
    "SuppressionPayload",
    "VerificationPayload",
    "VerificationRecordPayload",
    "approve_erasure",
    "business_offboarding_params",
    "certify_erasure",
    "close_erasure",
    "close_export",
    "erasure_params",
    "execute_erasure",
    "export_bundle",
    "export_params",
    "insights_params",
    "insights_release",
    "open_business_offboarding",
    "open_request",
    "plan_erasure",
    "record_suppression",
    "request_dag_args",
    "request_outcome",
    "verify_erasure",
    "verify_identity",
]
