"""The call-event store of the reference deployment (DynamoDB; moto's server locally), loaded from
the app database as the telephony pipeline would have written it.

Deterministic: the items are a pure function of the app's rows (generated from a seed), so the
same cast is in the store at every scale:

* two items per sampled call (``ringing`` at the call's start, then its outcome at the end),
  keyed by the caller's phone (E.164, the partition key) and the event time (the sort key:
  ISO-8601 UTC, then ``#`` and the event id, so two events of one phone never collide); every call
  of a cast caller is sampled, and one call in :data:`SAMPLE_EVERY` of the rest (small: 1,000
  bulk items; large: 200,000);
* each item has a payload (a map: outcome, duration, the number that called) and a TTL
  (``expires_at``, epoch seconds: the event time plus :data:`TTL_DAYS`, within the map's
  ``call_events_1_year`` rule), except the events of one bulk call in :data:`TTL_DRIFT_EVERY`,
  as an older writer left them: without a TTL (call id ending in :data:`NO_TTL_AT`) or with one
  too late (:data:`LATE_TTL_AT`, :data:`LATE_TTL_DAYS`): the retention sweep corrects them;
* :data:`EVENTS_ONLY_PHONE`: a person present **only** in the event store (missed calls the
  app never recorded): :data:`EVENTS_ONLY_ITEMS` items at business C and none anywhere else.

Counts only are logged, never an item.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from governance_dev.seed.cast import BUSINESS_C, CAST_ID_BASE
from governance_dev.seed.load import SeedRefused

log = logging.getLogger("governance_dev.seed")

CALL_EVENTS_TABLE = "aircalls-call-events"
BUSINESS_INDEX = "by_business"
TTL_ATTRIBUTE = "expires_at"
TTL_DAYS = 365
# Bulk calls whose events carry no TTL or one later than the rule allows (by call id modulo).
TTL_DRIFT_EVERY = 200  # sampled bulk call ids are multiples of SAMPLE_EVERY
NO_TTL_AT = 20
LATE_TTL_AT = 40
LATE_TTL_DAYS = 1000
SAMPLE_EVERY = {"small": 20, "large": 10}
BATCH = 25  # BatchWriteItem's limit

# A fictional number (the 555-01xx range the cast uses) that no app row holds.
EVENTS_ONLY_PHONE = "+13125550188"
EVENTS_ONLY_ITEMS = 3
EVENTS_ONLY_START = datetime(2026, 10, 5, 9, 30, tzinfo=UTC)

_EXTRACT = (
    "SELECT c.id, c.business_id, ca.phone, c.started_at, c.duration_s, c.outcome"
    " FROM app.calls c JOIN app.callers ca ON ca.id = c.caller_id"
    " WHERE c.id %% %s = 0 OR c.caller_id > %s ORDER BY c.id"
)


class EventStoreRefused(SeedRefused):
    """The call-event table already holds items and ``replace`` was not given; nothing was changed."""


@dataclass(frozen=True)
class EventStoreLoad:
    items: int
    seconds: float


def create_call_events_table(client: Any, table_name: str) -> None:
    """Create the table as the data map declares it (keys, the business index, TTL), on-demand
    capacity; a table that exists already is left as it is."""
    try:
        client.describe_table(TableName=table_name)
        return
    except client.exceptions.ResourceNotFoundException:
        pass
    client.create_table(
        TableName=table_name,
        AttributeDefinitions=[
            {"AttributeName": "caller_phone", "AttributeType": "S"},
            {"AttributeName": "occurred_at", "AttributeType": "S"},
            {"AttributeName": "business_id", "AttributeType": "N"},
        ],
        KeySchema=[
            {"AttributeName": "caller_phone", "KeyType": "HASH"},
            {"AttributeName": "occurred_at", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": BUSINESS_INDEX,
                "KeySchema": [
                    {"AttributeName": "business_id", "KeyType": "HASH"},
                    {"AttributeName": "occurred_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    client.update_time_to_live(TableName=table_name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def call_event_item(*, phone: str, business_id: int, moment: datetime, event_id: str, event_type: str,
                    payload: dict[str, Any], call_id: int | None, ttl_days: int | None = TTL_DAYS) -> dict[str, Any]:  # fmt: skip
    """One item in DynamoDB's wire format (``ttl_days`` None: no TTL attribute)."""
    item: dict[str, Any] = {
        "caller_phone": {"S": phone},
        "occurred_at": {"S": f"{_iso(moment)}#{event_id}"},
        "business_id": {"N": str(business_id)},
        "event_type": {"S": event_type},
        "payload": {"M": {k: ({"N": str(v)} if isinstance(v, int) else {"S": str(v)}) for k, v in payload.items()}},
    }
    if ttl_days is not None:
        item[TTL_ATTRIBUTE] = {"N": str(int((moment + timedelta(days=ttl_days)).timestamp()))}
    if call_id is not None:
        item["call_id"] = {"N": str(call_id)}
    return item


def events_only_items() -> list[dict[str, Any]]:
    """The items of the person present only in the event store (missed calls at business C)."""
    return [
        call_event_item(phone=EVENTS_ONLY_PHONE, business_id=BUSINESS_C, moment=EVENTS_ONLY_START + timedelta(days=n),
                        event_id=f"x{n:03d}", event_type="missed", call_id=None,
                        payload={"outcome": "missed", "duration_s": 0, "from": EVENTS_ONLY_PHONE})  # fmt: skip
        for n in range(EVENTS_ONLY_ITEMS)
    ]


def ttl_days_of(call_id: int) -> int | None:
    """Days from an event to its TTL for the events of ``call_id`` (None: no TTL). Cast callers'
    calls (ids from CAST_ID_BASE) always get the normal TTL."""
    if call_id >= CAST_ID_BASE:
        return TTL_DAYS
    drift = call_id % TTL_DRIFT_EVERY
    return None if drift == NO_TTL_AT else LATE_TTL_DAYS if drift == LATE_TTL_AT else TTL_DAYS


def call_event_items(app_conninfo: str, scale: str) -> Iterator[dict[str, Any]]:
    """Every item of ``scale``, streamed from the app's calls (a server-side cursor: flat memory)."""
    every = SAMPLE_EVERY.get(scale, SAMPLE_EVERY["small"])
    with psycopg.connect(app_conninfo, application_name="governance-seed-events") as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with conn.cursor(name="call_events_extract") as cursor:
            cursor.itersize = 5000
            for call_id, business_id, phone, started_at, duration_s, outcome in cursor.execute(
                _EXTRACT, (every, CAST_ID_BASE)
            ):
                base = {"from": phone, "duration_s": int(duration_s or 0), "outcome": outcome}
                ttl_days = ttl_days_of(call_id)
                yield call_event_item(phone=phone, business_id=business_id, moment=started_at, call_id=call_id,
                                      event_id=f"{call_id}-1", event_type="ringing", payload=base, ttl_days=ttl_days)  # fmt: skip
                yield call_event_item(phone=phone, business_id=business_id, call_id=call_id, event_id=f"{call_id}-2",
                                      moment=started_at + timedelta(seconds=int(duration_s or 0)),
                                      event_type=str(outcome), payload=base, ttl_days=ttl_days)  # fmt: skip
    yield from events_only_items()


def _write_batch(client: Any, table_name: str, items: list[dict[str, Any]]) -> None:
    requests = {table_name: [{"PutRequest": {"Item": item}} for item in items]}
    delay = 0.05
    while requests:
        result = client.batch_write_item(RequestItems=requests)
        requests = result.get("UnprocessedItems") or {}
        if requests:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _batches(items: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def table_holds_items(client: Any, table_name: str) -> bool:
    try:
        return bool(client.scan(TableName=table_name, Limit=1, Select="COUNT").get("Count"))
    except client.exceptions.ResourceNotFoundException:
        return False


def load_call_events(app_conninfo: str, client: Any, table_name: str, *, scale: str, replace: bool,
                     workers: int = 8) -> EventStoreLoad:  # fmt: skip
    """Create the table (if needed) and write every item of ``scale``; EventStoreRefused before
    anything changes when it holds items and not ``replace`` (then it is emptied first)."""
    started = time.perf_counter()
    if table_holds_items(client, table_name):
        if not replace:
            raise EventStoreRefused(
                f"the call-event table {table_name!r} already holds items; nothing was changed. Use an empty "
                "table, or pass replace=True (command line: --replace)."
            )
        client.delete_table(TableName=table_name)
        client.get_waiter("table_not_exists").wait(TableName=table_name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    create_call_events_table(client, table_name)
    count = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:  # boto3 clients are thread-safe
        pending = []
        for batch in _batches(call_event_items(app_conninfo, scale)):
            count += len(batch)
            pending.append(pool.submit(_write_batch, client, table_name, batch))
            if len(pending) >= workers * 4:  # bounded: memory stays flat on the large seed
                for future in pending:
                    future.result()
                pending = []
        for future in pending:
            future.result()
    log.info("loaded call events into %s: %d items", table_name, count)
    return EventStoreLoad(count, time.perf_counter() - started)


def copy_call_events(client: Any, source: str, target: str) -> int:
    """A fresh copy of ``source`` in ``target`` (tests: one table per test, the shared one never
    re-seeded). Scans ``source``: a fixture's copy, not a governance operation."""
    create_call_events_table(client, target)
    count = 0
    for page in client.get_paginator("scan").paginate(TableName=source):
        for batch in _batches(iter(page.get("Items", []))):
            _write_batch(client, target, batch)
            count += len(batch)
    return count
