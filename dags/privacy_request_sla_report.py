"""
### privacy_request_sla_report: how well requests are answered in time (policy 11)

Daily: an HTML report in the objects bucket (`reports/privacy-requests/latest.html`, and one per
day), the Asset `privacy_request_sla_report`: open requests by age and state (a chart), how many
are overdue or due within 7 days, and per kind the median and worst time from received to
completed. Ids, states and times only: never an identity.
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow.intake import publish_sla_report
from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="privacy_request_sla_report",
    description="Daily: the privacy-request SLA report (open requests by age and state, time to complete)",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[GOVERNANCE_TAG, "intake"],
    doc_md=__doc__,
)
def privacy_request_sla_report() -> None:
    publish_sla_report()


privacy_request_sla_report()
