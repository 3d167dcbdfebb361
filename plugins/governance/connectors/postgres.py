"""Identity resolution in PostgreSQL: where a person's rows are, inside one snapshot.

``resolve_in_database`` runs a :class:`~governance.datamap.plans.ResolutionPlan` through the
shared resolution (:func:`governance.resolution.resolve_subject`), so the rows found are narrowed
to one person exactly as erasure narrows them: a row carrying another value of an identity the
request names is left out, a household sharing a phone is settled by the e-mail, and rows that
stay ambiguous are reported in ``DatabaseFootprint.ambiguities`` for the caller to refuse.

The caller opens the connection in a REPEATABLE READ (read-only for export) transaction, so
resolution and every later count and export query see the same snapshot; those queries are the
plan's own (``ResolutionStep.count``/``.export``: its match minus the rows narrowing left out), so
they return exactly the resolved rows.
Identities reach PostgreSQL only as bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from governance.datamap.model import DataMap, PrefixRef, TableRef
from governance.datamap.plans import SCOPE_IDS, MentionStep, ResolutionPlan, Statement, excluded_param
from governance.identity import SubjectIdentities
from governance.resolution import Ambiguity, MatchByIdentity, SystemConnections, resolve_subject


@dataclass
class TableFootprint:
    """The person's rows of one table: primary keys, and the columns later steps need.

    ``excluded`` maps rows the identities found but narrowing left out (another person's) to
    the reason; they are in neither ``keys`` nor any export.
    """

    table: TableRef
    primary_key: str
    keys: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[Any, str] = field(default_factory=dict)

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

    ``params`` holds the identities, scope, every step's output params and the keys narrowing
    left out per table: the values the plan's ``count`` and ``export`` statements are bound with.
    ``ambiguities`` lists businesses where several rows match the identities equally well (more
    than one person may share them): a caller serving one requester must refuse them.
    """

    plan: ResolutionPlan
    params: dict[str, Any]
    tables: dict[TableRef, TableFootprint]
    mentions: list[MentionFootprint]
    ambiguities: list[Ambiguity] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows per table (``system.table``): safe for logs and XCom."""
        return {str(ref): fp.count for ref, fp in self.tables.items()}

    def excluded_counts(self) -> dict[str, int]:
        """Rows per table found by an identity but left out as another person's (safe for logs)."""
        return {str(ref): len(fp.excluded) for ref, fp in self.tables.items() if fp.excluded}

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


def resolve_in_database(
    conn: SystemConnections,
    plan: ResolutionPlan,
    identities: SubjectIdentities,
    *,
    datamap: DataMap,
    scope_ids: Sequence[int] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> DatabaseFootprint:
    """Run every step of ``plan`` (built from ``datamap``) on ``conn`` (one snapshot, or one per
    system: :func:`governance.resolution.system_snapshots`) and return the person's rows, narrowed
    to one person.

    ``scope_ids`` is required exactly when the plan is business-scoped. Steps run parents before
    children, each fed the keys its narrowed parents kept; a table with no rows for the person
    yields an empty footprint, not an error. Ambiguities are returned, not raised: refusing is
    the caller's decision (the export refuses; nothing is ever exported for two people).
    """
    missing = sorted(set(plan.identity_kinds) - {kind for kind, _ in identities.items()})
    if missing:
        # Narrowing compares every identity the plan resolves by: a kind the request lacks would
        # make every row holding one look like another person's.
        raise ValueError(f"the plan resolves by {', '.join(missing)}, which the request does not give: "
                         "build the plan from the request's identity kinds")  # fmt: skip
    resolution = resolve_subject(conn, datamap, plan, MatchByIdentity(identities), scope_ids=scope_ids)
    params: dict[str, Any] = {**identity_params(plan, identities), **(extra_params or {})}
    if plan.business_scope:
        params[SCOPE_IDS] = [int(s) for s in scope_ids or []]
    params.update(resolution.params)
    tables: dict[TableRef, TableFootprint] = {}
    for step in plan.steps:
        resolved = resolution.tables[step.table]
        keys = resolved.keys
        footprint = TableFootprint(step.table, step.primary_key, keys=keys, excluded=dict(resolved.excluded))
        if step.materialise or any(o.source == step.table for o in plan.objects):
            footprint.rows = [resolved.rows[k] for k in keys]
        tables[step.table] = footprint
        params[excluded_param(step.table)] = sorted(resolved.excluded)
    mentions = [
        MentionFootprint(step, found.keys) for step, found in zip(plan.mentions, resolution.mentions, strict=True)
    ]
    return DatabaseFootprint(
        plan=plan, params=params, tables=tables, mentions=mentions, ambiguities=list(resolution.ambiguities)
    )


def count_rows(conn: psycopg.Connection[Any], datamap: DataMap, footprint: DatabaseFootprint, table: TableRef) -> int:
    """The person's rows of ``table`` counted in the snapshot (must run in the resolution's
    transaction): the source count an export bundle is checked against."""
    statement = footprint.plan.step(table).count
    row = conn.execute(statement.query, statement.bind(footprint.params)).fetchone()
    return int(row[0]) if row else 0


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
    yield from _stream(conn, footprint.plan.step(table).export, footprint.params, f"export_{table.system}_{table.table}",
                       batch_rows)  # fmt: skip


def mention_only_exports(footprint: DatabaseFootprint, table: TableRef) -> list[MentionStep]:
    """Mentions of the person in ``table`` whose mention-only rows their export includes
    (``export: include``): rows naming the person that belong to no one else."""
    return [m for m in footprint.plan.mentions if m.edge.child == table and m.orphan_export is not None]


def count_mention_only(conn: psycopg.Connection[Any], footprint: DatabaseFootprint, mention: MentionStep) -> int:
    """The mention-only rows of ``mention`` in the snapshot (0 when the person has no row it
    points at)."""
    assert mention.orphan_count is not None
    if not footprint.params.get(mention.parent_param):
        return 0
    row = conn.execute(mention.orphan_count.query, mention.orphan_count.bind(footprint.params)).fetchone()
    return int(row[0]) if row else 0


def stream_mention_only(
    conn: psycopg.Connection[Any], footprint: DatabaseFootprint, mention: MentionStep, *, batch_rows: int = 2000
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """Stream the mention-only rows of ``mention`` (every mapped column), as :func:`stream_table`."""
    assert mention.orphan_export is not None
    if not footprint.params.get(mention.parent_param):
        return
    edge = mention.edge
    yield from _stream(conn, mention.orphan_export, footprint.params,
                       f"export_{edge.child.system}_{edge.child.table}_{edge.field}", batch_rows)  # fmt: skip


def _stream(
    conn: psycopg.Connection[Any], statement: Statement, params: Mapping[str, Any], name: str, batch_rows: int
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    with conn.cursor(name=name) as cur:
        cur.itersize = batch_rows
        cur.execute(statement.query, statement.bind(params))
        columns: list[str] | None = None
        while True:
            batch = cur.fetchmany(batch_rows)
            if columns is None:
                columns = [d.name for d in cur.description or []]
            if not batch:
                break
            yield columns, batch
