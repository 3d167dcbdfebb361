"""Erasure in DynamoDB tables: plan, delete and verify a person's (or a business's) items.

Each table of the map gets one :class:`~governance.erasure.planner.ItemWork`: the Query that finds
the items (partition key by identity, or the business index for an offboarding), how many it found
when planning, and the businesses whose items a legal hold keeps. The plan stores no key value
(a partition key is the person's phone); execution runs the same Query with the identities
decrypted inside the task and deletes what it finds with batched deletes
(:func:`governance.connectors.dynamodb.delete_keys`); one progress step per table
(``items:<system>:<table>``), so a rerun skips tables done and redoes a table cut short (a delete of
an item already gone is a no-op). Verification runs the Query once more and expects nothing but
the held businesses' items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from governance.connectors.dynamodb import (
    ItemQuery,
    business_queries,
    client_region,
    delete_keys,
    item_keys,
    person_queries,
)
from governance.datamap.model import DataMap
from governance.datamap.plans import ClientKeyedHash, keyed_hash_domain, keyed_hash_params
from governance.erasure.planner import ErasureWork, ExcludedItem, ItemWork, KeptItem
from governance.identity import SubjectIdentities

log = logging.getLogger(__name__)

ItemClientFor = Callable[[str], Any]  # system name -> boto3 DynamoDB client


def _values(query: ItemQuery, identities: SubjectIdentities | None, business_id: int | None) -> list[Any]:
    if query.by == "business":
        return [business_id] if business_id is not None else []
    kind = query.by.split(":", 1)[1]
    return [value for k, value in (identities.items() if identities is not None else []) if k == kind]


def item_queries(datamap: DataMap, work: ErasureWork) -> list[ItemQuery]:
    """The Queries of ``work``'s item steps, rebuilt from the map (by table and ``by``)."""
    offboarding = not work.identity_kinds and work.business_id is not None
    queries = business_queries(datamap) if offboarding else person_queries(datamap, work.identity_kinds)
    planned = {(i.system, i.table, i.by) for i in work.items}
    return [q for q in queries if (q.system, q.table, q.by) in planned]


def plan_items(
    datamap: DataMap,
    work: ErasureWork,
    identities: SubjectIdentities | None,
    *,
    held_businesses: Sequence[int],
    client_for: ItemClientFor,
) -> None:
    """Add the item steps to ``work``: per table, the items its Query finds now (counted), those a
    business hold keeps (a kept entry); nothing when the person is held (the whole person is kept).

    Items carry only the identity they are keyed by. When resolution found that identity on rows
    of someone else too (rows left out as another person's, or a tie), the items under it cannot be
    told apart: they are left out (``shared_identity``), never deleted for one requester."""
    offboarding = not work.identity_kinds and work.business_id is not None
    shared = not offboarding and bool(work.excluded or work.ambiguities)
    queries = business_queries(datamap) if offboarding else person_queries(datamap, work.identity_kinds)
    scope = None if offboarding else work.business_id
    for query in queries:
        values = _values(query, identities, work.business_id)
        if not values:
            continue
        keys, kept = item_keys(client_for(query.system), query, values, business_id=scope, held_businesses=held_businesses)
        item = ItemWork(system=query.system, table=query.table, table_name=query.table_name, index=query.index,
                        by=query.by, found=len(keys), kept=kept, held_businesses=sorted(held_businesses))  # fmt: skip
        if shared and query.by.startswith("identity:"):
            if keys or kept:
                work.excluded.append(ExcludedItem(where=item.where, count=len(keys) + kept, reason="shared_identity"))
            continue
        if work.person_held:
            work.kept.append(KeptItem(where=item.where, kind="items", count=len(keys) + kept, reason="legal_hold",
                                      basis="A legal hold on the person keeps everything of theirs."))  # fmt: skip
            continue
        if kept:
            work.kept.append(KeptItem(where=item.where, kind="items", count=kept, reason="legal_hold",
                                      basis="A legal hold on the business keeps the items collected for it."))  # fmt: skip
        work.items.append(item)


def delete_planned_items(
    datamap: DataMap,
    work: ErasureWork,
    identities: SubjectIdentities | None,
    *,
    client_for: ItemClientFor,
    done: Mapping[str, Any],
    on_step: Callable[[str, int, dict[str, Any]], None],
    retry: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Delete each item step's items (steps done before are skipped); returns items deleted per
    step id. ``retry`` passes ``attempts``/``backoff_s``/``sleep`` to the batched deletes."""
    deleted: dict[str, int] = {}
    by_step = {(i.system, i.table, i.by): i for i in work.items}
    for query in item_queries(datamap, work):
        item = by_step[(query.system, query.table, query.by)]
        if item.step_id in done:
            continue
        client = client_for(query.system)
        scope = None if query.by == "business" else work.business_id
        keys, _kept = item_keys(client, query, _values(query, identities, work.business_id), business_id=scope,
                                held_businesses=item.held_businesses, **dict(retry or {}))  # fmt: skip
        count = delete_keys(client, query.table_name, keys, **dict(retry or {}))
        on_step(item.step_id, count, {"table": query.table_name, "region": client_region(client)})
        deleted[item.step_id] = count
        log.info("erasure %s: %s: %d items deleted", work.plan_id, item.where, count)
    return deleted


def item_residue(
    datamap: DataMap,
    work: ErasureWork,
    identities_list: Sequence[SubjectIdentities | None],
    *,
    client_for: ItemClientFor,
) -> dict[str, list[str]]:
    """Per table (``system.table``), the sort keys of items the Queries still find that the plan
    did not keep (empty lists: verified). Sort keys, never partition keys: they hold no identity."""
    residue: dict[str, list[str]] = {}
    by_step = {(i.system, i.table, i.by): i for i in work.items}
    for query in item_queries(datamap, work):
        item = by_step[(query.system, query.table, query.by)]
        client = client_for(query.system)
        scope = None if query.by == "business" else work.business_id
        values: list[Any] = []
        for identities in identities_list:
            values += _values(query, identities, work.business_id)
        keys, _kept = item_keys(client, query, values, business_id=scope, held_businesses=item.held_businesses)
        sort = list(query.key_attributes[1:])  # the table's sort key (the partition key may hold an identity)
        residue.setdefault(item.where, []).extend(
            "#".join(str(next(iter(key[a].values()))) for a in sort) or "item" for key in keys
        )
    return residue


# --------------------------------------------------------------------------------------------
# After a restore: the suppression list


@dataclass(frozen=True)
class SuppressedItems:
    """What a restore brought back of one suppressed person in one table (counts, no keys)."""

    request_id: str
    where: str
    found: int
    deleted: int


def reapply_items(
    datamap: DataMap,
    people: Sequence[Any],
    *,
    hash_keys: Mapping[str, bytes],
    client_for: ItemClientFor,
    dry_run: bool,
    held: Callable[[Any], bool] = lambda _person: False,
    page_size: int = 1000,
) -> list[SuppressedItems]:
    """Erase again the items of ``people`` (``SuppressedPerson``: keyed hashes only) that a
    restore of a DynamoDB table brought back.

    A keyed hash cannot be queried, so each table is read **once for the whole list** with a
    paginated ``Scan`` of its key attributes only (``page_size`` a page; memory holds one page and
    the matches), each partition key hashed here (the key never leaves this process), and the
    items of a suppressed person recorded before their erasure (the sort key's ISO-8601 time; a
    person who came back afterwards keeps the new items) deleted in batches. This is a restore
    procedure over the whole list, never the plan for one person (those are Queries). ``held``
    says whether a person is under a legal hold (then nothing of theirs is deleted)."""
    results: list[SuppressedItems] = []
    for system, table in datamap.item_tables():
        kind = table.partition_key.kind
        if kind is None:
            continue
        wanted: dict[tuple[str, str], Any] = {}  # (hash key id, hash) -> person
        for person in people:
            if held(person):
                continue
            for digest in person.hashes.get(kind, []):
                wanted[(person.hash_key_id, digest)] = person
        if not wanted:
            continue
        digests = {key_id: ClientKeyedHash(keyed_hash_params(hash_keys[key_id]), domain=keyed_hash_domain(kind))
                   for key_id in {k for k, _ in wanted}}  # fmt: skip
        client = client_for(system.name)
        name = table.table_name.resolve()
        business = table.business_index.partition_key.attribute if table.business_index else None
        projected = list(dict.fromkeys([*table.key_attributes, *([business] if business else [])]))
        names = {f"#p{i}": attribute for i, attribute in enumerate(projected)}
        matched: dict[str, list[dict[str, Any]]] = {}
        args: dict[str, Any] = {"TableName": name, "ProjectionExpression": ", ".join(names),
                                "ExpressionAttributeNames": names, "Limit": page_size}  # fmt: skip
        while True:
            page = client.scan(**args)
            for item in page.get("Items", []):
                value = next(iter(item[table.partition_key.attribute].values()))
                for key_id, digest in digests.items():
                    person = wanted.get((key_id, digest(str(value))))
                    if person is None:
                        continue
                    if person.business_id is not None and business and str(next(iter(item.get(business, {}).values()), "")) != str(person.business_id):
                        continue
                    if table.sort_key is not None:
                        sort = str(next(iter(item[table.sort_key.attribute].values())))
                        if sort[:20] > person.erased_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"):
                            continue  # recorded after the erasure: the person came back
                    matched.setdefault(person.request_id, []).append({a: item[a] for a in table.key_attributes})
            if not page.get("LastEvaluatedKey"):
                break
            args["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        for request_id, keys in sorted(matched.items()):
            deleted = 0 if dry_run else delete_keys(client, name, keys)
            results.append(SuppressedItems(request_id, f"{system.name}.{table.name}", len(keys), deleted))
            log.info("reapply %s: %s: %d items found, %d deleted", request_id, system.name, len(keys), deleted)
    return results
