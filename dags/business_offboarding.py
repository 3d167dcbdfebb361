"""
### business_offboarding: a business client leaves (privacy policy 6, data retention)

When a business client's contract ends, what its account holds about its callers and users is no
longer needed. This DAG erases all of it, with the same plan, guard, approval, verification and
certificate as a person's erasure (`dsr_erasure`), rooted at the business id instead of a
person's identities:

1. **open_request**: the form's *business client id* must name an existing business; the
   business's open offboarding request is continued, or one is recorded with the *reason*.
2. **plan_erasure**: every `users` and `callers` row of the business, what they own (calls,
   messages, appointments, tickets, usage events, recordings and transcripts), the mentions of
   them elsewhere (cleared), and each person's records at the processors; legal holds and the
   7-year tax exception applied; the safety guard run (*override* only after a reviewed dry run).
   **A dry run (the default) stops here**: its result is the plan, in counts.
3. **approve_erasure**: privacy staff confirm the departure and approve the plan in the Airflow
   UI (Required actions); whoever triggered the run may not approve it.
4. **execute_database**, **delete_objects**, **erase_processors**, **verify_erasure**,
   **record_suppression**, **issue_certificate**, **close_request**, **request_outcome**: as in
   `dsr_erasure`; the certificate names the business, the reason and how many people.

Built only from `governance.airflow`: see the README, "Write your own governance DAG".
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow import (
    BUSINESS_VERIFICATION_CHOICES,
    approve_erasure,
    business_offboarding_params,
    certify_erasure,
    close_erasure,
    execute_erasure,
    open_business_offboarding,
    plan_erasure,
    record_suppression,
    request_dag_args,
    request_outcome,
    verify_erasure,
)


@dag(
    dag_id="business_offboarding",
    description="Erase what a departing business client's account holds about its callers and users, with a certificate",
    schedule=None,
    # Runs only when a request starts it: paused, the requests it is given would wait, queued.
    is_paused_upon_creation=False,
    max_active_runs=1,
    params=business_offboarding_params(),
    doc_md=__doc__,
    **request_dag_args(tags=["offboarding"]),
)
def business_offboarding() -> None:
    handle = open_business_offboarding()
    plan = plan_erasure(handle)
    approval = approve_erasure(
        plan,
        verification_choices=BUSINESS_VERIFICATION_CHOICES,
        subject="Offboarding request {request_id}: confirm the business client left, then approve the plan",
        question="How was the business client's departure confirmed?",
    )
    executed = execute_erasure(plan, approval)
    certificate = certify_erasure(handle, verify_erasure(plan, executed), record_suppression(plan, executed))
    close_erasure(handle, certificate)
    request_outcome()


business_offboarding()
