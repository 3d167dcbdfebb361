"""The DynamoDB connector against moto's server over real HTTP, and against a throttling stand-in.

moto never throttles, so throttling comes from :class:`ThrottlingProxy`: a small loopback HTTP
proxy in front of moto that answers the first BatchWriteItem calls with DynamoDB's real
``ProvisionedThroughputExceededException`` (HTTP 400, the JSON error body DynamoDB sends) and then
lets one call through only partly (half the deletes forwarded, the other half returned as
``UnprocessedItems``, as DynamoDB does under load). Everything else is forwarded unchanged, so the
items the test checks are really in moto. The client under test has botocore's own retries off,
so what is retried is the connector's doing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from governance.connectors.dynamodb import (
    ItemStoreThrottled,
    business_queries,
    delete_keys,
    item_keys,
    person_queries,
)
from governance.datamap import load_datamap
from governance_dev.seed.events import call_event_item, create_call_events_table
from tests.fixtures.dynamodb_throttling import ThrottlingProxy, unretried_client

pytestmark = pytest.mark.integration

PHONE = "+13125550177"
OTHER = "+13125550178"


def _client(endpoint: str) -> Any:
    return unretried_client(endpoint)


@pytest.fixture
def events_table(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh call-event table (named for this test) with 60 items of PHONE at businesses 3 and 4
    and 5 of OTHER at business 3."""
    from datetime import UTC, datetime, timedelta

    name = f"gt-connector-{uuid.uuid4().hex[:8]}"
    create_call_events_table(dynamodb, name)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    items = [call_event_item(phone=PHONE, business_id=3 + n % 2, moment=start + timedelta(minutes=n), event_id=f"t{n}",
                             event_type="ringing", payload={"from": PHONE}, call_id=n) for n in range(60)]  # fmt: skip
    items += [call_event_item(phone=OTHER, business_id=3, moment=start + timedelta(minutes=n), event_id=f"o{n}",
                              event_type="ringing", payload={"from": OTHER}, call_id=1000 + n) for n in range(5)]  # fmt: skip
    for item in items:
        dynamodb.put_item(TableName=name, Item=item)
    monkeypatch.setenv("GOVERNANCE_CALL_EVENTS_TABLE", name)
    yield name
    dynamodb.delete_table(TableName=name)


def _count(dynamodb: Any, table: str, phone: str) -> int:
    return int(dynamodb.query(TableName=table, KeyConditionExpression="caller_phone = :p", Select="COUNT",
                              ExpressionAttributeValues={":p": {"S": phone}})["Count"])  # fmt: skip


def test_the_planner_finds_a_person_and_a_business_by_query_never_by_scan(events_table: str, dynamodb: Any) -> None:
    datamap = load_datamap()
    [by_phone] = person_queries(datamap, ["phone"])
    assert person_queries(datamap, ["email"]) == []  # no table is keyed by e-mail: nothing to query, no scan
    assert by_phone.request(PHONE, keys_only=True)["KeyConditionExpression"] == "#k = :v"
    keys, kept = item_keys(dynamodb, by_phone, [PHONE], held_businesses=[4])
    assert (len(keys), kept) == (30, 30), "the items of the held business are left out and counted"
    scoped, _ = item_keys(dynamodb, by_phone, [PHONE], business_id=3)
    assert len(scoped) == 30 and {k["caller_phone"]["S"] for k in scoped} == {PHONE}
    [by_business] = business_queries(datamap)
    assert by_business.index == "by_business"
    business_keys, _ = item_keys(dynamodb, by_business, [3])
    assert {k["caller_phone"]["S"] for k in business_keys} >= {PHONE, OTHER}


def test_throttled_and_unprocessed_deletes_are_retried_with_backoff_until_every_item_is_gone(
    events_table: str, dynamodb: Any, s3_endpoint: str
) -> None:
    [query] = person_queries(load_datamap(), ["phone"])
    keys, _ = item_keys(dynamodb, query, [PHONE])
    slept: list[float] = []
    with ThrottlingProxy(s3_endpoint, throttle=3, partial=2) as proxy:
        deleted = delete_keys(_client(proxy.url), events_table, keys, attempts=5, backoff_s=0.01, sleep=slept.append)
    assert deleted == 60
    assert proxy.throttled == 3 and proxy.partial_answers == 2
    assert slept[:3] == [0.01, 0.02, 0.04], "exponential backoff while throttled"
    assert len(slept) == 5, "three throttles and two partly processed batches were each waited for"
    # Ground truth from moto directly: the person's items are gone, the other person's are all there.
    assert _count(dynamodb, events_table, PHONE) == 0
    assert _count(dynamodb, events_table, OTHER) == 5


def test_a_store_that_keeps_throttling_fails_the_step_and_a_rerun_finishes_it(
    events_table: str, dynamodb: Any, s3_endpoint: str
) -> None:
    [query] = person_queries(load_datamap(), ["phone"])
    keys, _ = item_keys(dynamodb, query, [PHONE])
    with ThrottlingProxy(s3_endpoint, throttle=100, partial=0) as proxy, pytest.raises(ItemStoreThrottled, match="rerun continues"):
        delete_keys(_client(proxy.url), events_table, keys, attempts=3, backoff_s=0.001, sleep=lambda _s: None)
    assert proxy.throttled == 3 and proxy.forwarded == 0
    assert _count(dynamodb, events_table, PHONE) == 60, "nothing was deleted while every call was throttled"
    assert delete_keys(dynamodb, events_table, keys) == 60
    assert _count(dynamodb, events_table, PHONE) == 0 and _count(dynamodb, events_table, OTHER) == 5
