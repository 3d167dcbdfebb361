"""Pure plan builders: from the data map to SQL statements with bound parameters.

Nothing here connects to anything. Every statement is a ``psycopg.sql.Composed`` built from
``sql.Identifier`` (names from the validated map) and ``sql.Placeholder`` (every value: identities,
keys, mask values, periods, dates, batch sizes). No value is ever formatted into SQL text, so an
identity can only reach the database as a bound parameter and never a log line showing the query.
``Composed.as_string()`` renders without a connection (psycopg >= 3.2), which is how the dry run
and the tests show the SQL.

Three plans, one per workflow that changes or reads personal data:

* :func:`build_resolution_plan`: where a person's rows are (identity -> rows -> owned rows ->
  objects), for export, erasure and dry runs;
* :func:`build_erasure_plan`: what erasure executes, children before parents;
* :func:`build_retention_plan`: what the retention sweep executes, in bounded batches.

Parameter names the executor supplies at run time are module constants (``AS_OF``,
``SCOPE_IDS``, ...); each statement lists the ones it needs in ``input_params`` and carries its
constant values in ``params``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote

from psycopg import sql

from governance.datamap import graph
from governance.datamap.graph import IdentityColumn, ReferenceEdge
from governance.datamap.model import (
    REWRITING_ACTIONS,
    Condition,
    DataMap,
    DataMapError,
    DataMapIssue,
    ErasureAction,
    FieldSpec,
    IdentityMatch,
    LegalException,
    ObjectPrefix,
    Paging,
    PrefixRef,
    ReferenceKind,
    RequestTemplate,
    RetentionRule,
    TableRef,
    TableSpec,
)

# Run-time parameters (supplied by the executor, never by the map).
AS_OF = "as_of"  # the run's logical date (timestamptz): no now() inside a plan
SCOPE_IDS = "scope_ids"  # business ids a scoped request is limited to
BATCH_SIZE = "batch_size"
KEYS = "keys"  # primary keys selected by a previous statement of the same rule
HELD_KEYS = "held_keys"  # primary keys under a legal hold (may be empty)
HELD_SCOPE_IDS = "held_scope_ids"  # business ids under a legal hold (may be empty)
AFTER_KEY = "after_key"  # keyset cursor: [last primary key handled], [] to start
KEYED_HASH_INNER = "keyed_hash_inner_pad"
KEYED_HASH_OUTER = "keyed_hash_outer_pad"

_HMAC_BLOCK = 64  # SHA-256 block size


# --------------------------------------------------------------------------------------------
# Small SQL helpers


def _table_sql(datamap: DataMap, ref: TableRef, alias: str | None = None) -> sql.Composable:
    schema = datamap.postgres_system(ref.system).db_schema
    name = sql.Identifier(schema, ref.table)
    return sql.SQL("{} AS {}").format(name, sql.Identifier(alias)) if alias else name


def _columns(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _any(column: sql.Composable, param: str) -> sql.Composed:
    return sql.SQL("{} = ANY({})").format(column, sql.Placeholder(param))


def _and(parts: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def _or(parts: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts)) if parts else sql.SQL("FALSE")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def key_param(datamap: DataMap, table: TableRef, column: str) -> str:
    """Name of the parameter holding the values of ``table.column`` found for a person, e.g.
    ``callers_ids``; prefixed with the system when two systems have a table of that name."""
    same_name = [s for s in datamap.postgres_systems if s.table(table.table) is not None]
    stem = table.table if len(same_name) <= 1 else f"{table.system}_{table.table}"
    return f"{stem}_{column}s"


def identity_expression(column: sql.Composable, match: IdentityMatch) -> sql.Composable:
    """The SQL side of an identity comparison: ``lower(col)`` or ``col``, mirroring
    :mod:`governance.identity` on the Python side."""
    return sql.SQL("lower({})").format(column) if match is IdentityMatch.lowered else column


def keyed_hash_params(key: bytes) -> dict[str, bytes]:
    """Parameters for the SQL keyed hash: HMAC-SHA256 split into its two padded keys, so the
    database needs no extension (``sha256()`` is built in) and the key itself is never sent.
    ``keyed_hash_sql(col)`` with these parameters equals ``hmac.new(key, value, sha256).hexdigest()``."""
    if len(key) > _HMAC_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\0")
    return {
        KEYED_HASH_INNER: bytes(b ^ 0x36 for b in key),
        KEYED_HASH_OUTER: bytes(b ^ 0x5C for b in key),
    }


def keyed_hash_sql(column: sql.Composable) -> sql.Composed:
    """HMAC-SHA256 (hex) of the column's text (UTF-8) from the pads of :func:`keyed_hash_params`."""
    return sql.SQL(
        "encode(sha256({outer}::bytea || sha256({inner}::bytea || convert_to({col}::text, 'UTF8'))), 'hex')"
    ).format(outer=sql.Placeholder(KEYED_HASH_OUTER), inner=sql.Placeholder(KEYED_HASH_INNER), col=column)


def keyed_hash_reference(key: bytes, value: str) -> str:
    """What :func:`keyed_hash_sql` computes for ``value`` (for tests and for matching later)."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def _mask_param(ref: TableRef, field_name: str) -> str:
    return f"mask_{ref.table}_{field_name}"


def _rewrite_assignments(ref: TableRef, fields: Iterable[FieldSpec]) -> tuple[list[sql.Composable], dict[str, Any], list[str]]:
    """SET clauses for fields whose erasure rewrites them; static params; run-time params."""
    assignments: list[sql.Composable] = []
    params: dict[str, Any] = {}
    needs: list[str] = []
    for spec in fields:
        column = sql.Identifier(spec.name)
        action = spec.erasure_action
        if action is ErasureAction.nullify:
            assignments.append(sql.SQL("{} = NULL").format(column))
        elif action is ErasureAction.mask:
            name = _mask_param(ref, spec.name)
            assignments.append(sql.SQL("{} = {}").format(column, sql.Placeholder(name)))
            params[name] = spec.mask_value
        elif action is ErasureAction.keyed_hash:
            assignments.append(sql.SQL("{} = {}").format(column, keyed_hash_sql(column)))
            needs += [KEYED_HASH_INNER, KEYED_HASH_OUTER]
    return assignments, params, needs


# --------------------------------------------------------------------------------------------
# Resolution: where is this person?


@dataclass(frozen=True)
class ResolutionStep:
    """Rows of one table that are the person's: matched by identity or owned by rows of earlier
    steps, filtered to the business scope when the request is scoped and the table declares a
    scope column.

    ``where`` is the match (reused by export and erasure); ``query`` selects ``columns`` (the
    primary key first, then what later steps and object keys need). ``output_params`` maps each
    parameter later steps read to the column of this step's rows that fills it; a step with no
    outputs (``materialise`` False) only needs counting or streaming, never holding in memory.
    """

    table: TableRef
    primary_key: str
    columns: tuple[str, ...]
    where: sql.Composable
    query: sql.Composed
    count_query: sql.Composed
    identity_matches: tuple[IdentityColumn, ...]
    owned_via: tuple[ReferenceEdge, ...]
    input_params: tuple[str, ...]
    output_params: Mapping[str, str]
    scoped: bool

    @property
    def materialise(self) -> bool:
        return bool(self.output_params)


@dataclass(frozen=True)
class MentionStep:
    """Rows of ``edge.child`` that mention one of the person's rows through ``edge.field``: on
    erasure the reference is cleared (the field's erasure action), the row stays."""

    edge: ReferenceEdge
    primary_key: str
    where: sql.Composable
    query: sql.Composed
    parent_param: str
    input_params: tuple[str, ...]


@dataclass(frozen=True)
class ObjectStep:
    """Objects of a row-owned prefix belonging to the rows of a resolution step; keys are
    rendered from those rows with :meth:`keys_for`."""

    prefix: PrefixRef
    key_template: str
    source: TableRef
    placeholder_columns: Mapping[str, str]
    key_column: str | None

    def keys_for(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Object keys for the source rows (dicts by column name), sorted, deduplicated. A stored
        ``key_column`` value wins over the template (the app may have written a different key);
        both are returned when they differ, so neither copy survives."""
        keys: set[str] = set()
        for row in rows:
            values = {p: row[c] for p, c in self.placeholder_columns.items()}
            if all(v is not None for v in values.values()):
                keys.add(render_key(self.key_template, values))
            if self.key_column is not None and row.get(self.key_column):
                keys.add(str(row[self.key_column]))
        return sorted(keys)


@dataclass(frozen=True)
class RequestObjectStep:
    """Objects owned by the person's privacy requests (export bundles): a folder per request."""

    prefix: PrefixRef
    key_template: str

    def prefixes_for(self, request_ids: Iterable[str]) -> list[str]:
        """Key prefixes to list and delete for these request ids."""
        return sorted({render_key(self.key_template, {"request_id": str(r)}) for r in request_ids})


@dataclass(frozen=True)
class ProcessorStep:
    """A processor to look the person up at, with the identity kinds its lookup can use."""

    processor: str
    identity_kinds: tuple[str, ...]


@dataclass(frozen=True)
class ResolutionPlan:
    """Where a person found by ``identity_kinds`` has data, as executable steps.

    Run ``steps`` in order with params ``{kind: [normalised values]}`` (plus ``scope_ids`` when
    ``business_scope``); after each materialised step, set each of its ``output_params`` to the
    list of that column's values. ``mentions`` and ``objects`` then use those params and rows.
    ``out_of_scope`` lists identity tables skipped because a scoped request cannot be applied to
    a table without a scope column.
    """

    identity_kinds: tuple[str, ...]
    business_scope: bool
    steps: tuple[ResolutionStep, ...]
    mentions: tuple[MentionStep, ...]
    objects: tuple[ObjectStep, ...]
    request_objects: tuple[RequestObjectStep, ...]
    processors: tuple[ProcessorStep, ...]
    out_of_scope: tuple[TableRef, ...] = ()

    @property
    def tables(self) -> list[TableRef]:
        return [s.table for s in self.steps]

    def step(self, table: TableRef) -> ResolutionStep:
        for candidate in self.steps:
            if candidate.table == table:
                return candidate
        raise KeyError(f"{table} is not reached by this resolution plan")

    @property
    def required_params(self) -> tuple[str, ...]:
        """Run-time params the caller must supply before the first step."""
        return (*self.identity_kinds, *((SCOPE_IDS,) if self.business_scope else ()))


def build_resolution_plan(
    datamap: DataMap, identity_kinds: Iterable[str], business_scope: bool = False
) -> ResolutionPlan:
    """Plan how to find every row, object and processor record of a person.

    ``identity_kinds`` are the kinds of identity the request carries (``email``, ``phone``);
    unknown kinds raise DataMapError. With ``business_scope`` every step on a table with a scope
    column is limited to ``scope_ids``; identity tables without one are left out (listed in
    ``out_of_scope``), since the business cannot speak for rows not collected for it.
    """
    kinds = tuple(sorted(set(identity_kinds)))
    unknown = [k for k in kinds if k not in datamap.identity_kinds]
    if unknown or not kinds:
        raise DataMapError(
            [DataMapIssue(datamap.source, "identity_kinds", f"cannot resolve by {unknown or 'no identity'}: the map "
                          f"declares {', '.join(datamap.identity_kinds)}")]
        )
    reach = graph.subject_reach(datamap, kinds)
    out_of_scope: list[TableRef] = []
    if business_scope:
        for column in reach.identity_columns:
            if datamap.table(column.table).scope_column is None and column.table not in out_of_scope:
                out_of_scope.append(column.table)
        if out_of_scope:  # walk again without them: their owned rows are out of scope too
            reach = _reach_without(datamap, kinds, set(out_of_scope))

    # Which columns of each table later steps need, and under which parameter name.
    outputs: dict[TableRef, dict[str, str]] = {t: {} for t in reach.owned_tables}
    for edge in (*reach.ownership_edges, *reach.mention_edges):
        outputs[edge.parent][key_param(datamap, edge.parent, edge.parent_field)] = edge.parent_field
    object_steps: list[ObjectStep] = []
    extra_columns: dict[TableRef, list[str]] = {t: [] for t in reach.owned_tables}
    for prefix_ref in reach.object_prefixes:
        prefix = datamap.prefix(prefix_ref)
        source = datamap.tie_table(prefix)
        assert source is not None and prefix.tied_to is not None
        placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
        key_column = prefix.tied_to.key_column
        object_steps.append(ObjectStep(prefix_ref, prefix.key_template, source, placeholder_columns, key_column))
        extra_columns[source] += [*placeholder_columns.values(), *([key_column] if key_column else [])]

    steps: list[ResolutionStep] = []
    for ref in reach.owned_tables:
        table = datamap.table(ref)
        matches = tuple(reach.matches_of(ref))
        parents = tuple(reach.parents_of(ref))
        where, needs, scoped = _match_where(datamap, table, matches, parents, business_scope)
        columns = _unique([table.primary_key, *outputs[ref].values(), *extra_columns[ref]])
        output_params = dict(outputs[ref])
        if extra_columns[ref]:
            output_params.setdefault(key_param(datamap, ref, table.primary_key), table.primary_key)
        steps.append(
            ResolutionStep(
                table=ref,
                primary_key=table.primary_key,
                columns=columns,
                where=where,
                query=sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
                    _columns(columns), _table_sql(datamap, ref), where, sql.Identifier(table.primary_key)
                ),
                count_query=sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_table_sql(datamap, ref), where),
                identity_matches=matches,
                owned_via=parents,
                input_params=needs,
                output_params=output_params,
                scoped=scoped,
            )
        )

    mentions: list[MentionStep] = []
    for edge in reach.mention_edges:
        child = datamap.table(edge.child)
        param = key_param(datamap, edge.parent, edge.parent_field)
        conditions: list[sql.Composable] = [_any(sql.Identifier(edge.field), param)]
        mention_needs = [param]
        if business_scope and child.scope_column:
            conditions.append(_any(sql.Identifier(child.scope_column), SCOPE_IDS))
            mention_needs.append(SCOPE_IDS)
        mention_where = _and(conditions)
        mentions.append(
            MentionStep(
                edge=edge,
                primary_key=child.primary_key,
                where=mention_where,
                query=sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
                    sql.Identifier(child.primary_key), _table_sql(datamap, edge.child), mention_where,
                    sql.Identifier(child.primary_key),
                ),
                parent_param=param,
                input_params=tuple(mention_needs),
            )
        )

    request_objects = tuple(
        RequestObjectStep(ref, datamap.prefix(ref).key_template) for ref in reach.request_prefixes
    )
    processors = tuple(
        ProcessorStep(p.name, tuple(k for k in kinds if k in p.lookup_identity_kinds))
        for p in datamap.processors
        if any(k in p.lookup_identity_kinds for k in kinds)
    )
    return ResolutionPlan(
        identity_kinds=kinds,
        business_scope=business_scope,
        steps=tuple(steps),
        mentions=tuple(mentions),
        objects=tuple(object_steps),
        request_objects=request_objects,
        processors=processors,
        out_of_scope=tuple(sorted(out_of_scope)),
    )


def _reach_without(datamap: DataMap, kinds: tuple[str, ...], excluded: set[TableRef]) -> graph.SubjectReach:
    full = graph.subject_reach(datamap, kinds)
    columns = tuple(c for c in full.identity_columns if c.table not in excluded)
    owned = {c.table for c in columns}
    changed = True
    while changed:
        changed = False
        for edge in full.ownership_edges:
            if edge.parent in owned and edge.child not in owned:
                owned.add(edge.child)
                changed = True
    edges = tuple(e for e in full.ownership_edges if e.parent in owned)
    return graph.SubjectReach(
        identity_kinds=full.identity_kinds,
        identity_columns=columns,
        owned_tables=tuple(t for t in full.owned_tables if t in owned),
        ownership_edges=edges,
        mention_edges=tuple(e for e in full.mention_edges if e.parent in owned),
        object_prefixes=tuple(p for p in full.object_prefixes if datamap.tie_table(datamap.prefix(p)) in owned),
        request_prefixes=full.request_prefixes,
    )


def _match_where(
    datamap: DataMap,
    table: TableSpec,
    matches: Sequence[IdentityColumn],
    parents: Sequence[ReferenceEdge],
    business_scope: bool,
) -> tuple[sql.Composable, tuple[str, ...], bool]:
    alternatives: list[sql.Composable] = []
    needs: list[str] = []
    for match in matches:
        alternatives.append(_any(identity_expression(sql.Identifier(match.field), match.match), match.kind))
        needs.append(match.kind)
    for edge in parents:
        param = key_param(datamap, edge.parent, edge.parent_field)
        alternatives.append(_any(sql.Identifier(edge.field), param))
        needs.append(param)
    where: sql.Composable = _or(alternatives)
    scoped = business_scope and table.scope_column is not None
    if scoped:
        assert table.scope_column is not None
        where = _and([where, _any(sql.Identifier(table.scope_column), SCOPE_IDS)])
        needs.append(SCOPE_IDS)
    return where, _unique(needs), scoped


def build_export_query(datamap: DataMap, step: ResolutionStep) -> sql.Composed:
    """Every mapped column of the person's rows of ``step.table``, in key order: for streaming
    through a server-side cursor into an export bundle."""
    table = datamap.table(step.table)
    return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        _columns(table.field_names), _table_sql(datamap, step.table), step.where, sql.Identifier(table.primary_key)
    )


# --------------------------------------------------------------------------------------------
# Erasure


ErasureEffect = Literal[
    "clear_mention", "delete_rows", "rewrite_rows", "minimise_kept_rows", "delete_expired_kept_rows"
]


@dataclass(frozen=True)
class ErasureStatement:
    """One bounded batch of an erasure: run it until it affects fewer than ``batch_size`` rows.

    Every statement stops matching the rows it has handled (deleted, or with the matched
    reference rewritten), so repeating it, or re-running it after a crash, never double-applies.
    ``params`` holds constant values (mask values, the legal period, the batch size); the
    executor adds ``input_params`` (identities, parent keys, scope, ``as_of``, keyed-hash pads).
    Statements of kind ``minimise_kept_rows`` return ``(primary key, kept_until)`` for the
    record of what was kept, why (``legal_exception``) and until when.
    """

    table: TableRef
    effect: ErasureEffect
    query: sql.Composed
    params: Mapping[str, Any]
    input_params: tuple[str, ...]
    fields: tuple[str, ...] = ()
    legal_exception: str | None = None
    returning: tuple[str, ...] = ()


@dataclass(frozen=True)
class ErasurePlan:
    """Everything erasing one person does, in order.

    Delete ``objects`` and ``request_objects`` first (their keys come from resolution rows that
    still exist), then run ``statements`` in order: for each table, children before parents,
    mentions are cleared and the person's rows deleted or rewritten. ``processors`` are erased
    through their declared erase calls. ``kept`` names tables whose rows a legal exception keeps.
    """

    resolution: ResolutionPlan
    objects: tuple[ObjectStep, ...]
    request_objects: tuple[RequestObjectStep, ...]
    statements: tuple[ErasureStatement, ...]
    processors: tuple[str, ...]
    kept: Mapping[TableRef, LegalException] = field(default_factory=dict)

    @property
    def table_order(self) -> list[TableRef]:
        return list(dict.fromkeys(s.table for s in self.statements))


def _batched(datamap: DataMap, ref: TableRef, verb: sql.Composable, pk: str, where: sql.Composable) -> sql.Composed:
    """``<verb> WHERE pk IN (SELECT pk ... WHERE where LIMIT batch_size)``: one bounded batch."""
    return sql.SQL("{verb} WHERE {pk} IN (SELECT {pk} FROM {table} WHERE {where} LIMIT {batch})").format(
        verb=verb, pk=sql.Identifier(pk), table=_table_sql(datamap, ref), where=where,
        batch=sql.Placeholder(BATCH_SIZE),
    )


def build_erasure_plan(datamap: DataMap, resolution: ResolutionPlan) -> ErasurePlan:
    """The erasure of the person ``resolution`` finds, children before parents
    (:func:`graph.erasure_order`).

    Per table: rows mentioning the person get the mention field rewritten; the person's own rows
    are deleted when a field is ``delete_row``, else rewritten field by field; under a legal
    exception, rows still inside the legal period are minimised (kept fields untouched, returned
    with ``kept_until``) and rows past it deleted.
    """
    batch = datamap.settings.erasure_batch_size
    order = graph.erasure_order(datamap)
    owned = {s.table: s for s in resolution.steps}
    mentions_by_child: dict[TableRef, list[MentionStep]] = {}
    for mention in resolution.mentions:
        mentions_by_child.setdefault(mention.edge.child, []).append(mention)
    statements: list[ErasureStatement] = []
    kept: dict[TableRef, LegalException] = {}
    for ref in order:
        table = datamap.table(ref)
        for mention in mentions_by_child.get(ref, []):
            spec = table.field(mention.edge.field)
            assert spec is not None
            assignments, params, needs = _rewrite_assignments(ref, [spec])
            verb = sql.SQL("UPDATE {} SET {}").format(_table_sql(datamap, ref), sql.SQL(", ").join(assignments))
            statements.append(
                ErasureStatement(
                    table=ref,
                    effect="clear_mention",
                    query=_batched(datamap, ref, verb, table.primary_key, mention.where),
                    params={**params, BATCH_SIZE: batch},
                    input_params=_unique([*mention.input_params, *needs]),
                    fields=(spec.name,),
                )
            )
        step = owned.get(ref)
        if step is None:
            continue
        exception = datamap.legal_exception_for(ref)
        if exception is not None:
            kept[ref] = exception
            statements += _kept_table_statements(datamap, ref, table, step, exception, batch)
        elif table.deletes_rows_on_erasure:
            verb = sql.SQL("DELETE FROM {}").format(_table_sql(datamap, ref))
            statements.append(
                ErasureStatement(
                    table=ref,
                    effect="delete_rows",
                    query=_batched(datamap, ref, verb, table.primary_key, step.where),
                    params={BATCH_SIZE: batch},
                    input_params=step.input_params,
                )
            )
        else:
            rewritten = [f for f in table.fields if f.erasure_action in REWRITING_ACTIONS]
            assignments, params, needs = _rewrite_assignments(ref, rewritten)
            if not assignments:
                continue
            verb = sql.SQL("UPDATE {} SET {}").format(_table_sql(datamap, ref), sql.SQL(", ").join(assignments))
            statements.append(
                ErasureStatement(
                    table=ref,
                    effect="rewrite_rows",
                    query=_batched(datamap, ref, verb, table.primary_key, step.where),
                    params={**params, BATCH_SIZE: batch},
                    input_params=_unique([*step.input_params, *needs]),
                    fields=tuple(f.name for f in rewritten),
                )
            )
    return ErasurePlan(
        resolution=resolution,
        objects=resolution.objects,
        request_objects=resolution.request_objects,
        statements=tuple(statements),
        processors=tuple(p.processor for p in resolution.processors),
        kept=kept,
    )


def _legal_period_param(exception: LegalException) -> str:
    return f"legal_period_{exception.name}"


def _kept_table_statements(
    datamap: DataMap, ref: TableRef, table: TableSpec, step: ResolutionStep, exception: LegalException, batch: int
) -> list[ErasureStatement]:
    period = _legal_period_param(exception)
    age = sql.Identifier(exception.age_column)
    until = sql.SQL("{} + {}::interval").format(age, sql.Placeholder(period))
    still_kept = sql.SQL("({age} IS NULL OR {until} > {as_of})").format(
        age=age, until=until, as_of=sql.Placeholder(AS_OF)
    )
    expired = sql.SQL("{} <= {}").format(until, sql.Placeholder(AS_OF))
    base = {period: exception.period.sql_interval, BATCH_SIZE: batch}
    delete = _batched(
        datamap, ref, sql.SQL("DELETE FROM {}").format(_table_sql(datamap, ref)), table.primary_key,
        _and([step.where, expired]),
    )
    statements = [
        ErasureStatement(
            table=ref,
            effect="delete_expired_kept_rows",
            query=delete,
            params=base,
            input_params=_unique([*step.input_params, AS_OF]),
            legal_exception=exception.name,
        )
    ]
    rewritten = [f for f in table.fields if f.erasure_action in REWRITING_ACTIONS]
    assignments, params, needs = _rewrite_assignments(ref, rewritten)
    if assignments:
        verb = sql.SQL("UPDATE {} SET {}").format(_table_sql(datamap, ref), sql.SQL(", ").join(assignments))
        query = sql.SQL("{} RETURNING {}, {} AS kept_until").format(
            _batched(datamap, ref, verb, table.primary_key, _and([step.where, still_kept])),
            sql.Identifier(table.primary_key),
            until,
        )
        statements.append(
            ErasureStatement(
                table=ref,
                effect="minimise_kept_rows",
                query=query,
                params={**base, **params},
                input_params=_unique([*step.input_params, AS_OF, *needs]),
                fields=tuple(f.name for f in rewritten),
                legal_exception=exception.name,
                returning=(table.primary_key, "kept_until"),
            )
        )
    return statements


# --------------------------------------------------------------------------------------------
# Retention


@dataclass(frozen=True)
class RetentionStatement:
    """One bounded batch of a table retention rule; repeat until fewer than ``batch_size`` rows.

    When ``select_due`` is set (rows own objects), run it first, delete the objects rendered by
    ``objects`` from its rows, then run ``query`` with ``keys`` = the selected primary keys: a
    crash between the two leaves the rows, so the objects are found again. Otherwise ``query`` is
    self-contained. Rows under a legal hold (``held_keys``, ``held_scope_ids``: pass empty lists
    when none) are never touched.
    """

    rule: str
    table: TableRef
    action: str
    query: sql.Composed
    params: Mapping[str, Any]
    input_params: tuple[str, ...]
    select_due: sql.Composed | None = None
    objects: tuple[ObjectStep, ...] = ()
    fields: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class ObjectRetention:
    """An object retention rule. ``age_source == "last_modified"``: list ``list_prefix`` and
    delete objects last modified before ``as_of - period``. ``age_source == "row"``: page through
    ``select_due`` (keyset on the primary key: ``after_key`` ``[]`` to start, then ``[last key
    seen]``), delete ``object_step.keys_for(rows)``, then run ``clear_key_column`` with ``keys``
    when the table stores the key."""

    rule: str
    prefix: PrefixRef
    list_prefix: str
    period_days: float
    age_source: Literal["last_modified", "row"]
    params: Mapping[str, Any]
    input_params: tuple[str, ...]
    select_due: sql.Composed | None = None
    object_step: ObjectStep | None = None
    clear_key_column: sql.Composed | None = None
    reason: str = ""


@dataclass(frozen=True)
class RetentionPlan:
    """The retention sweep: object rules first, then table rules, children before parents (so
    a parent whose rule needs it unreferenced can go in the same sweep)."""

    objects: tuple[ObjectRetention, ...]
    statements: tuple[RetentionStatement, ...]


def _condition_sql(
    datamap: DataMap, ref: TableRef, table: TableSpec, condition: Condition, index: int, params: dict[str, Any]
) -> sql.Composable:
    if condition.unreferenced:
        checks = []
        all_kinds = (ReferenceKind.ownership, ReferenceKind.mention, ReferenceKind.scope)
        for n, edge in enumerate(e for e in graph.reference_edges(datamap, all_kinds) if e.parent == ref):
            alias = f"ref{index}_{n}"
            checks.append(
                sql.SQL("NOT EXISTS (SELECT 1 FROM {} WHERE {} = {})").format(
                    _table_sql(datamap, edge.child, alias),
                    sql.Identifier(alias, edge.field),
                    sql.Identifier("t", edge.parent_field),
                )
            )
        return _and(checks)
    assert condition.column is not None
    column = sql.Identifier("t", condition.column)
    name = f"condition_{index}"
    if condition.in_ is not None:
        params[name] = list(condition.in_)
        return _any(column, name)
    if condition.not_in is not None:
        params[name] = list(condition.not_in)
        return sql.SQL("({col} IS NULL OR NOT ({col} = ANY({p})))").format(col=column, p=sql.Placeholder(name))
    return sql.SQL("{} IS NULL" if condition.is_null else "{} IS NOT NULL").format(column)


def _due_where(
    datamap: DataMap, ref: TableRef, table: TableSpec, rule: RetentionRule, params: dict[str, Any]
) -> sql.Composable:
    assert rule.age_column is not None
    period = f"period_{rule.name}"
    params[period] = rule.period.sql_interval
    parts: list[sql.Composable] = [
        sql.SQL("{} < {}::timestamptz - {}::interval").format(
            sql.Identifier("t", rule.age_column), sql.Placeholder(AS_OF), sql.Placeholder(period)
        ),
        sql.SQL("{} <> ALL({})").format(sql.Identifier("t", table.primary_key), sql.Placeholder(HELD_KEYS)),
    ]
    if table.scope_column:
        parts.append(
            sql.SQL("({col} IS NULL OR {col} <> ALL({held}))").format(
                col=sql.Identifier("t", table.scope_column), held=sql.Placeholder(HELD_SCOPE_IDS)
            )
        )
    for index, condition in enumerate(rule.conditions):
        parts.append(_condition_sql(datamap, ref, table, condition, index, params))
    return _and(parts)


def _retention_statement(datamap: DataMap, rule: RetentionRule) -> RetentionStatement:
    assert rule.table is not None
    ref = TableRef(rule.system, rule.table)
    table = datamap.table(ref)
    batch = datamap.settings.retention_batch_size
    params: dict[str, Any] = {BATCH_SIZE: batch}
    where = _due_where(datamap, ref, table, rule, params)
    pk = sql.Identifier(table.primary_key)
    needs = [AS_OF, HELD_KEYS, *([HELD_SCOPE_IDS] if table.scope_column else [])]
    target = _table_sql(datamap, ref)
    fields: tuple[str, ...] = ()

    if rule.action == "null_fields":
        fields = tuple(rule.fields)
        not_done = _or([sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", f)) for f in fields])
        where = _and([where, not_done])
        assignment = sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(f)) for f in fields)
    elif rule.action == "generalise":
        generalisation = rule.generalise
        assert generalisation is not None
        fields = (generalisation.field,)
        column = sql.Identifier(generalisation.field)
        qualified = sql.Identifier("t", generalisation.field)
        if generalisation.method == "ip_prefix":
            params["ipv4_prefix"], params["ipv6_prefix"] = generalisation.ipv4_prefix, generalisation.ipv6_prefix
            bits = sql.SQL(
                "CASE WHEN family({c}) = 4 THEN {v4}::integer ELSE {v6}::integer END"
            )
            new = sql.SQL("network(set_masklen({c}, {bits}))::inet").format(
                c=column, bits=bits.format(c=column, v4=sql.Placeholder("ipv4_prefix"), v6=sql.Placeholder("ipv6_prefix"))
            )
            not_done = sql.SQL("{c} IS NOT NULL AND masklen({c}) > {bits}").format(
                c=qualified, bits=bits.format(c=qualified, v4=sql.Placeholder("ipv4_prefix"), v6=sql.Placeholder("ipv6_prefix"))
            )
        else:
            params["truncate_unit"] = generalisation.unit
            new = sql.SQL("date_trunc({u}::text, {c}, 'UTC')").format(u=sql.Placeholder("truncate_unit"), c=column)
            not_done = sql.SQL("{c} IS NOT NULL AND {c} <> date_trunc({u}::text, {c}, 'UTC')").format(
                c=qualified, u=sql.Placeholder("truncate_unit")
            )
        where = _and([where, not_done])
        assignment = sql.SQL("{} = {}").format(column, new)

    select_keys = sql.SQL("SELECT {} FROM {} WHERE {} LIMIT {}").format(
        sql.Identifier("t", table.primary_key), _table_sql(datamap, ref, "t"), where, sql.Placeholder(BATCH_SIZE)
    )
    if rule.action in ("null_fields", "generalise"):
        query = sql.SQL("UPDATE {} SET {} WHERE {} IN ({})").format(target, assignment, pk, select_keys)
        return RetentionStatement(rule.name, ref, rule.action, query, params, tuple(needs), fields=fields,
                                  reason=rule.reason)

    # delete_rows: objects owned by the rows go first (two-phase, see RetentionStatement).
    object_steps = []
    extra: list[str] = []
    for prefix_ref in datamap.prefixes_tied_to(ref):
        prefix = datamap.prefix(prefix_ref)
        assert prefix.tied_to is not None
        placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
        key_column = prefix.tied_to.key_column
        object_steps.append(ObjectStep(prefix_ref, prefix.key_template, ref, placeholder_columns, key_column))
        extra += [*placeholder_columns.values(), *([key_column] if key_column else [])]
    if not object_steps:
        query = sql.SQL("DELETE FROM {} WHERE {} IN ({})").format(target, pk, select_keys)
        return RetentionStatement(rule.name, ref, rule.action, query, params, tuple(needs), reason=rule.reason)
    columns = _unique([table.primary_key, *extra])
    select_due = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
        _table_sql(datamap, ref, "t"),
        where,
        sql.Identifier("t", table.primary_key),
        sql.Placeholder(BATCH_SIZE),
    )
    query = sql.SQL("DELETE FROM {} WHERE {}").format(target, _any(pk, KEYS))
    return RetentionStatement(
        rule.name, ref, rule.action, query, params, (*needs, KEYS), select_due=select_due,
        objects=tuple(object_steps), reason=rule.reason,
    )


def _object_retention(datamap: DataMap, rule: RetentionRule) -> ObjectRetention:
    assert rule.prefix is not None
    ref = PrefixRef(rule.system, rule.prefix)
    prefix: ObjectPrefix = datamap.prefix(ref)
    if rule.age_column is None:
        return ObjectRetention(
            rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
            age_source="last_modified", params={}, input_params=(AS_OF,), reason=rule.reason,
        )
    source = datamap.tie_table(prefix)
    assert source is not None and prefix.tied_to is not None
    table = datamap.table(source)
    placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
    key_column = prefix.tied_to.key_column
    step = ObjectStep(ref, prefix.key_template, source, placeholder_columns, key_column)
    period = f"period_{rule.name}"
    params: dict[str, Any] = {period: rule.period.sql_interval, BATCH_SIZE: datamap.settings.retention_batch_size}
    pk = sql.Identifier("t", table.primary_key)
    where = [
        sql.SQL("{} < {}::timestamptz - {}::interval").format(
            sql.Identifier("t", rule.age_column), sql.Placeholder(AS_OF), sql.Placeholder(period)
        ),
        # > ALL(empty array) is true: the first page needs no typed NULL cursor.
        sql.SQL("{} > ALL({})").format(pk, sql.Placeholder(AFTER_KEY)),
        sql.SQL("{} <> ALL({})").format(pk, sql.Placeholder(HELD_KEYS)),
    ]
    needs = [AS_OF, AFTER_KEY, HELD_KEYS]
    if table.scope_column:
        where.append(
            sql.SQL("({col} IS NULL OR {col} <> ALL({held}))").format(
                col=sql.Identifier("t", table.scope_column), held=sql.Placeholder(HELD_SCOPE_IDS)
            )
        )
        needs.append(HELD_SCOPE_IDS)
    select_columns = _unique([table.primary_key, *placeholder_columns.values(), *([key_column] if key_column else [])])
    select_due = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.Identifier("t", c) for c in select_columns),
        _table_sql(datamap, source, "t"),
        _and(where),
        pk,
        sql.Placeholder(BATCH_SIZE),
    )
    clear = None
    if key_column:
        clear = sql.SQL("UPDATE {} SET {} = NULL WHERE {}").format(
            _table_sql(datamap, source), sql.Identifier(key_column), _any(sql.Identifier(table.primary_key), KEYS)
        )
    return ObjectRetention(
        rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
        age_source="row", params=params, input_params=tuple(needs), select_due=select_due,
        object_step=step, clear_key_column=clear, reason=rule.reason,
    )


def build_retention_plan(datamap: DataMap) -> RetentionPlan:
    """Every retention rule of the map as executable batches (see RetentionPlan for order)."""
    order = {ref: index for index, ref in enumerate(graph.erasure_order(datamap))}
    objects = [_object_retention(datamap, r) for r in datamap.retention if r.prefix is not None]
    table_rules = [r for r in datamap.retention if r.table is not None]
    position = {r.name: i for i, r in enumerate(table_rules)}
    table_rules.sort(
        key=lambda r: (order.get(TableRef(r.system, r.table or ""), len(order)), r.action == "delete_rows", position[r.name])
    )
    return RetentionPlan(
        objects=tuple(objects),
        statements=tuple(_retention_statement(datamap, r) for r in table_rules),
    )


# --------------------------------------------------------------------------------------------
# Objects and processors


def render_key(template: str, values: Mapping[str, Any]) -> str:
    """Fill a key template. Values may not contain ``/`` or be ``.``/``..``: a value must never
    move a key into another folder (ValueError)."""
    clean: dict[str, str] = {}
    for name, value in values.items():
        text = str(value)
        if "/" in text or text in ("", ".", "..") or any(ord(ch) < 32 for ch in text):
            raise ValueError(f"value for {{{name}}} cannot be used in an object key")
        clean[name] = text
    return template.format(**clean)


@dataclass(frozen=True)
class ProcessorRequest:
    """An HTTP call ready to send (relative to the connection's base URL). ``paging`` (from the
    map) says how a list call continues: see :meth:`next_page`."""

    method: str
    path: str
    query: Mapping[str, str]
    records_path: str | None
    id_field: str | None
    success_status: tuple[int, ...]
    absent_status: tuple[int, ...]
    paging: Paging | None = None

    def next_page(self, document: Any, page: Sequence[Any]) -> ProcessorRequest | None:
        """The request for the page after ``page`` (the records of ``document``, the decoded
        response), or None when this was the last page (or the call does not page)."""
        cursor = next_page_cursor(self.paging, document, page) if self.paging is not None else None
        if cursor is None:
            return None
        assert self.paging is not None
        return replace(self, query={**self.query, self.paging.cursor_param: cursor})

    def __repr__(self) -> str:  # the path and query may carry an identity: never print them
        return f"ProcessorRequest({self.method} <{len(self.path)}-char path>, {len(self.query)} query params)"

    __str__ = __repr__


def build_processor_request(template: RequestTemplate, values: Mapping[str, str]) -> ProcessorRequest:
    """Fill a declared request template. Path values are percent-encoded (``/`` too); query
    values are left for the HTTP client to encode. Missing values raise KeyError."""
    path_values = {k: quote(str(v), safe="") for k, v in values.items()}
    return ProcessorRequest(
        method=template.method,
        path=template.path.format(**path_values),
        query={k: v.format(**values) for k, v in template.query.items()},
        records_path=template.records_path,
        id_field=template.id_field,
        success_status=tuple(template.success_status),
        absent_status=tuple(template.absent_status),
        paging=template.paging,
    )


def _value_at(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def next_page_cursor(paging: Paging, document: Any, page: Sequence[Any]) -> str | None:
    """The cursor of the page after ``page`` by the map's ``paging`` declaration, or None when
    ``page`` was the last: it is empty, ``has_more_path`` (when declared) is not true, or no
    cursor is found (a last record without ``cursor_field``, nothing at ``next_cursor_path``)."""
    if not page:
        return None
    if paging.has_more_path is not None and _value_at(document, paging.has_more_path) is not True:
        return None
    if paging.cursor_field is not None:
        last = page[-1]
        cursor = last.get(paging.cursor_field) if isinstance(last, Mapping) else None
    else:
        assert paging.next_cursor_path is not None
        cursor = _value_at(document, paging.next_cursor_path)
    if cursor is None or cursor == "" or isinstance(cursor, (Mapping, list, bool)):
        return None
    return str(cursor)


def records_at(document: Any, records_path: str | None) -> list[Any]:
    """The record list at a dot path of a decoded JSON response (``data``, ``results.items``);
    a single object is returned as a one-element list, nothing found as an empty list."""
    node = document
    for part in (records_path.split(".") if records_path else []):
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    if node is None:
        return []
    return list(node) if isinstance(node, list) else [node]
