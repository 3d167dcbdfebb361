"""
### subprocessor_inventory: who receives which personal data, where, under which safeguard (privacy policy 3.1, 7, 9)

Weekly (Monday 06:00 UTC), and whenever `include/subprocessors.yaml` or the data map changes (the
`subprocessor_inventory_inputs` DAG hashes both every 15 minutes and emits the
`subprocessor_inventory_inputs` asset when either differs from the last snapshot):

1. **validate_inputs**: the data map, the reference data (`include/reference/`: countries, EEA
   states, adequacy decisions, DPF participants) and the subprocessor file; any problem fails at
   once with `FILE: PATH: MESSAGE` lines, before anything is read.
2. **build_and_publish**: the declarations, the data map's processors and what really flowed (the
   audit ledger and OpenLineage events: datasets in the namespaces of external systems) are
   reconciled; the snapshot goes to `governance.transfer_inventory`; CSV, JSON and an HTML report
   with a data-flow diagram are published to `s3://<bucket>/governance/transfer-inventory/`
   (asset `subprocessor_transfer_inventory`).
3. **check_inventory**: fails, and alerts through the failure notifier, when there is any
   violation (undeclared processor, flow or category, contradiction with the data map, stale
   flow, transfer without safeguard, SCC or BCR without a transfer impact assessment, DPA
   missing or overdue, change since the last customer notice). The report is published first.

See the README, "Subprocessor inventory".
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task

from governance.dag_defaults import GOVERNANCE_TAG, START_DATE, default_args

INPUTS = Asset(name="subprocessor_inventory_inputs")  # governance.workflows.subprocessor_inventory.INPUTS_ASSET
REPORT = Asset(name="subprocessor_transfer_inventory")  # governance.workflows.subprocessor_inventory.REPORT_ASSET


@dag(
    dag_id="subprocessor_inventory_inputs",
    description="Every 15 minutes: emits an asset event when the subprocessor file or the data map changed",
    schedule="*/15 * * * *",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1),
    tags=[GOVERNANCE_TAG, "inventory"],
    doc_md=__doc__,
)
def subprocessor_inventory_inputs() -> None:
    @task(outlets=[INPUTS])
    def fingerprint_inputs() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from governance.workflows.subprocessor_inventory import fingerprint_inputs as fingerprint

        # The last fingerprint announced (an earlier run's result; skipped runs push none).
        ti = get_current_context()["ti"]
        last = ti.xcom_pull(task_ids="fingerprint_inputs", include_prior_dates=True)
        result = fingerprint(last_emitted=last if isinstance(last, dict) else None)
        if not result["changed"]:
            raise AirflowSkipException("neither the subprocessor file nor the data map changed")  # no asset event
        return result

    fingerprint_inputs()


@dag(
    dag_id="subprocessor_inventory",
    description="Weekly and on change: who receives which personal data, where, under which safeguard, against what flowed",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 6 * * 1", timezone="UTC"), assets=[INPUTS]),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=[GOVERNANCE_TAG, "inventory"],
    doc_md=__doc__,
)
def subprocessor_inventory() -> None:
    @task  # fails with AirflowFailException (never retried): the same inputs give the same answer
    def validate_inputs() -> dict[str, Any]:
        from governance.workflows.subprocessor_inventory import validate_inputs as validate

        return validate()

    @task(outlets=[REPORT])
    def build_and_publish(_inputs: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.subprocessor_inventory import build_and_publish as build

        dag_run = get_current_context()["dag_run"]
        return build(run_id=dag_run.run_id, as_of=dag_run.logical_date or dag_run.run_after)

    @task  # fails with AirflowFailException (never retried): the same inputs give the same answer
    def check_inventory(summary: dict[str, Any]) -> dict[str, Any]:
        from governance.workflows.subprocessor_inventory import check_inventory as check

        return check(summary)

    check_inventory(build_and_publish(validate_inputs()))


subprocessor_inventory_inputs()
subprocessor_inventory()
