"""Blocks of the intake DAG (``dags/privacy_request_intake.py``): validate, reconcile, alert,
dispatch. Task bodies import the workflow modules when they run, so parsing stays cheap."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.definitions.xcom_arg import XComArg

DISPATCH_TASK_ID = "dispatch_runs"


def _pass_time() -> datetime:
    """The intake pass's "now": the run's logical date (a cron run's time), else its run_after."""
    context = get_current_context()
    dag_run = context["dag_run"]
    return dag_run.logical_date or dag_run.run_after


def _governance() -> str:
    from governance.config import GOVERNANCE_CONN_ID
    from governance.db import conninfo_for
    from governance.migrations import ensure_schema

    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    ensure_schema(conninfo)
    return conninfo


def intake_pass() -> XComArg:
    """validate_requests >> reconcile_runs >> alert_deadlines >> plan_dispatches >> dispatch_runs
    (mapped TriggerDagRunOperator) >> record_dispatches; returns record_dispatches' XComArg."""

    @task(task_id="validate_requests")
    def validate() -> dict[str, Any]:
        from governance.crypto import cipher_from_airflow
        from governance.db import connect
        from governance.workflows.privacy_request_intake import validate_requests

        with connect(_governance()) as conn:
            return validate_requests(conn, at=_pass_time(), cipher=cipher_from_airflow()).to_xcom()

    @task(task_id="reconcile_runs")
    def reconcile() -> dict[str, str]:
        from governance.db import connect
        from governance.workflows.privacy_request_intake import reconcile_runs

        ti = get_current_context()["ti"]

        def run_state(dag_id: str, run_id: str) -> str | None:
            if not ti.get_dr_count(dag_id=dag_id, run_ids=[run_id]):
                return None
            state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
            return str(getattr(state, "value", state))  # an Enum: str() would give "DagRunState.FAILED"

        with connect(_governance()) as conn:
            return reconcile_runs(conn, at=_pass_time(), run_state=run_state)

    @task(task_id="alert_deadlines")
    def alerts() -> list[dict[str, Any]]:
        from governance.workflows.privacy_request_intake import alert_deadlines, notifier_sender

        sent = alert_deadlines(_governance(), now=_pass_time(), send=notifier_sender())
        return [{k: a[k] for k in ("event", "request_id", "status")} for a in sent]

    @task(task_id="plan_dispatches")
    def plan() -> list[dict[str, Any]]:
        from governance.db import connect
        from governance.dispatch import pending_dispatches

        with connect(_governance()) as conn:
            return [d.to_xcom() for d in pending_dispatches(conn)]

    @task
    def trigger_arguments(dispatches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from governance.dispatch import Dispatch

        return [Dispatch.from_xcom(d).operator_kwargs() for d in dispatches]

    @task(task_id="record_dispatches", trigger_rule=TriggerRule.ALL_DONE)
    def record(dispatches: list[dict[str, Any]]) -> dict[str, list[str]]:
        from governance.workflows.privacy_request_intake import record_dispatches

        ti = get_current_context()["ti"]
        return record_dispatches(
            _governance(), dispatches, at=_pass_time(),
            run_exists=lambda dag_id, run_id: bool(ti.get_dr_count(dag_id=dag_id, run_ids=[run_id])),
        )  # fmt: skip

    # Imported here, not at module top: only the intake DAG pays for it (the SLA report's does not).
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    planned = plan()
    # The run id derives from the request id: a run that exists already (a repeated dispatch, or
    # the Privacy requests page was first) is skipped, not started twice. No logical date: many
    # runs of one DAG may be triggered in the same instant.
    dispatched = TriggerDagRunOperator.partial(
        task_id=DISPATCH_TASK_ID, skip_when_already_exists=True, logical_date=None, wait_for_completion=False,
        openlineage_inject_parent_info=False,
    ).expand_kwargs(trigger_arguments(planned))  # type: ignore[arg-type]  # fmt: skip
    validate() >> reconcile() >> alerts() >> planned
    recorded = record(planned)  # type: ignore[arg-type]
    dispatched >> recorded
    return recorded


def sla_report_asset() -> Any:
    """The Asset the daily SLA report updates (the objects bucket's report folder)."""
    from airflow.sdk import Asset

    from governance.config import SLA_REPORT_PREFIX, objects_bucket

    # Named, not an s3:// URI: an s3 URI makes Airflow load the amazon provider's normaliser
    # (boto3: about 1.1 s) every time the file is parsed. The location is in the Asset's extra.
    return Asset("privacy_request_sla_report",
                 extra={"location": f"s3://{objects_bucket()}/{SLA_REPORT_PREFIX}/latest.html"})  # fmt: skip


def publish_sla_report() -> XComArg:
    """One task: compute the figures as of the run's date and publish the HTML report."""

    @task(task_id="publish_sla_report", outlets=[sla_report_asset()])
    def publish() -> dict[str, Any]:
        from governance.config import OBJECTS_CONN_ID, objects_bucket
        from governance.db import connect
        from governance.objectstore import s3_client
        from governance.sla_report import publish, sla_figures

        with connect(_governance()) as conn:
            figures = sla_figures(conn, as_of=_pass_time())
        uris = publish(s3_client(OBJECTS_CONN_ID), objects_bucket(), figures)
        return {**figures.to_xcom(), "published": uris}

    return publish()
