"""Export bundles with the call-event store: the person's DynamoDB items, found by a Query on
their phone, are in the bundle with a per-system count, and the quality gate ties each to them.

Ground truth is the test's own boto3 Query on the reference deployment's table (read only here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest

from governance.datamap import load_datamap
from governance.datamap.model import DataMap
from governance.export.collect import ExportSubject, export_bundle_to_s3
from governance.identity import SubjectIdentities
from governance_dev.seed import cast_member
from governance_dev.seed.events import EVENTS_ONLY_ITEMS, EVENTS_ONLY_PHONE
from tests.fixtures.reference import Deployment
from tests.integration.test_dynamodb_connector import _count
from tests.integration.test_erasure_dynamodb import items_of
from tests.integration.test_export_bundle import PASSPHRASE, gate, read_bundle, subject_of, targets_for

pytestmark = pytest.mark.integration

EVENTS = "aircalls_events.call_events"


@pytest.fixture(scope="module")
def env(reference_deployment: Deployment) -> Iterator[Deployment]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in reference_deployment.connection_env().items():
            patch.setenv(key, value)
        yield reference_deployment


def live_items_of(dynamodb: Any, table: str, phone: str) -> dict[str, int | None]:
    """Sort key -> TTL (None: none) of the items under ``phone`` (the test's own Query)."""
    pages = dynamodb.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="caller_phone = :p", ExpressionAttributeValues={":p": {"S": phone}}
    )
    return {i["occurred_at"]["S"]: int(i["expires_at"]["N"]) if "expires_at" in i else None
            for page in pages for i in page["Items"]}  # fmt: skip


def _write(datamap: DataMap, subject: ExportSubject, d: Deployment, s3: Any, dynamodb: Any, bucket: str, key: str) -> Any:
    from datetime import UTC, datetime

    targets = replace(targets_for(d, s3), dynamodb_for=lambda _conn_id: dynamodb)
    return export_bundle_to_s3(datamap, subject, formats=("json",), targets=targets, s3=s3, bucket=bucket, key=key,
                               passphrase=PASSPHRASE, generated_at=datetime.now(UTC))  # fmt: skip


def test_a_person_present_only_in_dynamodb_gets_their_items_and_nothing_else(
    env: Deployment, s3: Any, dynamodb: Any, make_bucket: Any
) -> None:
    assert env.events_table is not None
    truth = items_of(dynamodb, env.events_table, EVENTS_ONLY_PHONE)
    assert len(truth) == EVENTS_ONLY_ITEMS
    datamap, bucket = load_datamap(), make_bucket("export-items")
    subject = ExportSubject(request_id="exp-20260115-0000000000d1", identities=SubjectIdentities.parse(phone=EVENTS_ONLY_PHONE),
                            received_on=date(2026, 1, 15), business_scope=None)  # fmt: skip
    summary = _write(datamap, subject, env, s3, dynamodb, bucket, "d.zip.age")
    archive = read_bundle(s3, bucket, "d.zip.age")
    items = json.loads(archive.read("data/aircalls_events/call_events.json"))
    assert sorted(i["occurred_at"] for i in items) == truth
    assert {i["caller_phone"] for i in items} == {EVENTS_ONLY_PHONE} and all("expires_at" in i and i["payload"] for i in items)
    assert not [n for n in archive.namelist() if n.startswith("data/aircalls_app/")], "nothing in the app"
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["systems"]["aircalls_events"] == {"kind": "dynamodb", "tables": 1, "items": EVENTS_ONLY_ITEMS}
    assert manifest["items"][EVENTS]["items"] == EVENTS_ONLY_ITEMS and manifest["found_data"] is True
    assert summary.source_counts[EVENTS] == summary.bundle_counts[EVENTS] == EVENTS_ONLY_ITEMS
    assert "call_events" in archive.read("index.html").decode()
    result = gate(datamap, summary, subject, s3, bucket, "d.zip.age")
    assert result.passed, result.describe_failures()


def test_a_caller_s_bundle_holds_their_call_events_beside_their_app_rows_and_the_gate_refuses_another_person_s_item(
    env: Deployment, s3: Any, dynamodb: Any, make_bucket: Any
) -> None:
    assert env.events_table is not None
    member = cast_member("caller_only")
    assert member.e164 is not None
    stored = items_of(dynamodb, env.events_table, member.e164)
    # Items past their TTL are expired (DynamoDB removes them lazily; moto never does): not exported.
    now = datetime.now(UTC).timestamp()
    truth = sorted(k for k, ttl in live_items_of(dynamodb, env.events_table, member.e164).items() if ttl is None or ttl >= now)
    assert 0 < len(truth) < len(stored), "the cast caller has items both live and past their TTL"
    datamap, bucket = load_datamap(), make_bucket("export-items")
    subject = subject_of("caller_only")
    summary = _write(datamap, subject, env, s3, dynamodb, bucket, "c.zip.age")
    archive = read_bundle(s3, bucket, "c.zip.age")
    assert sorted(i["occurred_at"] for i in json.loads(archive.read("data/aircalls_events/call_events.json"))) == truth
    assert summary.bundle_counts[EVENTS] == len(truth) > 0 and summary.bundle_counts["aircalls_app.callers"] == 1
    assert gate(datamap, summary, subject, s3, bucket, "c.zip.age").passed
    # The same bundle checked as someone else's: the gate ties the items to the caller, not to them.
    other = replace(subject, identities=SubjectIdentities.parse(phone=EVENTS_ONLY_PHONE))
    refused = gate(datamap, summary, other, s3, bucket, "c.zip.age")
    assert not refused.passed
    assert _count(dynamodb, env.events_table, member.e164) == len(stored), "an export changes nothing"
