"""subprocessor_inventory end to end with ``dag.test()`` on a copy of the reference deployment,
with one violation planted (the CRM's data processing agreement past its review date): the
report is still published and the snapshot recorded, the validation task fails and the failure
notifier alerts; the run fails. (The clean reference is covered without Airflow in
tests/integration/test_transfer_inventory.py.)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance.config import INCLUDE_DIR
from tests.dags.conftest import task_states
from tests.fixtures.reference import Deployment
from tests.integration.test_transfer_inventory import plant_observed_flows, published, snapshots

pytestmark = [pytest.mark.integration, pytest.mark.dagrun]


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A webhook receiver as the ``governance_alerts`` connection; yields the alerts received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_ALERTS", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": server.server_address[1], "extra": {"endpoint": "/alerts"}}))  # fmt: skip
    yield received
    server.shutdown()
    server.server_close()


def test_a_violation_fails_the_run_and_alerts_after_the_report_is_published(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, alerts: list[dict[str, Any]],
) -> None:  # fmt: skip
    plant_observed_flows(reference_clone, tmp_path / "events.jsonl", monkeypatch)
    data = yaml.safe_load((INCLUDE_DIR / "subprocessors.yaml").read_text())
    crm = next(s for s in data["subprocessors"] if s["name"] == "crm")
    crm["dpa"]["review_by"] = "2026-10-01"
    planted = tmp_path / "subprocessors.yaml"
    planted.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("GOVERNANCE_SUBPROCESSORS", str(planted))

    dag_run = get_dag("subprocessor_inventory").test()

    assert task_states(dag_run) == {
        "validate_inputs": "success", "build_and_publish": "success", "check_inventory": "failed",
    }  # fmt: skip
    assert str(dag_run.state) == "failed"
    [row] = snapshots(reference_clone.app_url)
    assert (row["run_id"], row["is_clean"], row["violation_count"]) == (dag_run.run_id, False, 1)
    assert row["violations"] == [{
        "kind": "dpa_review_overdue", "subject": "crm",
        "message": "the data processing agreement was due for review on 2026-10-01",
    }]  # fmt: skip
    objects = published(s3, reference_clone.bucket)
    report = objects["governance/transfer-inventory/latest/transfer_inventory.html"].decode()
    assert "1 violation(s) to act on" in report and "due for review on 2026-10-01" in report
    assert json.loads(objects["governance/transfer-inventory/latest/transfer_inventory.json"])["violation_counts"] == {
        "dpa_review_overdue": 1
    }
    assert row["report_uri"] == f"s3://{reference_clone.bucket}/" + next(
        k for k in objects if k.endswith(".html") and "/latest/" not in k
    )
    assert [(a.get("dag_id"), a.get("task_id")) for a in alerts] == [("subprocessor_inventory", "check_inventory")]


def test_the_inventory_runs_weekly_and_on_the_asset_its_input_watcher_emits(get_dag: Callable[[str], Any]) -> None:
    from airflow.sdk import Asset

    inventory, watcher = get_dag("subprocessor_inventory"), get_dag("subprocessor_inventory_inputs")
    timetable = inventory.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 6 * * 1"  # Mondays 06:00 UTC
    [outlet] = watcher.get_task("fingerprint_inputs").outlets
    assert outlet == Asset(name="subprocessor_inventory_inputs")
    assert list(timetable.asset_condition.objects) == [Asset(name="subprocessor_inventory_inputs")]
    assert inventory.get_task("build_and_publish").outlets == [Asset(name="subprocessor_transfer_inventory")]
