"""Erasure in the call-event store (DynamoDB on moto's server, over real HTTP).

Ground truth is the test's own boto3 calls: the person's items are queried by their phone here,
and every other item of the clone's own table is fingerprinted before and after (a Scan is fine in
a test; the workflow never scans). The workflow's tasks run as functions (what ``dag.test`` runs,
minus Airflow).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from governance_dev.seed import cast_member
from governance_dev.seed.events import EVENTS_ONLY_ITEMS, EVENTS_ONLY_PHONE
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    conf_for,
    diff,
    run_erasure,
    shared_clone,  # noqa: F401 - fixture
    snapshot,
)

pytestmark = [pytest.mark.slow(seconds=100), pytest.mark.integration]

EVENTS = "aircalls_events.call_events"


def items_of(dynamodb: Any, table: str, phone: str) -> list[str]:
    """Sort keys of the items under ``phone`` (the test's own Query)."""
    pages = dynamodb.get_paginator("query").paginate(
        TableName=table, KeyConditionExpression="caller_phone = :p", ExpressionAttributeValues={":p": {"S": phone}}
    )
    return sorted(i["occurred_at"]["S"] for page in pages for i in page["Items"])


def fingerprint(dynamodb: Any, table: str) -> dict[tuple[str, str], str]:
    """Every item of ``table`` as a digest, by (partition key, sort key)."""
    out = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            key = (item["caller_phone"]["S"], item["occurred_at"]["S"])
            out[key] = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
    return out


def _certificate(d: Deployment, plan_id: str) -> dict[str, Any]:
    with psycopg.connect(d.app_url) as conn:
        row = conn.execute("SELECT certificate FROM governance.erasure_certificates WHERE plan_id = %s", (plan_id,)).fetchone()
    assert row is not None
    return dict(row[0])


def test_a_person_present_only_in_dynamodb_is_erased_there_nothing_else_changes_and_a_restore_is_erased_again(
    shared_clone: Deployment,  # noqa: F811 - fixture
    dynamodb: Any,
) -> None:
    d = shared_clone
    assert d.events_table is not None
    mine = items_of(dynamodb, d.events_table, EVENTS_ONLY_PHONE)
    assert len(mine) == EVENTS_ONLY_ITEMS
    before_items, before_rows = fingerprint(dynamodb, d.events_table), snapshot(d.app_url)
    restored = dynamodb.query(TableName=d.events_table, KeyConditionExpression="caller_phone = :p",
                              ExpressionAttributeValues={":p": {"S": EVENTS_ONLY_PHONE}})["Items"]  # fmt: skip

    run = run_erasure({"phone": EVENTS_ONLY_PHONE}, "dynamodb_only")
    assert run.summary["items"] == {EVENTS: EVENTS_ONLY_ITEMS}
    assert not any(run.summary["tables"].get(t, {}).get("delete_rows") for t in run.summary["tables"])
    assert run.results["objects"]["items"] == {EVENTS: EVENTS_ONLY_ITEMS}
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"

    after_items = fingerprint(dynamodb, d.events_table)
    assert items_of(dynamodb, d.events_table, EVENTS_ONLY_PHONE) == []
    assert set(before_items) - set(after_items) == {(EVENTS_ONLY_PHONE, k) for k in mine}
    assert {k: v for k, v in before_items.items() if k[0] != EVENTS_ONLY_PHONE} == after_items
    assert all(not change["deleted"] and not change["changed"] for change in diff(before_rows, snapshot(d.app_url)).values())

    certificate = _certificate(d, run.summary["plan_id"])
    systems = {s["system"]: s for s in certificate["systems"]}
    assert systems["aircalls_events"] == {"system": "aircalls_events", "kind": "dynamodb", "tables": 1,
                                          "rows": EVENTS_ONLY_ITEMS, "done": True}  # fmt: skip
    assert [c for c in certificate["verification"]["checks"] if c["where"] == EVENTS] == [
        {"where": EVENTS, "kind": "items", "expected": 0, "observed": 0, "success": True}]  # fmt: skip
    assert EVENTS_ONLY_PHONE not in json.dumps(certificate)

    # A rerun of the item step is a no-op (the step is recorded as done).
    from governance.workflows import dsr_erasure as wf

    assert wf.delete_objects(run.summary)["items"] == {EVENTS: EVENTS_ONLY_ITEMS}
    assert fingerprint(dynamodb, d.events_table) == after_items

    # A restore brings the items back, and the person calls again afterwards: reapply-suppressions
    # erases the restored items (recorded before the erasure) and keeps the new one.
    from governance.erasure.reapply import reapply_suppressions

    for item in restored:
        dynamodb.put_item(TableName=d.events_table, Item=item)
    later = {**restored[0], "occurred_at": {"S": "2099-01-01T00:00:00Z#new"}}
    dynamodb.put_item(TableName=d.events_table, Item=later)
    dry = reapply_suppressions(as_of=datetime.now(UTC), dry_run=True, request_id=run.handle["request_id"])
    assert dry["items"] == EVENTS_ONLY_ITEMS and len(items_of(dynamodb, d.events_table, EVENTS_ONLY_PHONE)) == EVENTS_ONLY_ITEMS + 1
    summary = reapply_suppressions(as_of=datetime.now(UTC), dry_run=False, request_id=run.handle["request_id"])
    assert summary["items"] == EVENTS_ONLY_ITEMS and summary["requests"][0]["items"] == {EVENTS: EVENTS_ONLY_ITEMS}
    assert items_of(dynamodb, d.events_table, EVENTS_ONLY_PHONE) == ["2099-01-01T00:00:00Z#new"]
    assert EVENTS_ONLY_PHONE not in json.dumps(summary, default=str)


def test_a_caller_erased_everywhere_loses_their_call_events_and_nobody_elses_change(
    shared_clone: Deployment,  # noqa: F811 - fixture
    dynamodb: Any,
) -> None:
    d = shared_clone
    assert d.events_table is not None
    member = cast_member("caller_only")
    assert member.e164 is not None
    mine = items_of(dynamodb, d.events_table, member.e164)
    with psycopg.connect(d.app_url) as conn:
        calls = conn.execute("SELECT count(*) FROM app.calls WHERE caller_id = ANY(%s)", (list(member.caller_ids),)).fetchone()
    assert calls is not None and len(mine) == 2 * calls[0] > 0, "two events per call of a cast caller"
    before_items = fingerprint(dynamodb, d.events_table)

    run = run_erasure(conf_for("caller_only"), "dynamodb_caller")
    assert run.summary["items"] == {EVENTS: len(mine)}
    assert run.results["verify"]["passed"]
    after_items = fingerprint(dynamodb, d.events_table)
    assert set(before_items) - set(after_items) == {(member.e164, k) for k in mine}
    assert {k: v for k, v in before_items.items() if k[0] != member.e164} == after_items


def test_items_under_a_phone_shared_with_another_person_are_left_out_not_deleted(
    shared_clone: Deployment,  # noqa: F811 - fixture
    dynamodb: Any,
) -> None:
    d = shared_clone
    assert d.events_table is not None
    member = cast_member("household_a")  # shares the household phone with household_b
    assert member.e164 is not None
    shared = items_of(dynamodb, d.events_table, member.e164)
    assert shared, "both household callers' calls left events under the one phone"
    run = run_erasure(conf_for("household_a"), "dynamodb_household", until="plan")
    assert run.summary["items"] == {}
    assert {"where": EVENTS, "count": len(shared), "reason": "shared_identity"} in run.summary["excluded"]
    assert items_of(dynamodb, d.events_table, member.e164) == shared
