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
5. **record_suppression**, as soon as the database step has committed (beside the object,
   processor and verification steps): keyed hashes on the suppression list, for re-erasure after
   a restore (`python -m governance reapply-suppressions`), so a later failure cannot leave
   someone whose rows are gone off the list.
6. **verify_erasure**: the person is looked up again everywhere (Great Expectations checks the
   findings); anything left that the plan did not keep fails the run and is named.
7. **issue_certificate** and **close_request** run after failures too: the certificate (JSON and
   HTML, keyed hashes only) and the request's outcome.
8. **request_outcome** fails the run when the request was not served (a step failed, or the
   outcome is failed), naming the failed steps: a green run is a served request (or a dry run),
   and a failed request alerts once.
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow import (
    PERSON_VERIFICATION_CHOICES,
    approve_erasure,
    certify_erasure,
    close_erasure,
    erasure_params,
    execute_erasure,
    open_request,
    plan_erasure,
    record_suppression,
    request_dag_args,
    request_outcome,
    verify_erasure,
)


@dag(
    dag_id="dsr_erasure",
    description="Erase one person everywhere the data map reaches, after a dry run and an approval, with a certificate",
    schedule=None,
    # Runs only when a request starts it: paused, the requests it is given would wait, queued.
    is_paused_upon_creation=False,
    max_active_runs=8,
    params=erasure_params(),
    doc_md=__doc__,
    **request_dag_args(),
)
def dsr_erasure() -> None:
    handle = open_request("erasure")
    plan = plan_erasure(handle)
    approval = approve_erasure(plan, verification_choices=PERSON_VERIFICATION_CHOICES)
    executed = execute_erasure(plan, approval)
    certificate = certify_erasure(handle, verify_erasure(plan, executed), record_suppression(plan, executed))
    close_erasure(handle, certificate)
    request_outcome()


dsr_erasure()
