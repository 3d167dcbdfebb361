"""Reconciliation of the declared subprocessors, the data map and the observed flows.

Every case plants one violation on a copy of the reference files (``include/subprocessors.yaml``,
``include/datamap.yaml``) or on the observed flows, and checks the exact set of violations against
one computed by hand; the clean reference reports none. Pure: no database, no Airflow.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance.config import INCLUDE_DIR
from governance.connections import ConnectionInfo, not_configured
from governance.datamap import load_datamap
from governance.inventory.loader import load_reference, load_subprocessors
from governance.inventory.model import TransferReference
from governance.inventory.observed import channel_prefixes, dataset_uri, merge_observations, processor_uri
from governance.inventory.reconcile import (
    Inventory,
    Observations,
    ObservedDataset,
    build_inventory,
    notice_entries,
)
from governance.inventory.report import inventory_csv, inventory_html, inventory_json

AS_OF = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
RECENT = AS_OF - timedelta(days=2)
LEDGER_START = datetime(2025, 1, 1, tzinfo=UTC)

CONNECTIONS = {
    "payments_processor": ConnectionInfo("payments_processor", "http", "https://pay.example"),
    "crm": ConnectionInfo("crm", "http", "https://crm.example"),
    "support_desk": ConnectionInfo("support_desk", "http", "https://desk.example", 8443),
    "aircalls_app": ConnectionInfo("aircalls_app", "postgres", "db.internal", 5432, schema="aircalls"),
    "governance_db": ConnectionInfo("governance_db", "postgres", "db.internal", 5432, schema="aircalls"),
    "aircalls_warehouse": ConnectionInfo("aircalls_warehouse", "postgres", "warehouse.internal", 5432, schema="analytics"),
    "aircalls_events": ConnectionInfo("aircalls_events", "aws", extra={"region_name": "eu-west-1"}),
}


def connection(conn_id: str) -> ConnectionInfo:
    if conn_id not in CONNECTIONS:
        raise not_configured(conn_id)
    return CONNECTIONS[conn_id]


def recent_flows() -> list[ObservedDataset]:
    """Every declared technical flow of the reference deployment, seen two days ago."""
    return [
        ObservedDataset(processor_uri(CONNECTIONS["payments_processor"], "payments_processor"), RECENT, 3),
        ObservedDataset(processor_uri(CONNECTIONS["crm"], "crm"), RECENT, 2),
        ObservedDataset(processor_uri(CONNECTIONS["support_desk"], "support_desk"), RECENT, 1),
        ObservedDataset("postgres://db.internal:5432/aircalls/app/callers", RECENT, 9),
        ObservedDataset("postgres://warehouse.internal:5432/analytics/analytics/call_facts", RECENT, 2),
        ObservedDataset("postgres://db.internal:5432/aircalls/governance/privacy_requests", RECENT, 9),
        # The project's own published aggregates (aggregate_anonymisation): internal, like governance.
        ObservedDataset("postgres://db.internal:5432/aircalls/insights/industry_insights", RECENT, 1),
        ObservedDataset("s3://aircalls-data/recordings", RECENT, 4),
        ObservedDataset("dynamodb://eu-west-1/aircalls-call-events", RECENT, 5),
    ]


@dataclass
class Planted:
    subprocessors: Callable[[dict[str, Any]], None] | None = None
    datamap: Callable[[dict[str, Any]], None] | None = None
    flows: Callable[[list[ObservedDataset]], list[ObservedDataset]] | None = None


@pytest.fixture(scope="module")
def reference() -> TransferReference:
    return load_reference(INCLUDE_DIR / "reference")


@pytest.fixture(scope="module")
def notified(reference: TransferReference) -> dict[str, Any]:
    """What customers were told: the shipped list."""
    datamap = load_datamap(INCLUDE_DIR / "datamap.yaml")
    declared = load_subprocessors(INCLUDE_DIR / "subprocessors.yaml", datamap=datamap, reference=reference,
                                  connection_exists=lambda _c: True)  # fmt: skip
    return notice_entries(declared)


def reconcile(
    tmp_path: Path, reference: TransferReference, notified: dict[str, Any] | None, planted: Planted
) -> Inventory:
    files = {}
    for name, change in (("subprocessors.yaml", planted.subprocessors), ("datamap.yaml", planted.datamap)):
        data = yaml.safe_load((INCLUDE_DIR / name).read_text())
        if change is not None:
            change(data)
        files[name] = tmp_path / name
        files[name].write_text(yaml.safe_dump(data, sort_keys=False))
    datamap = load_datamap(files["datamap.yaml"])
    declared = load_subprocessors(files["subprocessors.yaml"], datamap=datamap, reference=reference,
                                  connection_exists=lambda _c: True)  # fmt: skip
    flows = recent_flows()
    if planted.flows is not None:
        flows = planted.flows(flows)
    return build_inventory(
        declared, datamap, reference,
        observed=Observations(tuple(flows), LEDGER_START),
        prefixes=channel_prefixes(datamap, declared, connection=connection, own_buckets=["gov-reports"]),
        notified=notified, as_of=AS_OF,
    )  # fmt: skip


def entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["subprocessors"] if s["name"] == name)


def processor(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in data["processors"] if p["name"] == name)


def test_the_reference_deployment_has_no_violations(
    tmp_path: Path, reference: TransferReference, notified: dict[str, Any]
) -> None:
    inventory = reconcile(tmp_path, reference, notified, Planted())
    assert inventory.violations == ()
    assert inventory.is_clean and len(inventory.entries) == 10
    crm = next(e for e in inventory.entries if e.name == "crm")
    assert crm.last_observed == RECENT and crm.sources == ("aircalls_app", "aircalls_warehouse")  # both hold its categories
    stt = next(e for e in inventory.entries if e.name == "speech_to_text")
    assert [(t.country, t.lawful) for t in stt.transfers] == [("CA", True)]
    assert "pipeda_commercial" in stt.transfers[0].safeguard


def _add_sms_processor(data: dict[str, Any]) -> None:
    data["processors"].append({
        "name": "sms_gateway", "connection_id": "sms_gateway", "description": "SMS delivery",
        "data_categories": ["user.contact.phone_number"], "auth": {"type": "bearer"},
        "lookup": {"method": "GET", "path": "/numbers", "query": {"phone": "{phone}"}, "records_path": "data", "id_field": "id"},
        "erase": {"method": "DELETE", "path": "/numbers/{id}"},
    })  # fmt: skip


def _move_crm_to_india_in_both_files() -> Planted:
    def subs(data: dict[str, Any]) -> None:
        entry(data, "crm")["processing_countries"] = ["IN"]

    def dmap(data: dict[str, Any]) -> None:
        processor(data, "crm")["recipient"]["country"] = "IN"

    return Planted(subprocessors=subs, datamap=dmap)


def _new_subprocessor(data: dict[str, Any]) -> None:
    data["version"] = "2026.12.01-1"
    data["subprocessors"].append({
        "name": "sms_gateway", "legal_name": "Example SMS Ltd.", "purpose": "essential.service.notifications",
        "receives_through": [{"contractual_only": "the product sends text messages through it"}],
        "data_categories": ["user.contact.phone_number"], "processing_countries": ["DE"],
        "transfer": {"mechanism": "none"}, "dpa": {"signed": "2026-11-20", "review_by": "2028-11-20"},
        "since": "2026-11-25",
    })  # fmt: skip


def _drop(uri_part: str) -> Callable[[list[ObservedDataset]], list[ObservedDataset]]:
    return lambda flows: [f for f in flows if uri_part not in f.uri]


def _set_dpa(name: str, review_by: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: entry(data, name)["dpa"].update(review_by=review_by)


CASES = [
    pytest.param(Planted(datamap=_add_sms_processor), {("undeclared_processor", "sms_gateway")},
                 id="undeclared-processor-in-the-map"),
    pytest.param(Planted(flows=lambda f: [*f, ObservedDataset("https://sms.example:443/send", RECENT, 5),
                                          ObservedDataset("s3://gov-reports/governance/transfer-inventory", RECENT, 1)]),
                 {("undeclared_observed_flow", "https://sms.example:443")}, id="undeclared-flow-observed"),
    pytest.param(Planted(datamap=lambda d: processor(d, "crm")["data_categories"].append("user.financial.bank_account")),
                 {("undeclared_category", "crm")}, id="undeclared-category-sent"),
    pytest.param(_move_crm_to_india_in_both_files(),
                 {("transfer_without_safeguard", "crm"), ("changed_since_notice", "crm")},
                 id="processor-moved-to-a-country-without-adequacy"),
    pytest.param(Planted(subprocessors=lambda d: entry(d, "language_model")["transfer"].update(dpf_participant="Unlisted Models LLC")),
                 {("transfer_without_safeguard", "language_model")}, id="dpf-recipient-not-certified"),
    pytest.param(Planted(subprocessors=lambda d: entry(d, "telecom_carrier")["transfer"].update(tia_on_file=False, tia_date=None)),
                 {("missing_tia", "telecom_carrier")}, id="scc-without-assessment"),
    pytest.param(Planted(subprocessors=_set_dpa("crm", "2026-10-01")), {("dpa_review_overdue", "crm")}, id="expired-dpa"),
    pytest.param(Planted(subprocessors=lambda d: entry(d, "calendar").pop("dpa")), {("dpa_missing", "calendar")},
                 id="no-dpa"),
    pytest.param(Planted(subprocessors=_new_subprocessor), {("changed_since_notice", "sms_gateway")},
                 id="new-processor-since-the-notice"),
    pytest.param(Planted(flows=_drop("crm.example")), {("stale_flow", "crm")}, id="declared-flow-never-observed"),
    pytest.param(Planted(datamap=lambda d: processor(d, "crm")["recipient"].update(transfer_safeguard="standard_contractual_clauses")),
                 {("datamap_contradiction", "crm")}, id="map-and-declaration-disagree-on-safeguard"),
    pytest.param(Planted(subprocessors=lambda d: d.update(version="2026.12.02-1", customer_notice={"version": "2026.10.01-1", "date": "2026-10-02"})),
                 {("notice_baseline_missing", "customer_notice")}, id="notified-version-not-on-record"),
]  # fmt: skip


@pytest.mark.parametrize(("planted", "expected"), CASES)
def test_each_planted_violation_is_reported_and_nothing_else(
    tmp_path: Path, reference: TransferReference, notified: dict[str, Any], planted: Planted, expected: set[tuple[str, str]]
) -> None:
    # The notified list is on record, except in the case that plants its absence.
    on_record = None if ("notice_baseline_missing", "customer_notice") in expected else notified
    inventory = reconcile(tmp_path, reference, on_record, planted)
    assert sorted((v.kind, v.subject) for v in inventory.violations) == sorted(expected)
    report = inventory_html(inventory)
    for violation in inventory.violations:  # every planted violation appears in the report, in words
        assert escape(violation.message) in report
    assert {(v["kind"], v["subject"]) for v in inventory_json(inventory)["violations"]} == expected


def test_violation_messages_say_what_to_fix(tmp_path: Path, reference: TransferReference, notified: dict[str, Any]) -> None:
    planted = Planted(
        subprocessors=lambda d: (entry(d, "language_model")["transfer"].update(dpf_participant="Unlisted Models LLC"),
                                 _set_dpa("crm", "2026-10-01")(d)),
        flows=_drop("crm.example"),
    )  # fmt: skip
    messages = {v.kind: v.message for v in reconcile(tmp_path, reference, notified, planted).violations}
    assert messages == {
        "transfer_without_safeguard": "US: 'Unlisted Models LLC' is not an active participant of the EU-US Data "
        "Privacy Framework (include/reference/dpf_participants.yaml), and no SCC or BCR is in place",
        "dpa_review_overdue": "the data processing agreement was due for review on 2026-10-01",
        "stale_flow": "declared flow processor:crm never observed since 2025-06-01 (stale after P90D); remove it or "
        "find out why nothing was sent",
    }


def test_no_flow_is_called_stale_before_anything_is_on_record(
    tmp_path: Path, reference: TransferReference, notified: dict[str, Any]
) -> None:
    datamap = load_datamap(INCLUDE_DIR / "datamap.yaml")
    declared = load_subprocessors(INCLUDE_DIR / "subprocessors.yaml", datamap=datamap, reference=reference,
                                  connection_exists=lambda _c: True)  # fmt: skip
    prefixes = channel_prefixes(datamap, declared, connection=connection)
    empty = build_inventory(declared, datamap, reference, observed=Observations(), prefixes=prefixes,
                            notified=notified, as_of=AS_OF)  # fmt: skip
    assert empty.violations == () and empty.observed_since is None
    # A ledger started last week cannot show a 90-day gap either.
    young = Observations((), AS_OF - timedelta(days=7))
    assert build_inventory(declared, datamap, reference, observed=young, prefixes=prefixes, notified=notified,
                           as_of=AS_OF).violations == ()  # fmt: skip


def test_lineage_events_and_ledger_rows_name_the_same_datasets() -> None:
    assert dataset_uri("postgres://db.internal:5432", "aircalls.app.callers") == "postgres://db.internal:5432/aircalls/app/callers"
    assert dataset_uri("s3://aircalls-data", "recordings") == "s3://aircalls-data/recordings"
    assert dataset_uri("https://crm.example:443", "crm") == processor_uri(CONNECTIONS["crm"], "crm")
    merged = merge_observations([
        Observations((ObservedDataset("s3://b/x", RECENT, 2),), LEDGER_START),
        Observations((ObservedDataset("s3://b/x", AS_OF, 1), ObservedDataset("s3://b/y", RECENT, 1)), RECENT),
    ])  # fmt: skip
    assert merged == Observations(
        (ObservedDataset("s3://b/x", AS_OF, 3), ObservedDataset("s3://b/y", RECENT, 1)), LEDGER_START
    )


def test_the_csv_has_one_row_per_subprocessor_and_country(
    tmp_path: Path, reference: TransferReference, notified: dict[str, Any]
) -> None:
    inventory = reconcile(tmp_path, reference, notified, Planted())
    rows = list(csv.DictReader(io.StringIO(inventory_csv(inventory))))
    assert len(rows) == sum(len(e.transfers) for e in inventory.entries) == 11
    crm = next(r for r in rows if r["subprocessor"] == "crm")
    assert (crm["country"], crm["safeguard"], crm["lawful"], crm["receives_through"]) == (
        "DE", "EEA (no transfer)", "yes", "processor:crm")
    assert {r["lawful"] for r in rows} == {"yes"}


@pytest.mark.parametrize(
    ("host", "schema", "port"),
    [("https://pay.example", "", None), ("pay.example", "", None), ("pay.example", "https", 8443),
     ("http://127.0.0.1", "", 5001), ("HTTPS://Pay.Example/", "", None)],
)  # fmt: skip
def test_the_inventory_names_a_processor_as_its_connector_reports_it(host: str, schema: str, port: int | None) -> None:
    """The connector records calls under the base URL its hook builds; the inventory must
    compute the same URI from the connection, or every flow would look undeclared."""
    from airflow.sdk import Connection

    from governance.connectors.processors import ProcessorHook
    from governance.lineage import processor_uri as recorded_uri

    hook = ProcessorHook("payments_processor", connection=Connection(
        conn_id="payments_processor", conn_type="http", host=host, schema=schema or None, port=port))  # fmt: skip
    recorded = recorded_uri(hook.url_from_endpoint("").rstrip("/"), "payments_processor")
    info = ConnectionInfo("payments_processor", "http", host, port, schema=schema)
    assert processor_uri(info, "payments_processor") == recorded


def test_every_system_of_the_shipped_data_map_is_received_through_a_declared_subprocessor(
    reference: TransferReference,
) -> None:
    """A system added to the map (the analytics warehouse) must be declared where it is hosted;
    otherwise the first workflow that touches it is an undeclared observed flow in production."""
    datamap = load_datamap(INCLUDE_DIR / "datamap.yaml")
    declared = load_subprocessors(INCLUDE_DIR / "subprocessors.yaml", datamap=datamap, reference=reference,
                                  connection_exists=lambda _c: True)  # fmt: skip
    received = {c.system for s in declared.subprocessors for c in s.receives_through if c.system is not None}
    assert {s.name for s in datamap.systems} - received == set()
