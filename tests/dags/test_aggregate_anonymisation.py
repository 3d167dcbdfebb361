"""aggregate_anonymisation end to end with one ``dag.test()`` on a copy of the reference deployment
(activity up to 2026-11-28), checked against what was published, with hand-written SQL: the
published cells are the raw aggregates of cells with at least k businesses and k callers, the
object store holds the same table as Parquet and CSV with its report, the read-only analyst role
reads ``insights`` and nothing in ``app``, and publishing again doubles nothing; with epsilon set, the
budget is recorded per week, a second release of the period is refused and a retried stage or
publication spends nothing twice (asserted on the governance ledger and the ``insights`` rows)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pandas as pd
import psycopg
import pytest
from airflow.utils.state import DagRunState

from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=150), pytest.mark.integration, pytest.mark.dagrun]

FORM = {"period_start": "2026-11-02", "period_end": "2026-11-22", "k_businesses": 5, "k_callers": 10,
        "epsilon": None, "delta": None}  # fmt: skip
# Hand-written: the calls of each (sector, week) over every country, from the raw rows.
SECTORS = {
    "dental clinic": "health", "veterinary clinic": "health", "medical practice": "health", "fitness studio": "health",
    "law firm": "professional services", "accounting": "professional services", "real estate": "professional services",
    "plumbing": "home and trades", "home cleaning": "home and trades", "auto repair": "home and trades",
    "restaurant": "hospitality and personal care", "hair salon": "hospitality and personal care",
}  # fmt: skip
RAW_BY_SECTOR_WEEK = """
    SELECT s.sector, to_char(c.started_at AT TIME ZONE 'UTC', 'IYYY-"W"IW') AS week, count(*) AS calls,
           count(DISTINCT c.business_id) AS businesses, count(DISTINCT c.caller_id) AS callers
    FROM app.calls c JOIN app.businesses b ON b.id = c.business_id
    JOIN (SELECT * FROM jsonb_each_text(%s::jsonb)) s (industry, sector) ON s.industry = b.industry
    WHERE c.started_at >= '2026-11-02' AND c.started_at < '2026-11-23'
    GROUP BY 1, 2"""


def test_a_release_is_computed_checked_and_published_where_analysts_can_read_it_and_nothing_identifying_leaves(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    import json

    url = reference_clone.app_url
    run = get_dag("aggregate_anonymisation").test(run_conf=FORM)
    assert run.state == DagRunState.SUCCESS, task_states(run)
    published = xcom_result(run, "publish_release")
    release_id = published["release_id"]
    assert set(published) == {"release_id", "version", "cells", "objects", "empty_reason"}  # ids and counts only

    with psycopg.connect(url) as conn:
        table = pd.DataFrame(
            conn.execute("SELECT level, industry, country, period, calls, businesses FROM insights.industry_insights"
                         " WHERE release_id = %s ORDER BY 1, 2, 3, 4", (release_id,)).fetchall(),
            columns=["level", "industry", "country", "period", "calls", "businesses"],
        )  # fmt: skip
        raw = {(r[0], r[1]): r[2:] for r in conn.execute(RAW_BY_SECTOR_WEEK, (json.dumps(SECTORS),)).fetchall()}
    assert len(table) == published["cells"] > 0
    assert (table["businesses"] >= 5).all() and (table["calls"] > 0).all()  # no empty combination
    # Every published sector-by-week total is the raw one, and passes both thresholds.
    totals = table[table["level"] == "sector/global/week"]
    assert len(totals) > 0
    for row in totals.itertuples():
        calls, businesses, callers = raw[(row.industry, row.period)]
        assert (row.calls, row.businesses) == (calls, businesses)
        assert businesses >= 5 and callers >= 10
    # A raw sector-week that fails a threshold is not in the table.
    small = {k for k, (_, b, c) in raw.items() if b < 5 or c < 10}
    assert not small & {(r.industry, r.period) for r in totals.itertuples()}

    # The object store holds the same table, with its manifest and report.
    keys = published["objects"]
    bucket = reference_clone.bucket
    parquet = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=next(k for k in keys if k.endswith(".parquet")))["Body"].read()))
    csv = pd.read_csv(io.BytesIO(s3.get_object(Bucket=bucket, Key=next(k for k in keys if k.endswith(".csv")))["Body"].read()))
    assert len(parquet) == len(csv) == len(table)
    assert sorted(parquet.columns) == sorted(csv.columns)
    assert "calls" in parquet.columns and not {"business_id", "caller_id", "name", "phone", "email"} & set(parquet.columns)
    report = s3.get_object(Bucket=bucket, Key=next(k for k in keys if k.endswith("report.html")))["Body"].read().decode()
    assert "<svg" in report and release_id in report

    # The analyst role reads insights, and nothing in app.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE insights_analyst")
        assert conn.execute("SELECT count(*) FROM insights.industry_insights WHERE release_id = %s", (release_id,)).fetchone() == (len(table),)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM app.calls")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM governance.insights_release_cells")

    # Publishing again (a retried task) doubles nothing.
    from governance.workflows.aggregate_anonymisation import publish

    again = publish({"release_id": release_id})
    assert again["objects"] == keys
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM insights.industry_insights WHERE release_id = %s", (release_id,)).fetchone() == (len(table),)
        assert conn.execute("SELECT count(*) FROM insights.releases").fetchone() == (1,)


def _ledger(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], int]:
    """(budget rows, published releases, staged releases) as the databases hold them."""
    with psycopg.connect(url) as conn:
        budget = conn.execute("SELECT release_id, week_start::text, epsilon, delta FROM governance.insights_budget_spends"
                              " ORDER BY week_start").fetchall()  # fmt: skip
        releases = conn.execute("SELECT release_id, epsilon, delta, cells FROM insights.releases").fetchall()
        staged = conn.execute("SELECT count(*) FROM governance.insights_releases").fetchone()
    return budget, releases, int(staged[0]) if staged else 0


def test_a_dp_release_records_its_budget_refuses_a_second_release_of_the_period_and_a_retry_spends_nothing(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    from governance.workflows.aggregate_anonymisation import publish, stage

    url = reference_clone.app_url
    dag = get_dag("aggregate_anonymisation")
    run = dag.test(run_conf={**FORM, "epsilon": 1.5, "delta": 1e-6})  # the spec's budget: 2.0 per week
    assert run.state == DagRunState.SUCCESS, task_states(run)
    release_id = xcom_result(run, "publish_release")["release_id"]
    budget, releases, staged = _ledger(url)
    # 1.5 spent on each of the three ISO weeks of the period, by this release, once.
    assert budget == [(release_id, week, 1.5, 1e-6) for week in ("2026-11-02", "2026-11-09", "2026-11-16")]
    assert [r[:3] for r in releases] == [(release_id, 1.5, 1e-6)] and staged == 1
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM insights.industry_insights WHERE release_id = %s",
                            (release_id,)).fetchone() == (releases[0][3],)  # fmt: skip

    # A retried stage_release (same run) and a retried publication spend nothing again.
    request = xcom_result(run, "check_request")
    again = stage(request, run_id=run.run_id)
    assert again["reused"] and again["release_id"] == release_id
    publish(again)
    assert _ledger(url) == (budget, releases, 1)

    # A second DP release of the period would take the weeks to 2.5: refused, nothing staged or spent.
    refused = dag.test(run_conf={**FORM, "epsilon": 1.0, "delta": 1e-6})
    assert refused.state == DagRunState.FAILED
    states = task_states(refused)
    assert states["check_request"] == "success" and states["stage_release"] == "failed", states
    assert states["publish_release"] != "success"
    assert _ledger(url) == (budget, releases, 1)


def test_a_period_without_calls_publishes_an_empty_release_whose_report_says_why(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    run = get_dag("aggregate_anonymisation").test(run_conf={**FORM, "period_start": "2020-01-06", "period_end": "2020-01-12"})
    assert run.state == DagRunState.SUCCESS, task_states(run)
    published = xcom_result(run, "publish_release")
    assert published["cells"] == 0 and published["empty_reason"] == "no calls in the period"
    with psycopg.connect(reference_clone.app_url) as conn:
        assert conn.execute("SELECT cells, empty_reason FROM insights.releases WHERE release_id = %s",
                            (published["release_id"],)).fetchone() == (0, "no calls in the period")  # fmt: skip
    report = s3.get_object(Bucket=reference_clone.bucket, Key=next(k for k in published["objects"] if k.endswith("report.html")))
    assert "Empty release:</strong> no calls in the period" in report["Body"].read().decode()
