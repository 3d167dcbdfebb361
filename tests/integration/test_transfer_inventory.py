"""The inventory of the reference deployment, built from its real sources without Airflow: the
audit ledger (rows appended by the real ledger writer), an OpenLineage events file, the governance
schema and the object store. The reference deployment is clean; the snapshot is recorded once per
run however often the run is retried; the published HTML report renders in headless Chromium (a
screenshot is kept in ``test-output/inventory/``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.reference import Deployment

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "inventory"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.integration


def plant_observed_flows(deployment: Deployment, events_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the workflows would have left: ledger rows naming the payments processor, the CRM, an
    app table and the recordings prefix; a lineage event naming the support desk."""
    from governance.connections import get_connection
    from governance.inventory.observed import processor_uri
    from governance.ledger import LedgerEntry, LedgerWriter, ledger_keyring
    from governance.lineage import openlineage_dataset, table_uri

    run = "manual__2026-12-01T10:00:00+00:00"
    entries = [
        LedgerEntry("dsr_erasure", run, "erase_processors", -1, 1, "success", outputs=(
            processor_uri(get_connection("payments_processor"), "payments_processor"),
            processor_uri(get_connection("crm"), "crm"))),
        LedgerEntry("dsr_erasure", run, "execute_database", -1, 1, "success",
                    outputs=(table_uri("aircalls_app", "app", "callers"),)),
        LedgerEntry("retention_sweep", run, "sweep_target", 0, 1, "success",
                    outputs=(f"s3://{deployment.bucket}/recordings",)),
        LedgerEntry("retention_sweep", run, "sweep_target", 1, 1, "skipped",  # did not run: no flow
                    outputs=("https://never-called.example:443/x",)),
    ]  # fmt: skip
    with LedgerWriter.connect(deployment.app_url, ledger_keyring()) as writer:
        writer.append(entries)
    namespace, name = openlineage_dataset(processor_uri(get_connection("support_desk"), "support_desk"))
    event = {"eventType": "COMPLETE", "eventTime": datetime.now(UTC).isoformat(),
             "inputs": [], "outputs": [{"namespace": namespace, "name": name}]}  # fmt: skip
    events_file.write_text(json.dumps({"eventType": "START", "eventTime": "2026-01-01T00:00:00+00:00"}) + "\n"
                           + json.dumps(event) + "\n" + '{"eventType": "COMPL')  # a line cut short by a crash
    monkeypatch.setenv("GOVERNANCE_OPENLINEAGE_EVENTS", str(events_file))


def snapshots(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT run_id, is_clean, violation_count, entries, violations, report_uri, list_version "
                           "FROM governance.transfer_inventory ORDER BY run_id")  # fmt: skip
        columns = [c.name for c in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def published(s3: Any, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="governance/transfer-inventory/")
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing.get("Contents", [])}


def screenshot(html: bytes, name: str, tmp_path: Path) -> Path:
    """Render ``html`` in headless Debian Chromium; the PNG is kept in test-output/inventory/."""
    assert CHROMIUM, "Debian's chromium is not installed (.ci/run installs it)"
    page = tmp_path / f"{name}.html"
    page.write_bytes(html)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    target.unlink(missing_ok=True)
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,3000",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={target}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return target


def test_the_reference_deployment_is_clean_recorded_once_per_run_and_published(
    reference_clone: Deployment, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from governance.workflows.subprocessor_inventory import (
        build_and_publish,
        check_inventory,
        fingerprint_inputs,
    )

    plant_observed_flows(reference_clone, tmp_path / "events.jsonl", monkeypatch)
    announced = fingerprint_inputs()
    assert announced["changed"] is True  # no snapshot yet
    assert fingerprint_inputs(last_emitted=announced)["changed"] is False  # already announced: one run, not one per check
    as_of = datetime.now(UTC)
    first = build_and_publish(run_id="scheduled__2026-12-07T06:00:00+00:00", as_of=as_of)
    again = build_and_publish(run_id="scheduled__2026-12-07T06:00:00+00:00", as_of=as_of)  # a retry
    assert first == again
    assert (first["violation_count"], first["subprocessors"], first["changes_since_notice"]) == (0, 10, 0)

    [row] = snapshots(reference_clone.app_url)
    assert (row["is_clean"], row["violation_count"], row["violations"], row["list_version"]) == (True, 0, [], "2026.11.15-1")
    observed = {e["name"]: e["last_observed"] for e in row["entries"]}
    assert {n for n, seen in observed.items() if seen} == {"payments", "crm", "support_desk", "cloud_hosting"}
    assert row["report_uri"] == first["report_uri"] and row["report_uri"].startswith(f"s3://{reference_clone.bucket}/")

    objects = published(s3, reference_clone.bucket)
    latest = {k.rsplit("/", 1)[-1]: v for k, v in objects.items() if "/latest/" in k}
    assert sorted(latest) == ["transfer_inventory.csv", "transfer_inventory.html", "transfer_inventory.json"]
    assert len(objects) == 6  # latest/ and the run's own folder, rewritten (not duplicated) by the retry
    document = json.loads(latest["transfer_inventory.json"])
    assert document["is_clean"] is True and len(document["subprocessors"]) == 10
    assert latest["transfer_inventory.csv"].decode().count("\n") == 12  # header + 11 (subprocessor, country) rows
    assert b"No violations" in latest["transfer_inventory.html"] and b"<svg" in latest["transfer_inventory.html"]

    assert fingerprint_inputs()["changed"] is False  # the snapshot has these inputs
    assert check_inventory(first)["clean"] is True
    png = screenshot(latest["transfer_inventory.html"], "transfer_inventory_reference", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_processor_calls_name_the_processor_in_its_connections_namespace(reference_clone: Deployment) -> None:
    """What makes processor flows observable: a look-up reads the processor, an erasure writes it,
    both named ``scheme://host:port/<processor>`` after the connection (templated and Python
    connectors alike), on the running task's lineage."""
    from governance.connections import get_connection
    from governance.connectors.base import processor_connector
    from governance.datamap import load_datamap
    from governance.identity import SubjectIdentities
    from governance.inventory.observed import processor_uri
    from governance.lineage import collected_task_lineage, reset_collected_lineage
    from governance_dev.seed import cast_member

    datamap = load_datamap()
    member = cast_member("processor_only_payments")
    subject = SubjectIdentities.parse(email=member.email, phone=None, region="US")
    payments = processor_uri(get_connection("payments_processor"), "payments_processor")
    desk = processor_uri(get_connection("support_desk"), "support_desk")
    assert payments.startswith("http://127.0.0.1:") and payments.endswith("/payments_processor")

    reset_collected_lineage()
    with processor_connector(datamap.processor("payments_processor")) as client:  # type: ignore[arg-type]
        [record] = client.lookup(subject)
    with processor_connector(datamap.processor("support_desk")) as client:  # type: ignore[arg-type]
        client.lookup(subject)
    looked_up = collected_task_lineage()
    assert (looked_up.inputs, looked_up.outputs) == (tuple(sorted([payments, desk])), ())

    reset_collected_lineage()
    with processor_connector(datamap.processor("payments_processor")) as client:  # type: ignore[arg-type]
        assert client.erase(record.record_id) == "erased"
    erased = collected_task_lineage()
    assert erased.outputs == (payments,)
    assert record.record_id in reference_clone.payments.deleted_ids()
