"""Identity resolution in PostgreSQL: where a person's rows are, inside one snapshot.

``resolve_in_database`` runs a :class:`~governance.datamap.plans.ResolutionPlan` step by step on
one connection. The caller opens that connection in a REPEATABLE READ (read-only for export)
transaction, so every step and every later export query sees the same snapshot. Identities reach
PostgreSQL only as bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from governance.datamap.model import DataMap, PrefixRef, TableRef
from governance.datamap.plans import SCOPE_IDS, MentionStep, ResolutionPlan, build_export_query
from governance.identity import SubjectIdentities


@dataclass
class TableFootprint:
    """The person's rows of one table: primary keys, and the columns later steps need."""

    table: TableRef
    primary_key: str
    keys: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass
class MentionFootprint:
    """Rows of another table that mention the person's rows (reference cleared on erasure)."""

    step: MentionStep
    keys: list[Any] = field(default_factory=list)


@dataclass
class DatabaseFootprint:
    """Everything resolution found in the databases, plus the params that found it.

    ``params`` holds the identities, scope and every step's output params: the same mapping the
    export queries and erasure statements run with.
    """

    plan: ResolutionPlan
    params: dict[str, Any]
    tables: dict[TableRef, TableFootprint]
    mentions: list[MentionFootprint]

    def counts(self) -> dict[str, int]:
        """Rows per table (``system.table``): safe for logs and XCom."""
        return {str(ref): fp.count for ref, fp in self.tables.items()}

    def mention_counts(self) -> dict[str, int]:
        return {f"{m.step.edge.child}.{m.step.edge.field}": len(m.keys) for m in self.mentions}

    def object_keys(self) -> dict[PrefixRef, list[str]]:
        """Object keys of the person's rows, per prefix (rendered from the resolved rows)."""
        return {step.prefix: step.keys_for(self.tables[step.source].rows) for step in self.plan.objects}

    @property
    def is_empty(self) -> bool:
        return not any(fp.keys for fp in self.tables.values())


def identity_params(plan: ResolutionPlan, identities: SubjectIdentities) -> dict[str, list[str]]:
    """``{kind: [value]}`` for the kinds the plan resolves by (an absent identity matches nothing)."""
    given = dict(identities.items())
    return {kind: [given[kind]] if kind in given else [] for kind in plan.identity_kinds}


def _only(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: params[name] for name in names}


def resolve_in_database(
    conn: psycopg.Connection[Any],
    plan: ResolutionPlan,
    identities: SubjectIdentities,
    *,
    scope_ids: Sequence[int] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> DatabaseFootprint:
    """Run every step of ``plan`` on ``conn`` (one snapshot) and return what it found.

    ``scope_ids`` is required exactly when the plan is business-scoped. Steps run parents before
    children, each fed the keys its parents found; a table with no rows for the person yields an
    empty footprint, not an error.
    """
    if plan.business_scope and not scope_ids:
        raise ValueError("a business-scoped resolution needs scope_ids")
    systems = {step.table.system for step in plan.steps}
    if len(systems) > 1:
        # Ownership across databases cannot be joined in one snapshot; no map needs it yet.
        raise NotImplementedError(f"resolution across several postgres systems ({sorted(systems)}) is not supported")
    params: dict[str, Any] = {**identity_params(plan, identities), **(extra_params or {})}
    if plan.business_scope:
        params[SCOPE_IDS] = [int(s) for s in scope_ids or []]
    tables: dict[TableRef, TableFootprint] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for step in plan.steps:
            rows = cur.execute(step.query, _only(params, step.input_params)).fetchall()
            footprint = TableFootprint(step.table, step.primary_key, keys=[r[step.primary_key] for r in rows])
            if step.materialise or any(o.source == step.table for o in plan.objects):
                footprint.rows = [dict(r) for r in rows]
            tables[step.table] = footprint
            for param, column in step.output_params.items():
                params[param] = sorted({r[column] for r in rows if r[column] is not None})
        mentions = []
        for mention in plan.mentions:
            rows = cur.execute(mention.query, _only(params, mention.input_params)).fetchall()
            mentions.append(MentionFootprint(mention, [r[mention.primary_key] for r in rows]))
    return DatabaseFootprint(plan=plan, params=params, tables=tables, mentions=mentions)


def stream_table(
    conn: psycopg.Connection[Any],
    datamap: DataMap,
    footprint: DatabaseFootprint,
    table: TableRef,
    *,
    batch_rows: int = 2000,
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """Stream every mapped column of the person's rows of ``table`` in batches, through a
    server-side cursor (memory stays flat however many rows the person has). Yields
    ``(column names, rows)``; must run in the same transaction as the resolution."""
    step = footprint.plan.step(table)
    query = build_export_query(datamap, step)
    with conn.cursor(name=f"export_{table.system}_{table.table}") as cur:
        cur.itersize = batch_rows
        cur.execute(query, _only(footprint.params, step.input_params))
        columns: list[str] | None = None
        while True:
            batch = cur.fetchmany(batch_rows)
            if columns is None:
                columns = [d.name for d in cur.description or []]
            if not batch:
                break
            yield columns, batch
