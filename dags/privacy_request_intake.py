"""
### privacy_request_intake: every request tracked to its deadline and dispatched once (policy 5, 11)

Every 15 minutes:

1. `validate_requests`: requests recorded with `python -m governance request new` or on the
   Privacy requests page are checked: identities that cannot be read or are malformed reject the
   request with the reason; an identical open request (same kind, same identity hashes, same
   business) rejects the newer one as its duplicate; the others wait for staff to verify the
   person (`awaiting_verification`).
2. `reconcile_runs`: a request whose run ended without recording an outcome becomes `failed`
   with the reason (clear it with `python -m governance request retry` to dispatch it again).
3. `alert_deadlines`: open requests due within 7 days and overdue ones alert once per state
   change through the failure notifier's channels (`governance_alerts`). Deadlines: 30 days, or
   the request's jurisdiction's (`include/request_deadlines.yaml`), extended once with a reason.
4. `plan_dispatches` / `dispatch_runs` / `record_dispatches`: each verified export or erasure is
   started as a `dsr_export` / `dsr_erasure` run whose configuration is the request id only, under
   a run id derived from the request id: a second dispatch (a retry, the Privacy requests page)
   finds that run and starts nothing.

Everything in XCom and the logs is request ids, states and counts.
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow.intake import intake_pass
from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="privacy_request_intake",
    description="Every 15 minutes: check new privacy requests, dispatch verified ones once, alert on deadlines",
    schedule="*/15 * * * *",
    # Requests are answered within deadlines: the intake runs from the moment it is deployed.
    is_paused_upon_creation=False,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[GOVERNANCE_TAG, "intake"],
    doc_md=__doc__,
)
def privacy_request_intake() -> None:
    intake_pass()


privacy_request_intake()
