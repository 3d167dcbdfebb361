"""Every task of a request names the platform's own records it touches, not only the governed
systems: the governance tables (requests, runs, plans, progress, suppression list, certificates)
and the certificate objects. The erasure's tasks run as functions, each with an empty collector,
and each task's collected lineage is compared with the tables the task is known to read and
write (the OpenLineage provider and the audit ledger take exactly these)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from governance.config import GOVERNANCE_CONN_ID
from governance.lineage import collected_task_lineage, reset_collected_lineage, s3_prefix_uri, table_uri
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    APPROVAL,
    AS_OF,
    conf_for,
    run_id_for,
    shared_clone,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.integration


def _task(call: Callable[[], Any]) -> tuple[Any, set[str], set[str]]:
    """Run one task's function with an empty collector; its result, inputs and outputs."""
    reset_collected_lineage()
    result = call()
    lineage = collected_task_lineage()
    return result, set(lineage.inputs), set(lineage.outputs)


def _governance(*tables: str) -> set[str]:
    return {table_uri(GOVERNANCE_CONN_ID, "governance", t) for t in tables}


def test_each_erasure_task_names_the_governance_tables_and_certificate_objects_it_touches(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    from governance.workflows import dsr_erasure as wf

    run_id = run_id_for("lineage")
    handle, inputs, outputs = _task(lambda: wf.open_erasure_request(conf_for("caller_only"), run_id=run_id,
                                                                     received_at=AS_OF))  # fmt: skip
    assert inputs == set() and outputs == _governance("privacy_requests", "request_runs")

    summary, inputs, outputs = _task(lambda: wf.plan_erasure(handle, dry_run=False, override=False,
                                                             dag_id="dsr_erasure", run_id=run_id, as_of=AS_OF))  # fmt: skip
    assert _governance("privacy_requests") <= inputs
    assert table_uri("aircalls_app", "app", "callers") in inputs  # the governed tables it planned
    assert outputs == _governance("erasure_plans")

    wf.execute_database(summary, approval=APPROVAL, run_id=run_id)
    _result, inputs, outputs = _task(lambda: wf.record_suppression(summary))
    assert inputs == _governance("erasure_plans", "erasure_progress", "privacy_requests")
    assert outputs == _governance("suppression_list")

    wf.delete_objects(summary)
    wf.erase_processors(summary)
    wf.verify_erasure(summary)
    certificate, inputs, outputs = _task(lambda: wf.issue_certificate(handle, dag_id="dsr_erasure", run_id=run_id))
    assert certificate is not None and certificate["json_uri"].startswith(f"s3://{shared_clone.bucket}/")
    assert inputs == _governance("erasure_plans", "erasure_progress", "privacy_requests")
    assert outputs == _governance("erasure_certificates") | {
        s3_prefix_uri(shared_clone.bucket, "governance/erasure-certificates/")
    }


def test_opening_a_recorded_request_reads_it_and_records_only_the_run(shared_clone: Deployment) -> None:  # noqa: F811
    from governance.workflows import dsr_export as wf

    first = wf.open_export_request(conf_for("payer"), run_id=run_id_for("lineage-form"), received_at=AS_OF)
    _handle, inputs, outputs = _task(lambda: wf.open_export_request({"request_id": first["request_id"]},
                                                                    run_id=run_id_for("lineage-id"), received_at=AS_OF))  # fmt: skip
    assert inputs == _governance("privacy_requests") and outputs == _governance("request_runs")


def test_an_asset_known_only_by_name_is_no_dataset_of_a_task_but_a_uri_asset_is() -> None:
    """The SLA report's asset is named (an s3:// URI would load boto3 at parse time): it must not
    reach the audit ledger as a dataset URI (the ledger refuses it; the row was lost)."""
    from airflow.sdk import Asset

    from governance.lineage import _declared_assets

    assert _declared_assets([Asset(name="privacy_request_sla_report"), Asset(uri="s3://bucket/reports/x.html")]) == [
        "s3://bucket/reports/x.html"
    ]


def test_building_a_bundle_names_the_tables_prefixes_processors_and_governance_records_it_touches(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    from governance.workflows import dsr_export as wf

    run_id = run_id_for("lineage-bundle")
    handle = wf.open_export_request(conf_for("payer"), run_id=run_id, received_at=AS_OF)
    summary, inputs, outputs = _task(lambda: wf.build_bundle(handle, {"formats": ["json"]}, run_id=run_id))
    assert not summary.get("refused")
    assert _governance("privacy_requests") <= inputs
    assert table_uri("aircalls_app", "app", "users") in inputs and table_uri("aircalls_app", "app", "payments") in inputs
    processors = {u.rsplit("/", 1)[-1] for u in inputs if u.startswith("http")}
    assert {"crm", "payments_processor"} <= processors  # the payer is known to both (and sent to them)
    assert _governance("privacy_requests", "export_passphrases", "export_bundles") <= outputs
    assert s3_prefix_uri(shared_clone.bucket, "exports/") in outputs
