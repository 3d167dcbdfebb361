"""Retention of DynamoDB tables by their TTL attribute (action ``ttl``; the plan is
:class:`governance.datamap.plans.ItemTtlRetention`).

Contract of :func:`sweep_item_rule`:

* reads the whole table once with a parallel, paginated ``Scan`` projecting only the key, age
  and TTL attributes (and the business attribute when a business hold is in force). A Scan is
  right here and only here: the rule is about every item, not one person, and a Scan is the only
  read that visits every item. Finding one person stays a ``Query`` (the planner refuses a Scan);
* per item, the rule's limit is age + period (calendar, UTC). An item with no TTL gets the limit;
  an item whose TTL is later gets it lowered to the limit; an earlier TTL is left as it is;
* an item already past its TTL (or its limit) by more than ``expired_grace_days`` is deleted
  (``BatchWriteItem``): DynamoDB deletes expired items lazily (typically within days; moto never
  does), and until then reads (exports) leave them out by their TTL;
* held items (a table hold ``<system>.<table>``, a business hold on the item's business, a person
  hold on the keyed hash of the partition key) are counted and never expired: a TTL they carry is
  removed, so DynamoDB cannot delete them behind the hold's back; once the hold ends, the next
  sweep gives them their TTL again (or deletes them when overdue);
* a dry run scans the same and counts the same, changing nothing; a second run changes nothing;
* counts only: no key, phone or value is logged.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from governance.connectors.dynamodb import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_S,
    TtlChange,
    _call,
    delete_keys,
    scan_pages,
    set_ttls,
    ttl_of,
)
from governance.datamap.model import RetentionPeriod
from governance.datamap.plans import ItemTtlRetention

log = logging.getLogger(__name__)

DEFAULT_SEGMENTS = 4
DEFAULT_PAGE_LIMIT = 1000

# Keys of ItemTally.counts (and of the rule's ``cascade`` record in governance.retention_runs).
TTL_SET = "ttl set"
TTL_LOWERED = "ttl lowered"
DELETED_PAST_TTL = "deleted past ttl"
TTL_REMOVED_HELD = "ttl removed (held)"
AGE_UNREADABLE = "age unreadable"
UNCHANGED = "unchanged"


def shift(moment: datetime, period: RetentionPeriod, sign: int = 1) -> datetime:
    """``moment ± period`` as PostgreSQL adds an interval in UTC: months (the day clamped to the
    month's end), then days."""
    moment = moment.astimezone(UTC)
    months = moment.month - 1 + sign * (period.years * 12 + period.months)
    year, month = moment.year + months // 12, months % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day) + timedelta(days=sign * period.days)


def parse_age(wire: Any) -> datetime | None:
    """An age attribute: epoch seconds (``N``) or ISO-8601 UTC text (``S``), the text optionally
    followed by ``#`` and more; None when it is neither."""
    if not isinstance(wire, Mapping):
        return None
    try:
        if "N" in wire:
            return datetime.fromtimestamp(float(Decimal(wire["N"])), UTC)
        if "S" in wire:
            text = str(wire["S"]).split("#", 1)[0].strip()
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, ArithmeticError, OverflowError):
        return None
    return None


@dataclass
class ItemHolds:
    """The holds in force, as an item sees them."""

    table_held: bool = False
    businesses: frozenset[int] = frozenset()
    # (identity kind, hash key id) -> keyed hashes of held people, and the hasher for that key
    persons: Mapping[str, set[str]] = field(default_factory=dict)  # key id -> digests (the table's kind)
    digest: Callable[[str, str], str] | None = None  # (key id, value) -> keyed hash of the partition key

    def held(self, item: Mapping[str, Any], plan: ItemTtlRetention) -> bool:
        if self.table_held:
            return True
        if self.businesses and plan.scope_attribute:
            wire = item.get(plan.scope_attribute)
            if isinstance(wire, Mapping) and "N" in wire and int(Decimal(wire["N"])) in self.businesses:
                return True
        if self.persons and self.digest is not None:
            wire = item.get(plan.partition_key)
            value = next(iter(wire.values())) if isinstance(wire, Mapping) and wire else None
            if value is not None:
                return any(self.digest(key_id, str(value)) in digests for key_id, digests in self.persons.items())
        return False


@dataclass
class ItemTally:
    """What one segment (and, added up, the rule) did or would do. Counts only."""

    scanned: int = 0
    held: int = 0
    pages: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    longest_page_ms: float = 0.0

    def add(self, other: ItemTally) -> None:
        self.scanned += other.scanned
        self.held += other.held
        self.pages += other.pages
        self.counts.update(other.counts)
        self.longest_page_ms = max(self.longest_page_ms, other.longest_page_ms)

    @property
    def affected(self) -> int:
        return sum(self.counts[k] for k in (TTL_SET, TTL_LOWERED, DELETED_PAST_TTL, TTL_REMOVED_HELD))

    @property
    def remaining(self) -> int:
        """Items (not held) still without a TTL within the rule, overdue, or with no readable age:
        what a verification pass expects to be zero."""
        return sum(self.counts[k] for k in (TTL_SET, TTL_LOWERED, DELETED_PAST_TTL, TTL_REMOVED_HELD, AGE_UNREADABLE))


def _remove_ttls(client: Any, plan: ItemTtlRetention, keys: list[dict[str, Any]], **retry: Any) -> int:
    removed = 0
    for key in keys:
        try:
            _call(client.update_item, TableName=plan.table_name, Key=key, UpdateExpression="REMOVE #t",
                  ConditionExpression="attribute_exists(#t)", ExpressionAttributeNames={"#t": plan.ttl_attribute},
                  **retry)  # fmt: skip
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                continue
            raise
        removed += 1
    return removed


def _sweep_segment(
    client: Any, plan: ItemTtlRetention, segment: int, total: int, *, as_of: datetime, dry_run: bool,
    holds: ItemHolds, page_limit: int, retry: dict[str, Any],
) -> ItemTally:  # fmt: skip
    tally = ItemTally()
    overdue_before = int((as_of - timedelta(days=plan.expired_grace_days)).timestamp())
    request = plan.scan_request(segment=segment, total_segments=total, limit=page_limit, with_scope=bool(holds.businesses))
    for page in scan_pages(client, request, **retry):
        started = time.monotonic()
        missing: list[TtlChange] = []
        later: list[TtlChange] = []
        deletes: list[dict[str, Any]] = []
        unhold: list[dict[str, Any]] = []
        for item in page:
            tally.scanned += 1
            key = {name: item[name] for name in plan.key_attributes}
            ttl = ttl_of(item, plan.ttl_attribute)
            if holds.held(item, plan):
                tally.held += 1
                if ttl is not None or plan.ttl_attribute in item:
                    unhold.append(key)
                continue
            age = parse_age(item.get(plan.age_attribute))
            if age is None:
                tally.counts[AGE_UNREADABLE] += 1
                continue
            limit = int(shift(age, plan.period).timestamp())
            effective = limit if ttl is None else min(ttl, limit)
            if effective < overdue_before:
                deletes.append(key)
            elif ttl is None:
                missing.append(TtlChange(key, limit))
            elif ttl > limit:
                later.append(TtlChange(key, limit))
            else:
                tally.counts[UNCHANGED] += 1
        if dry_run:
            tally.counts[TTL_SET] += len(missing)
            tally.counts[TTL_LOWERED] += len(later)
            tally.counts[DELETED_PAST_TTL] += len(deletes)
            tally.counts[TTL_REMOVED_HELD] += len(unhold)
        else:
            tally.counts[TTL_SET] += set_ttls(client, plan.table_name, plan.ttl_attribute, missing, **retry)
            tally.counts[TTL_LOWERED] += set_ttls(client, plan.table_name, plan.ttl_attribute, later, **retry)
            if deletes:
                tally.counts[DELETED_PAST_TTL] += delete_keys(client, plan.table_name, deletes, **retry)
            if unhold:
                tally.counts[TTL_REMOVED_HELD] += _remove_ttls(client, plan, unhold, **retry)
        tally.pages += 1
        tally.longest_page_ms = max(tally.longest_page_ms, (time.monotonic() - started) * 1000)
        log.info("%s: segment %d/%d page %d, %d items scanned, %d %s, %d held", plan.rule, segment + 1, total,
                 tally.pages, tally.scanned, tally.affected, "would change" if dry_run else "changed", tally.held)  # fmt: skip
    return tally


def sweep_item_rule(
    client: Any, plan: ItemTtlRetention, *, as_of: datetime, dry_run: bool, holds: ItemHolds,
    segments: int = DEFAULT_SEGMENTS, page_limit: int = DEFAULT_PAGE_LIMIT, attempts: int = DEFAULT_ATTEMPTS,
    backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], None] = time.sleep,
) -> ItemTally:  # fmt: skip
    """Run (or, in a dry run, count) the rule over every item: ``segments`` Scan segments in
    parallel, each page handled as it arrives (memory bounded by a page per segment)."""
    retry: dict[str, Any] = {"attempts": attempts, "backoff_s": backoff_s, "sleep": sleep}
    total = ItemTally()
    with ThreadPoolExecutor(max_workers=segments) as pool:  # boto3 clients are thread-safe
        futures = [pool.submit(_sweep_segment, client, plan, n, segments, as_of=as_of, dry_run=dry_run, holds=holds,
                               page_limit=page_limit, retry=retry) for n in range(segments)]  # fmt: skip
        for future in futures:
            total.add(future.result())
    return total


__all__ = ["ItemHolds", "ItemTally", "parse_age", "shift", "sweep_item_rule"]
