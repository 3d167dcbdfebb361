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
from governance.erasure.planner import ErasureWork, ItemWork, KeptItem
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
    business hold keeps (a kept entry); nothing when the person is held (the whole person is kept)."""
    offboarding = not work.identity_kinds and work.business_id is not None
    queries = business_queries(datamap) if offboarding else person_queries(datamap, work.identity_kinds)
    scope = None if offboarding else work.business_id
    for query in queries:
        values = _values(query, identities, work.business_id)
        if not values:
            continue
        keys, kept = item_keys(client_for(query.system), query, values, business_id=scope, held_businesses=held_businesses)
        item = ItemWork(system=query.system, table=query.table, table_name=query.table_name, index=query.index,
                        by=query.by, found=len(keys), kept=kept, held_businesses=sorted(held_businesses))  # fmt: skip
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
