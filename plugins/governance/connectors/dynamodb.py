"""DynamoDB tables (``kind: dynamodb``) through the amazon provider's ``DynamoDBHook``.

A person's items are found by a ``Query`` on the table's partition key (an identity kind, the
normalised value: E.164 for a phone), a business client's by a ``Query`` on the index the map
declares for business look-ups. Nothing here scans a table for one person: the data map refuses a
table where that would be needed (``governance.datamap.loader``), and :func:`person_queries` /
:func:`business_queries` only ever build ``Query`` requests. The plan (:class:`ItemQuery`) is pure
and kept apart from running it.

Erasure deletes whole items with ``BatchWriteItem`` (25 keys a call): ``UnprocessedItems`` are
sent again and throttling (``ProvisionedThroughputExceededException``, ``ThrottlingException``,
``RequestLimitExceeded``) is retried with exponential backoff, both bounded; deleting an item that
is gone already is a no-op, so a retried step has no double effect.

Item contents are personal data: nothing here logs an item, a key or a phone number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError

from governance.connectors.base import Connector
from governance.datamap.model import DataMap, DynamoDBSystem, ItemTable
from governance.deadlines import Deadlines
from governance.objectstore import require_connection

log = logging.getLogger(__name__)

BATCH_WRITE_LIMIT = 25  # DynamoDB's limit for one BatchWriteItem call
THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
DEFAULT_ATTEMPTS = 8
DEFAULT_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0


class ItemStoreThrottled(RuntimeError):
    """DynamoDB kept throttling (or leaving items unprocessed) after every retry; what was deleted
    stays deleted and a rerun continues (deletes are idempotent)."""


# --------------------------------------------------------------------------------------------
# The plan (pure)


@dataclass(frozen=True)
class ItemQuery:
    """One ``Query`` finding items of a table: by the table's partition key (``index`` None) or an
    index's. ``by`` says what the key holds: an identity kind (``identity:phone``) or ``business``.
    ``scope_attribute`` is the attribute naming the business client, when the table has one (a
    business-scoped request or a business hold filters on it)."""

    system: str
    table: str
    table_name: str
    connection_id: str
    index: str | None
    key_attribute: str
    key_type: Literal["S", "N"]
    by: str
    key_attributes: tuple[str, ...]
    scope_attribute: str | None
    ttl_attribute: str | None = None

    @property
    def where(self) -> str:
        return f"{self.system}.{self.table}"

    @property
    def step_id(self) -> str:
        return f"items:{self.system}:{self.table}"

    def request(self, value: Any, *, keys_only: bool) -> dict[str, Any]:
        """The ``Query`` arguments for ``value`` (the key bound as an expression value, never
        written into the expression)."""
        args: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "#k = :v",
            "ExpressionAttributeNames": {"#k": self.key_attribute},
            "ExpressionAttributeValues": {":v": {self.key_type: str(value)}},
        }
        if self.index is not None:
            args["IndexName"] = self.index
        if keys_only:
            projected = list(dict.fromkeys([*self.key_attributes, *([self.scope_attribute] if self.scope_attribute else [])]))
            names = {f"#p{i}": name for i, name in enumerate(projected)}
            args["ExpressionAttributeNames"].update(names)
            args["ProjectionExpression"] = ", ".join(names)
        return args


def _query(system: DynamoDBSystem, table: ItemTable, *, index: str | None, key: Any, by: str) -> ItemQuery:
    business = table.business_index
    return ItemQuery(
        system=system.name, table=table.name, table_name=table.table_name.resolve(), connection_id=system.connection_id,
        index=index, key_attribute=key.attribute, key_type=key.type, by=by, key_attributes=tuple(table.key_attributes),
        scope_attribute=business.partition_key.attribute if business else None, ttl_attribute=table.ttl_attribute,
    )  # fmt: skip


def person_queries(datamap: DataMap, kinds: Iterable[str]) -> list[ItemQuery]:
    """The Queries finding a person known by identity ``kinds``: the partition key of each table
    holding one of them, and each index whose partition key is a declared identity."""
    wanted = set(kinds)
    queries: list[ItemQuery] = []
    for system, table in datamap.item_tables():
        if table.partition_key.kind in wanted:
            queries.append(_query(system, table, index=None, key=table.partition_key, by=f"identity:{table.partition_key.kind}"))
        for identity in table.identities:
            index = next((i for i in table.indexes if i.partition_key.attribute == identity.field), None)
            if identity.kind in wanted and index is not None:
                queries.append(_query(system, table, index=index.name, key=index.partition_key, by=f"identity:{identity.kind}"))
    return queries


def business_queries(datamap: DataMap) -> list[ItemQuery]:
    """The Queries finding a business client's items: each table's business index."""
    queries: list[ItemQuery] = []
    for system, table in datamap.item_tables():
        index = table.business_index
        if index is not None:
            queries.append(_query(system, table, index=index.name, key=index.partition_key, by="business"))
    return queries


def tables_without_business_index(datamap: DataMap) -> list[str]:
    """Tables an offboarding cannot reach without a Scan (named in the plan, never scanned)."""
    return [f"{s.name}.{t.name}" for s, t in datamap.item_tables() if t.business_index is None]


# --------------------------------------------------------------------------------------------
# The client


def dynamodb_hook(conn_id: str) -> Any:
    """The ``DynamoDBHook`` of the Airflow connection ``conn_id`` (type ``aws``: keys, role,
    region, ``endpoint_url`` for DynamoDB Local or moto), with the project's deadlines."""
    from airflow.providers.amazon.aws.hooks.dynamodb import DynamoDBHook
    from botocore.config import Config

    hook = DynamoDBHook(aws_conn_id=conn_id)
    require_connection(hook, conn_id)
    wrapper = hook.conn_config
    bounded = Config(**Deadlines.from_env().s3_config())
    wrapper.botocore_config = bounded if wrapper.botocore_config is None else bounded.merge(wrapper.botocore_config)
    return hook


def dynamodb_client(conn_id: str) -> Any:
    """A plain boto3 DynamoDB client on the hook's session, endpoint, config and TLS setting.

    Not ``DynamoDBHook.client``: that is the *resource's* client, whose handlers re-serialise
    wire-format values (``{"S": ...}`` would be sent as a map), so key conditions would match
    nothing."""
    hook = dynamodb_hook(conn_id)
    return hook.get_session().client(
        "dynamodb", endpoint_url=hook.conn_config.get_service_endpoint_url(service_name="dynamodb"),
        config=hook.config, verify=hook.verify,
    )  # fmt: skip


def item_client_for(datamap: DataMap) -> Callable[[str], Any]:
    """system name -> the DynamoDB client of its connection (one per system, built on first use)."""
    clients: dict[str, Any] = {}

    def client_for(system: str) -> Any:
        if system not in clients:
            found = datamap.system(system)
            if not isinstance(found, DynamoDBSystem):
                raise LookupError(f"no DynamoDB system {system!r} in the data map")
            clients[system] = dynamodb_client(found.connection_id)
        return clients[system]

    return client_for


def item_table_size(client: Any, table_name: str) -> int:
    """The table's item count as DynamoDB reports it (``DescribeTable``: refreshed about every six
    hours in AWS, like PostgreSQL's planner statistics): what the safety guard compares a plan with."""
    return int(client.describe_table(TableName=table_name)["Table"].get("ItemCount") or 0)


def client_region(client: Any) -> str:
    return str(getattr(getattr(client, "meta", None), "region_name", None) or "us-east-1")


class ItemStoreConnector(Connector):
    """A DynamoDB system (``kind: dynamodb``): the hook's client serves Queries and deletes."""

    kind: ClassVar[str] = "dynamodb"

    def __init__(self, connection_id: str, table_names: Sequence[str] = ()) -> None:
        self.connection_id = connection_id
        self.table_names = list(table_names)

    def client(self) -> Any:
        return dynamodb_client(self.connection_id)

    def test(self) -> tuple[bool, str]:
        """Each table answers ``DescribeTable`` (or the table list does)."""
        try:
            client = self.client()
            for name in self.table_names:
                client.describe_table(TableName=name)
            if not self.table_names:
                client.list_tables(Limit=1)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "DynamoDB reachable" + (f" (tables {', '.join(self.table_names)})" if self.table_names else "")


# --------------------------------------------------------------------------------------------
# Running the plan


def plain(value: Any) -> Any:
    """An item's wire value (``{"S": ...}``) as JSON-safe Python (numbers as int or float)."""
    from boto3.dynamodb.types import TypeDeserializer

    def convert(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, set | frozenset):
            return sorted(convert(x) for x in v)
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in sorted(v.items())}
        if isinstance(v, bytes | bytearray):
            return v.hex()
        return v

    deserializer = TypeDeserializer()
    return {name: convert(deserializer.deserialize(v)) for name, v in sorted(value.items())}


def _throttled(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in THROTTLING_CODES


def _call(fn: Callable[..., Any], *, attempts: int, backoff_s: float, sleep: Callable[[float], None], **kwargs: Any) -> Any:
    """``fn(**kwargs)``, retried with exponential backoff while DynamoDB throttles."""
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if not _throttled(exc) or attempt == attempts:
                if _throttled(exc):
                    raise ItemStoreThrottled(f"DynamoDB throttled {attempts} attempts in a row; a rerun continues") from exc
                raise
            log.info("DynamoDB throttled (%s); retrying in %.2f s", exc.response["Error"]["Code"], delay)
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")


def query_pages(client: Any, query: ItemQuery, value: Any, *, keys_only: bool, attempts: int = DEFAULT_ATTEMPTS,
                backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], None] = time.sleep) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
    """The items the Query finds, page by page (memory bounded by a page)."""
    yield from _pages(client.query, query.request(value, keys_only=keys_only), attempts=attempts, backoff_s=backoff_s,
                      sleep=sleep)  # fmt: skip


def _pages(call: Callable[..., Any], request: Mapping[str, Any], *, attempts: int, backoff_s: float,
           sleep: Callable[[float], None]) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
    """The items of a paginated Query or Scan, page by page, throttling retried with backoff."""
    args = dict(request)
    while True:
        page = _call(call, attempts=attempts, backoff_s=backoff_s, sleep=sleep, **args)
        yield list(page.get("Items", []))
        last = page.get("LastEvaluatedKey")
        if not last:
            return
        args["ExclusiveStartKey"] = last


def _scope_of(item: Mapping[str, Any], attribute: str | None) -> int | str | None:
    if attribute is None or attribute not in item:
        return None
    wire = item[attribute]
    if "N" in wire:
        number = Decimal(wire["N"])
        return int(number) if number == number.to_integral_value() else str(number)
    return str(next(iter(wire.values())))


def item_keys(client: Any, query: ItemQuery, values: Iterable[Any], *, business_id: int | None = None,
              held_businesses: Iterable[Any] = (), **retry: Any) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """The keys (wire format) of the items ``query`` finds for ``values``, deduplicated, in key
    order: only those of ``business_id`` when given; items of ``held_businesses`` are left out and
    counted (second value)."""
    held = {int(b) for b in held_businesses}
    found: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    kept = 0
    for value in dict.fromkeys(values):
        for page in query_pages(client, query, value, keys_only=True, **retry):
            for item in page:
                scope = _scope_of(item, query.scope_attribute)
                if business_id is not None and scope != business_id:
                    continue
                if scope in held:
                    kept += 1
                    continue
                key = {name: item[name] for name in query.key_attributes}
                found[tuple(sorted((k, str(v)) for k, v in key.items()))] = key
    return [found[k] for k in sorted(found)], kept


def delete_keys(client: Any, table_name: str, keys: Sequence[Mapping[str, Any]], *, attempts: int = DEFAULT_ATTEMPTS,
                backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], None] = time.sleep,
                on_batch: Callable[[int], None] | None = None) -> int:  # fmt: skip
    """Delete the items of ``keys`` with ``BatchWriteItem``, 25 a call; ``UnprocessedItems`` are
    sent again and throttling is retried, with exponential backoff (``attempts`` tries of one
    batch in a row without progress). Returns the number of keys deleted (already-gone keys
    included: DynamoDB does not say, and deleting them is a no-op). ``on_batch(n)`` after each
    batch is fully written."""
    deleted = 0
    for start in range(0, len(keys), BATCH_WRITE_LIMIT):
        pending = [{"DeleteRequest": {"Key": dict(key)}} for key in keys[start : start + BATCH_WRITE_LIMIT]]
        delay = backoff_s
        stalls = 0
        while pending:
            result = _call(client.batch_write_item, attempts=attempts, backoff_s=backoff_s, sleep=sleep,
                           RequestItems={table_name: pending})  # fmt: skip
            left = list((result.get("UnprocessedItems") or {}).get(table_name, []))
            if not left:
                break
            stalls = stalls + 1 if len(left) == len(pending) else 0
            if stalls >= attempts:
                raise ItemStoreThrottled(
                    f"DynamoDB left {len(left)} deletes unprocessed {attempts} times in a row; a rerun continues"
                )
            log.info("DynamoDB left %d of %d deletes unprocessed; retrying in %.2f s", len(left), len(pending), delay)
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            pending = left
        batch = min(BATCH_WRITE_LIMIT, len(keys) - start)
        deleted += batch
        if on_batch is not None:
            on_batch(batch)
    return deleted


def person_items(client: Any, query: ItemQuery, values: Iterable[Any], *, business_id: int | None = None,
                 expired_before: int | None = None, **retry: Any) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The person's whole items (JSON-safe), for an export, in key order per value. With
    ``expired_before`` (epoch seconds), items whose TTL attribute (``query.ttl_attribute``) is
    earlier are left out: expired, only not yet removed by DynamoDB (which deletes lazily)."""
    for value in dict.fromkeys(values):
        for page in query_pages(client, query, value, keys_only=False, **retry):
            for item in page:
                if business_id is not None and _scope_of(item, query.scope_attribute) != business_id:
                    continue
                if expired_before is not None and is_expired(item, query.ttl_attribute, expired_before):
                    continue
                yield plain(item)


# --------------------------------------------------------------------------------------------
# TTL retention: a whole-table sweep (see governance.datamap.plans.ItemTtlRetention)


def ttl_of(item: Mapping[str, Any], ttl_attribute: str | None) -> int | None:
    """The item's TTL in epoch seconds, or None when it has none DynamoDB would act on (missing,
    not a number: DynamoDB ignores a TTL attribute that is not ``N``)."""
    if ttl_attribute is None:
        return None
    wire = item.get(ttl_attribute)
    if not isinstance(wire, Mapping) or "N" not in wire:
        return None
    try:
        return int(Decimal(wire["N"]))
    except ArithmeticError:
        return None


def is_expired(item: Mapping[str, Any], ttl_attribute: str | None, now_epoch: int) -> bool:
    """The item's TTL has passed (DynamoDB may not have deleted it yet): reads treat it as gone."""
    ttl = ttl_of(item, ttl_attribute)
    return ttl is not None and ttl < now_epoch


def scan_pages(client: Any, request: Mapping[str, Any], *, attempts: int = DEFAULT_ATTEMPTS,
               backoff_s: float = DEFAULT_BACKOFF_S, sleep: Callable[[float], None] = time.sleep) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
    """One segment of a parallel ``Scan``, page by page (memory bounded by a page), throttling
    retried with backoff. Only for whole-table retention: a person is never found by a Scan."""
    yield from _pages(client.scan, request, attempts=attempts, backoff_s=backoff_s, sleep=sleep)


@dataclass(frozen=True)
class TtlChange:
    """One item's new TTL (epoch seconds): set where it had none, lowered where it was later."""

    key: Mapping[str, Any]
    expires_at: int


def set_ttls(client: Any, table_name: str, ttl_attribute: str, changes: Sequence[TtlChange], *,
             attempts: int = DEFAULT_ATTEMPTS, backoff_s: float = DEFAULT_BACKOFF_S,
             sleep: Callable[[float], None] = time.sleep) -> int:  # fmt: skip
    """Write each change with ``UpdateItem`` (``SET ttl = :e``) conditioned on the item existing
    and its TTL still missing, not a number or later than ``:e``: an item deleted meanwhile is not
    re-created and a TTL someone lowered meanwhile is kept. Throttling is retried with exponential
    backoff (``ItemStoreThrottled`` after ``attempts`` in a row; a rerun continues: the update is
    idempotent). Returns the number of items changed (failed conditions are not counted).

    ``UpdateItem`` rather than ``BatchWriteItem``: a batched put would rewrite whole items, so it
    would need every attribute read (the payload too) and could overwrite a concurrent write."""
    changed = 0
    for change in changes:
        key_names = {f"#k{i}": name for i, name in enumerate(change.key)}
        try:
            _call(
                client.update_item, attempts=attempts, backoff_s=backoff_s, sleep=sleep, TableName=table_name,
                Key=dict(change.key), UpdateExpression="SET #t = :e",
                ConditionExpression=" AND ".join(f"attribute_exists({k})" for k in key_names)
                + " AND (attribute_not_exists(#t) OR NOT attribute_type(#t, :n) OR #t > :e)",
                ExpressionAttributeNames={"#t": ttl_attribute, **key_names},
                ExpressionAttributeValues={":e": {"N": str(change.expires_at)}, ":n": {"S": "N"}},
            )  # fmt: skip
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                continue
            raise
        changed += 1
    return changed
