"""
### aggregate_anonymisation: industry insights that identify no business and no caller (privacy policy 2.2)

Every week (and on demand) publishes per industry, country and ISO week: number of calls; the
answered, voicemail, transferred, missed and booked shares; mean duration; messages per call;
after-hours share; contributing businesses. What feeds it and how each quasi-identifier
generalises is declared in `include/insights_release.yaml`.

1. **check_request**: `k` below 2, `epsilon` of zero or below, `delta` outside (0, 1), a reversed
   period or one not over yet are refused here, before anything is read.
2. **stage_release**: the aggregates are computed inside PostgreSQL (pandas never sees a row);
   every published cell has at least *k businesses* and *k callers*, and no business above half
   its calls; failing cells are published only inside coarser ones (country to region to global,
   industry to sector, week to month to quarter) and suppressed, with complementary suppression so
   nothing can be recovered by subtraction, also against earlier releases of the period. With
   *epsilon* and *delta*, the same rules on the true counts plus a noise-aware threshold, OpenDP
   noise on the values published, and the budget spent per ISO week (a release over budget is
   refused; a retry spends nothing again).
3. **verify_release**: an independent check (Great Expectations, a recount from the raw rows,
   pyCANON); any failure blocks the release.
4. **publish_release**: the `insights` schema (read-only `insights_analyst` role), Parquet, CSV and
   an HTML report in the object store; the `industry_insights` asset is updated.
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow import insights_params, insights_release
from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args


@dag(
    dag_id="aggregate_anonymisation",
    description="Weekly: anonymised industry insights with thresholds, suppression, optional DP, checked",
    schedule="@weekly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params=insights_params(),
    tags=[GOVERNANCE_TAG, "insights"],
    doc_md=__doc__,
)
def aggregate_anonymisation() -> None:
    insights_release()


aggregate_anonymisation()
