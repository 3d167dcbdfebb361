"""The ttl retention of the call-event store (``call_events_1_year``) against moto's DynamoDB over
real HTTP. Every expectation is read back with the test's own boto3 calls: items without a TTL get
age + 1 year, a later TTL is lowered to it, an earlier one is left alone, items long past their TTL
(which moto, unlike DynamoDB, never expires) are deleted, held items keep no TTL, a dry run and a
second run change nothing, throttled updates are retried with backoff, and the planner still
never scans for one person."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from governance.connectors.dynamodb import person_items, person_queries
from governance.datamap import load_datamap
from governance.datamap.plans import ItemTtlRetention, build_retention_plan
from governance.retention.items import ItemHolds, sweep_item_rule
from governance_dev.seed.events import call_event_item, create_call_events_table
from tests.fixtures.dynamodb_throttling import ThrottlingProxy, unretried_client

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
PHONE = "+13125550177"
HELD_PHONE = "+13125550179"
HELD_BUSINESS = 9
HOLD_KEY = b"test-hold-key"


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def one_year_after(moment: datetime) -> int:
    return epoch(moment.replace(year=moment.year + 1))


def sort_key(moment: datetime, event: str) -> str:
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}#{event}"


# event id -> (age, TTL in days after the age or None, phone, business)
CASES: dict[str, tuple[datetime, int | None, str, int]] = {
    "missing": (AS_OF - timedelta(days=30), None, PHONE, 1),
    "late": (AS_OF - timedelta(days=30), 3 * 365, PHONE, 1),
    "earlier": (AS_OF - timedelta(days=5), 30, PHONE, 1),
    "within-grace": (AS_OF - timedelta(days=366), 365, PHONE, 1),  # TTL a day ago: DynamoDB's to remove
    "overdue": (AS_OF - timedelta(days=700), 365, PHONE, 1),
    "overdue-no-ttl": (AS_OF - timedelta(days=800), None, PHONE, 1),
    "held-business": (AS_OF - timedelta(days=700), 365, PHONE, HELD_BUSINESS),
    "held-person": (AS_OF - timedelta(days=30), 3 * 365, HELD_PHONE, 1),
}


@pytest.fixture
def events(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"gt-ttl-{uuid.uuid4().hex[:8]}"
    create_call_events_table(dynamodb, name)
    for event, (age, ttl_days, phone, business) in CASES.items():
        item = call_event_item(phone=phone, business_id=business, moment=age, event_id=event, event_type="ringing",
                               payload={"from": phone}, call_id=None, ttl_days=ttl_days)  # fmt: skip
        dynamodb.put_item(TableName=name, Item=item)
    # Bulk items, all within the rule: enough for several pages in every segment.
    for n in range(120):
        moment = AS_OF - timedelta(days=n % 300, minutes=n)
        dynamodb.put_item(TableName=name, Item=call_event_item(
            phone=f"+1312555{n:04d}", business_id=2, moment=moment, event_id=f"b{n}", event_type="answered",
            payload={"n": n}, call_id=n, ttl_days=200))  # fmt: skip
    monkeypatch.setenv("GOVERNANCE_CALL_EVENTS_TABLE", name)
    yield name
    dynamodb.delete_table(TableName=name)


def state(dynamodb: Any, table: str) -> dict[str, int | None]:
    """sort key -> TTL (None: no TTL), read with the test's own Scan."""
    out: dict[str, int | None] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            out[item["occurred_at"]["S"]] = int(item["expires_at"]["N"]) if "expires_at" in item else None
    return out


def rule() -> ItemTtlRetention:
    [plan] = build_retention_plan(load_datamap()).items
    return plan


def holds() -> ItemHolds:
    digest = hmac.new(HOLD_KEY, f"phone\x00{HELD_PHONE}".encode(), hashlib.sha256).hexdigest()
    return ItemHolds(
        businesses=frozenset({HELD_BUSINESS}), persons={"k1": {digest}},
        digest=lambda key_id, value: hmac.new(HOLD_KEY, f"phone\x00{value}".encode(), hashlib.sha256).hexdigest(),
    )  # fmt: skip


def test_sweep_sets_missing_lowers_late_keeps_earlier_deletes_overdue_and_skips_held_items(events: str, dynamodb: Any) -> None:
    before = state(dynamodb, events)
    plan = rule()
    assert plan.rule == "call_events_1_year" and plan.table_name == events
    assert "payload" not in plan.scan_request(segment=0, total_segments=4, limit=10, with_scope=True)["ExpressionAttributeNames"].values()

    dry = sweep_item_rule(dynamodb, plan, as_of=AS_OF, dry_run=True, holds=holds(), segments=3, page_limit=7)
    assert state(dynamodb, events) == before, "a dry run changes nothing"

    done = sweep_item_rule(dynamodb, plan, as_of=AS_OF, dry_run=False, holds=holds(), segments=3, page_limit=7)
    after = state(dynamodb, events)
    key = {event: sort_key(age, event) for event, (age, *_rest) in CASES.items()}
    age = {event: case[0] for event, case in CASES.items()}
    assert after[key["missing"]] == one_year_after(age["missing"])
    assert after[key["late"]] == one_year_after(age["late"])
    assert after[key["earlier"]] == before[key["earlier"]] == epoch(age["earlier"] + timedelta(days=30))
    assert after[key["within-grace"]] == before[key["within-grace"]], "expired a day ago: left to DynamoDB"
    assert key["overdue"] not in after and key["overdue-no-ttl"] not in after, "long past the rule: deleted"
    assert key["held-business"] in after and after[key["held-business"]] is None, "held: kept, its TTL removed"
    assert key["held-person"] in after and after[key["held-person"]] is None
    bulk = {k: v for k, v in after.items() if "#b" in k}
    assert len(bulk) == 120 and bulk == {k: v for k, v in before.items() if "#b" in k}, "bulk items within the rule untouched"
    # Every item not held: a TTL no later than its age + 1 year.
    for sk, ttl in after.items():
        if sk not in (key["held-business"], key["held-person"]):
            moment = datetime.fromisoformat(sk.split("#")[0].replace("Z", "+00:00"))
            assert ttl is not None and ttl <= one_year_after(moment), sk
    assert (done.held, done.counts["ttl set"], done.counts["ttl lowered"], done.counts["deleted past ttl"]) == (2, 1, 1, 2)
    assert done.counts["ttl removed (held)"] == 2 and done.scanned == len(before)
    assert (dry.counts, dry.held) == (done.counts, done.held), "the dry run counted what the sweep did"

    again = sweep_item_rule(dynamodb, plan, as_of=AS_OF, dry_run=False, holds=holds(), segments=2)
    assert state(dynamodb, events) == after and again.affected == 0 and again.remaining == 0

    # The hold ends: the next sweep gives the held items their TTL again (or deletes them).
    sweep_item_rule(dynamodb, plan, as_of=AS_OF, dry_run=False, holds=ItemHolds())
    released = state(dynamodb, events)
    assert key["held-business"] not in released and released[key["held-person"]] == one_year_after(age["held-person"])


def test_throttled_ttl_updates_are_retried_with_backoff(events: str, dynamodb: Any, s3_endpoint: str) -> None:
    slept: list[float] = []
    with ThrottlingProxy(s3_endpoint, throttle=3, operation="UpdateItem") as proxy:
        done = sweep_item_rule(unretried_client(proxy.url), rule(), as_of=AS_OF, dry_run=False, holds=ItemHolds(),
                               segments=1, backoff_s=0.01, sleep=slept.append)  # fmt: skip
    assert proxy.throttled == 3 and slept[:3] == [0.01, 0.02, 0.04]
    # No hold given: the held person's late TTL is lowered too, the held business's old item deleted.
    assert (done.counts["ttl set"], done.counts["ttl lowered"], done.counts["deleted past ttl"]) == (1, 2, 3)
    after = state(dynamodb, events)
    assert all(ttl is not None for ttl in after.values())


def test_an_export_leaves_out_items_past_their_ttl_and_the_planner_still_queries_one_person(events: str, dynamodb: Any) -> None:
    [query] = person_queries(load_datamap(), ["phone"])
    assert "KeyConditionExpression" in query.request(PHONE, keys_only=False)  # a Query, never a Scan
    everything = list(person_items(dynamodb, query, [PHONE]))
    live = list(person_items(dynamodb, query, [PHONE], expired_before=epoch(AS_OF)))
    expired = {i["occurred_at"] for i in everything} - {i["occurred_at"] for i in live}
    assert expired == {sort_key(CASES[e][0], e) for e in ("within-grace", "overdue", "held-business")}
