"""Pure plan builders: from the data map to the SQL statements the executors run.

Nothing here connects to anything. Every statement is a :class:`Statement`: a
``psycopg.sql.Composed`` built from ``sql.Identifier`` (names from the validated map) and
``sql.Placeholder`` (every value: identities, keys, mask values, periods, dates, batch sizes),
with the constant values the map gives and the names of the values the executor supplies at run
time. No value is ever formatted into SQL text, so an identity can only reach the database as a
bound parameter, never a log line showing the query. ``Statement.text`` renders without a
connection (psycopg >= 3.2): it is what the dry run, ``validate-datamap --explain --sql`` and the
tests show, and its digest is what an approved erasure plan records.

These are the only SQL builders for a person's data: resolution
(:func:`governance.resolution.resolve_subject`), the export
(:mod:`governance.connectors.postgres`), erasure (:mod:`governance.erasure.executor`) and its
verification execute the statements built here and nothing else.

Three plans, one per workflow that changes or reads personal data:

* :func:`build_resolution_plan`: where a person's rows are (identity -> rows -> owned rows ->
  objects), with the count and export statements of each table, for export, erasure and dry runs;
* :func:`build_erasure_plan`: what erasure executes, children before parents, keyed by the
  primary keys resolution found (and the checks verification runs afterwards);
* :func:`build_retention_plan`: what the retention sweep executes, in bounded batches.

Parameter names the executor supplies at run time are module constants (``AS_OF``,
``SCOPE_IDS``, ...); each statement lists the ones it needs in ``input_params`` and carries its
constant values in ``params``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
KEYS = "keys"  # primary keys a statement acts on (resolved, or selected by a previous statement)
REFERENCE_VALUES = "reference_values"  # the person's keys a mention may still point at
HELD_KEYS = "held_keys"  # primary keys under a legal hold (may be empty)
HELD_SCOPE_IDS = "held_scope_ids"  # business ids under a legal hold (may be empty)
AFTER_KEY = "after_key"  # keyset cursor: [last primary key handled], [] to start
KEYED_HASH_INNER = "keyed_hash_inner_pad"
KEYED_HASH_OUTER = "keyed_hash_outer_pad"
KEYED_HASH_PADS = (KEYED_HASH_INNER, KEYED_HASH_OUTER)
# Matching by keyed hashes (a person known only by the suppression list).
CREATED_BEFORE = "kh_created_before"
PLANNED_KEYS_PREFIX = "kh_planned_"

_HMAC_BLOCK = 64  # SHA-256 block size

# "business": every person of one business client (a plan whose root is a business id:
# :func:`build_business_resolution_plan`).
Matching = Literal["identity", "keyed_hash", "business"]


# --------------------------------------------------------------------------------------------
# The statement


@dataclass(frozen=True)
class Statement:
    """One SQL statement exactly as an executor sends it.

    ``query`` holds placeholders only; ``params`` the constant values taken from the map (mask
    values, periods, batch sizes: never a person's data); ``input_params`` the names the executor
    supplies when it runs it (identities, keys, ``as_of``, keyed-hash pads). ``purpose`` says what
    it is for (``resolve``, ``export``, ``delete_rows``, ...), ``table`` what it reads or changes.
    """

    purpose: str
    table: TableRef
    query: sql.Composed
    params: Mapping[str, Any] = field(default_factory=dict)
    input_params: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The SQL with its placeholders (``%(name)s``), never a value: safe to log and show."""
        return self.query.as_string()

    @property
    def sha256(self) -> str:
        """Digest of the SQL text and its constant values: what an approval of a plan covers."""
        constants = json.dumps({k: self.params[k] for k in sorted(self.params)}, default=str, sort_keys=True)
        return hashlib.sha256(f"{self.text}\x00{constants}".encode()).hexdigest()

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters to execute with: the constants plus ``input_params`` from ``values``
        (KeyError naming what is missing, never a value)."""
        missing = [name for name in self.input_params if name not in values]
        if missing:
            raise KeyError(f"{self.purpose} on {self.table} needs {', '.join(missing)}")
        return {**self.params, **{name: values[name] for name in self.input_params}}

    def __repr__(self) -> str:
        return f"Statement({self.purpose} {self.table}: {self.text})"


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


def excluded_param(table: TableRef) -> str:
    """Name of the parameter holding the keys of ``table`` that narrowing left out (another
    person's rows): the count and export statements skip them."""
    return f"excluded_{table.system}_{table.table}"


def planned_keys_param(table: TableRef) -> str:
    """Keyed-hash matching on a table without a record-time column: the keys an earlier erasure
    removed (only those rows may match again)."""
    return f"{PLANNED_KEYS_PREFIX}{table.system}_{table.table}"


def identity_expression(column: sql.Composable, match: IdentityMatch) -> sql.Composable:
    """The SQL side of an identity comparison: ``lower(col)`` or ``col``, mirroring
    :mod:`governance.identity` on the Python side."""
    return sql.SQL("lower({})").format(column) if match is IdentityMatch.lowered else column


# --------------------------------------------------------------------------------------------
# Keyed hashes (one definition: erasure's keyed_hash action and matching by the suppression list)


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


def keyed_hash_sql(column: sql.Composable, *, domain: str | None = None) -> sql.Composed:
    """HMAC-SHA256 (hex) of the column's text (UTF-8) from the pads of :func:`keyed_hash_params`.

    With ``domain`` (the name of a bytea parameter, e.g. ``kind || NUL``) the message is
    ``domain || value``: what :class:`governance.crypto.IdentityHasher` computes for an identity."""
    prefix = sql.SQL("{}::bytea || ").format(sql.Placeholder(domain)) if domain else sql.SQL("")
    return sql.SQL(
        "encode(sha256({outer}::bytea || sha256({inner}::bytea || {prefix}convert_to({col}::text, 'UTF8'))), 'hex')"
    ).format(outer=sql.Placeholder(KEYED_HASH_OUTER), inner=sql.Placeholder(KEYED_HASH_INNER), prefix=prefix, col=column)


def keyed_hash_reference(key: bytes, value: str, *, domain: bytes = b"") -> str:
    """What :func:`keyed_hash_sql` computes for ``value`` (for tests and for matching later)."""
    return hmac.new(key, domain + value.encode("utf-8"), hashlib.sha256).hexdigest()


def keyed_hash_domain_param(kind: str) -> str:
    return f"kh_domain_{kind}"


def keyed_hash_domain(kind: str) -> bytes:
    """The domain prefix of an identity's keyed hash (see :class:`governance.crypto.IdentityHasher`)."""
    return f"{kind}\x00".encode()


# --------------------------------------------------------------------------------------------
# Field rewrites (one mapping from an erasure action to SQL)


@dataclass(frozen=True)
class FieldRewrite:
    """How erasure rewrites one field: the SET clause, the condition of a row not rewritten yet
    (so a repeated statement touches nothing twice) and of a row rewritten (what verification
    checks), with their constant and run-time parameters."""

    field: str
    assignment: sql.Composable
    pending: sql.Composable
    cleared: sql.Composable
    params: Mapping[str, Any]
    input_params: tuple[str, ...]


def mask_param(ref: TableRef, field_name: str) -> str:
    return f"mask_{ref.table}_{field_name}"


def field_rewrite(ref: TableRef, spec: FieldSpec) -> FieldRewrite:
    """The rewrite of ``spec`` by its erasure action (``nullify``, ``mask``, ``keyed_hash``);
    ValueError for an action that does not rewrite a field."""
    column = sql.Identifier(spec.name)
    action = spec.erasure_action
    if action is ErasureAction.nullify:
        return FieldRewrite(spec.name, sql.SQL("{} = NULL").format(column), sql.SQL("{} IS NOT NULL").format(column),
                            sql.SQL("({} IS NULL)").format(column), {}, ())  # fmt: skip
    if action is ErasureAction.mask:
        name = mask_param(ref, spec.name)
        value = sql.Placeholder(name)
        return FieldRewrite(
            spec.name, sql.SQL("{} = {}").format(column, value), sql.SQL("{} IS DISTINCT FROM {}").format(column, value),
            sql.SQL("({} IS NOT DISTINCT FROM {})").format(column, value), {name: spec.mask_value}, (),
        )  # fmt: skip
    if action is ErasureAction.keyed_hash:
        # A rewritten value is 64 hex digits; a personal value (a name, an address) never is.
        return FieldRewrite(
            spec.name, sql.SQL("{} = {}").format(column, keyed_hash_sql(column)),
            sql.SQL("({c} IS NOT NULL AND {c}::text !~ '^[0-9a-f]{{64}}$')").format(c=column),
            sql.SQL("({c} IS NULL OR {c}::text ~ '^[0-9a-f]{{64}}$')").format(c=column), {}, KEYED_HASH_PADS,
        )  # fmt: skip
    raise ValueError(f"{ref}.{spec.name}: erasure action {action.value if action else None} does not rewrite a field")


def _rewrites(ref: TableRef, fields: Iterable[FieldSpec]) -> list[FieldRewrite]:
    return [field_rewrite(ref, spec) for spec in fields]


def _rewrite_params(rewrites: Sequence[FieldRewrite]) -> tuple[dict[str, Any], tuple[str, ...]]:
    params: dict[str, Any] = {}
    needs: list[str] = []
    for rewrite in rewrites:
        params.update(rewrite.params)
        needs += rewrite.input_params
    return params, _unique(needs)


# --------------------------------------------------------------------------------------------
# Resolution: where is this person?

# What a row's identity column says about the request's identity of that kind.
ABSENT, MATCHES, DIFFERS = 0, 1, 2
KEPT_UNTIL = "__kept_until"
STILL_KEPT = "__still_kept"


def identity_state_column(column: IdentityColumn) -> str:
    return f"__id_{column.field}"


def owner_flag_column(index: int) -> str:
    return f"__own_{index}"


@dataclass(frozen=True)
class ResolutionStep:
    """Rows of one table that are the person's: matched by identity or owned by rows of earlier
    steps, filtered to the business scope when the request is scoped and the table declares a
    scope column.

    ``select`` is what resolution runs: ``columns`` (the primary key, what later steps, object
    keys, scope and owning references need), one ``__id_<field>`` state per identity column
    (ABSENT, MATCHES, DIFFERS), one ``__own_<n>`` flag per owning reference and, for a table under
    a legal exception, ``__kept_until``/``__still_kept`` as of ``as_of``. ``count`` and
    ``export`` are what the export runs in the same snapshot: the same match minus the rows
    narrowing left out (``excluded_<system>_<table>``). ``output_params`` maps each parameter
    later steps read to the column of this step's rows that fills it.
    """

    table: TableRef
    primary_key: str
    columns: tuple[str, ...]
    select: Statement
    count: Statement
    export: Statement
    identity_matches: tuple[IdentityColumn, ...]
    owned_via: tuple[ReferenceEdge, ...]
    output_params: Mapping[str, str]
    scoped: bool

    @property
    def materialise(self) -> bool:
        return bool(self.output_params)

    @property
    def input_params(self) -> tuple[str, ...]:
        return self.select.input_params


@dataclass(frozen=True)
class MentionStep:
    """Rows of ``edge.child`` that mention one of the person's rows through ``edge.field``: on
    erasure the reference is cleared (the field's erasure action), the row stays. ``select``
    returns the primary key, the field and the scope column."""

    edge: ReferenceEdge
    primary_key: str
    select: Statement
    parent_param: str

    @property
    def input_params(self) -> tuple[str, ...]:
        return self.select.input_params


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

    Run each step's ``select`` in order with ``{kind: [normalised values]}`` (``matching ==
    "identity"``; keyed hashes, pads and limits for ``"keyed_hash"``), ``scope_ids`` when
    ``business_scope`` and ``as_of``; after each step, set each of its ``output_params`` to the
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
    matching: Matching = "identity"

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

    @property
    def statements(self) -> list[Statement]:
        """Every statement of the plan, in the order they run (for the dry run and ``--sql``)."""
        out = [s.select for s in self.steps] + [m.select for m in self.mentions]
        return out + [s.count for s in self.steps] + [s.export for s in self.steps]


def record_time_column(datamap: DataMap, ref: TableRef) -> str | None:
    """The column saying when a row was recorded: ``created_at``, else the legal exception's or a
    retention rule's age column for the table (``callers.first_seen_at``); None when the map
    names none."""
    table = datamap.table(ref)
    if table.field("created_at") is not None:
        return "created_at"
    exception = datamap.legal_exception_for(ref)
    if exception is not None:
        return exception.age_column
    for rule in datamap.retention:
        if rule.table == ref.table and rule.system == ref.system and rule.age_column:
            return rule.age_column
    return None


def build_resolution_plan(
    datamap: DataMap, identity_kinds: Iterable[str], business_scope: bool = False, *, matching: Matching = "identity"
) -> ResolutionPlan:
    """Plan how to find every row, object and processor record of a person.

    ``identity_kinds`` are the kinds of identity the request carries (``email``, ``phone``);
    unknown kinds raise DataMapError. With ``business_scope`` every step on a table with a scope
    column is limited to ``scope_ids``; identity tables without one are left out (listed in
    ``out_of_scope``), since the business cannot speak for rows not collected for it.

    ``matching`` says how identity columns are compared: with the normalised identities
    (``identity``: a param per kind), or with keyed hashes computed in SQL (``keyed_hash``: a
    person known only by the suppression list; ``kh_<kind>`` digests, ``kh_domain_<kind>``, the
    keyed-hash pads, and rows recorded before ``kh_created_before``, or for a table without a
    record-time column, only the keys in ``kh_planned_<system>_<table>``).
    """
    kinds = tuple(sorted(set(identity_kinds)))
    if not kinds and business_scope and matching == "business":
        return build_business_resolution_plan(datamap)
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
        output_params = dict(outputs[ref])
        if extra_columns[ref]:
            output_params.setdefault(key_param(datamap, ref, table.primary_key), table.primary_key)
        columns = _unique([
            table.primary_key, *output_params.values(), *extra_columns[ref],
            *([table.scope_column] if table.scope_column else []), *(edge.field for edge in parents),
        ])  # fmt: skip
        where, needs, scoped = _match_where(datamap, ref, table, matches, parents, business_scope, matching)
        steps.append(
            ResolutionStep(
                table=ref,
                primary_key=table.primary_key,
                columns=columns,
                select=_resolve_statement(datamap, ref, table, columns, matches, parents, where, needs, matching),
                count=_narrowed_statement(datamap, ref, table, "count", where, needs),
                export=_narrowed_statement(datamap, ref, table, "export", where, needs),
                identity_matches=matches,
                owned_via=parents,
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
        names = _unique([child.primary_key, edge.field, *([child.scope_column] if child.scope_column else [])])
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
            _columns(names), _table_sql(datamap, edge.child), _and(conditions), sql.Identifier(child.primary_key)
        )
        mentions.append(
            MentionStep(
                edge=edge,
                primary_key=child.primary_key,
                select=Statement("mentions", edge.child, query, {}, tuple(mention_needs)),
                parent_param=param,
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
        matching=matching,
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


def build_business_resolution_plan(datamap: DataMap) -> ResolutionPlan:
    """Plan how to find every row, object and processor record one business client's account
    holds about its callers and users (a business leaving: policy 6).

    The root is a business id (``scope_ids``), not a person's identities: every row of a table
    holding identities (``users``, ``callers``) whose scope column is the business, then, along
    ownership references, what those rows own (filtered to the business where the owned table has
    a scope column too), the objects tied to them, and the mentions of them elsewhere (cleared).
    Identity tables without a scope column cannot be attributed to a business and are listed in
    ``out_of_scope``. The root steps also return the identity columns, so that each person's
    records can be looked up at the processors (in the task, never in XCom or a log).

    The statements are the ones erasure executes and verification re-runs
    (:func:`build_erasure_plan` on this plan); ``build_resolution_plan(datamap, (),
    business_scope=True, matching="business")`` returns this plan too, so a stored business plan
    is rebuilt and checked like any other.
    """
    kinds = tuple(datamap.identity_kinds)
    reach = graph.subject_reach(datamap, kinds)
    out_of_scope = sorted({c.table for c in reach.identity_columns if datamap.table(c.table).scope_column is None})
    if out_of_scope:
        reach = _reach_without(datamap, kinds, set(out_of_scope))
    roots = {c.table for c in reach.identity_columns}
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
    for column in reach.identity_columns:
        extra_columns[column.table].append(column.field)

    steps: list[ResolutionStep] = []
    for ref in reach.owned_tables:
        table = datamap.table(ref)
        parents = tuple(reach.parents_of(ref))
        output_params = dict(outputs[ref])
        if extra_columns[ref]:
            output_params.setdefault(key_param(datamap, ref, table.primary_key), table.primary_key)
        columns = _unique([
            table.primary_key, *output_params.values(), *extra_columns[ref],
            *([table.scope_column] if table.scope_column else []), *(edge.field for edge in parents),
        ])  # fmt: skip
        if ref in roots:  # every row collected for the business
            assert table.scope_column is not None
            where: sql.Composable = _any(sql.Identifier(table.scope_column), SCOPE_IDS)
            needs: tuple[str, ...] = (SCOPE_IDS,)
            scoped = True
        else:
            where, needs, scoped = _match_where(datamap, ref, table, (), parents, True, "business")
        steps.append(
            ResolutionStep(
                table=ref,
                primary_key=table.primary_key,
                columns=columns,
                select=_resolve_statement(datamap, ref, table, columns, (), parents, where, needs, "business"),
                count=_narrowed_statement(datamap, ref, table, "count", where, needs),
                export=_narrowed_statement(datamap, ref, table, "export", where, needs),
                identity_matches=(),
                owned_via=parents,
                output_params=output_params,
                scoped=scoped,
            )
        )
    mentions: list[MentionStep] = []
    for edge in reach.mention_edges:
        child = datamap.table(edge.child)
        param = key_param(datamap, edge.parent, edge.parent_field)
        # Every mention of the business's people, whichever business the mentioning row is of.
        names = _unique([child.primary_key, edge.field, *([child.scope_column] if child.scope_column else [])])
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
            _columns(names), _table_sql(datamap, edge.child), _any(sql.Identifier(edge.field), param),
            sql.Identifier(child.primary_key),
        )  # fmt: skip
        mentions.append(
            MentionStep(
                edge=edge, primary_key=child.primary_key,
                select=Statement("mentions", edge.child, query, {}, (param,)), parent_param=param,
            )
        )  # fmt: skip
    processors = tuple(
        ProcessorStep(p.name, tuple(k for k in kinds if k in p.lookup_identity_kinds))
        for p in datamap.processors
        if any(k in p.lookup_identity_kinds for k in kinds)
    )
    return ResolutionPlan(
        identity_kinds=(),
        business_scope=True,
        steps=tuple(steps),
        mentions=tuple(mentions),
        objects=tuple(object_steps),
        # Export bundles are a person's own requests, not the business's: their erasures remove them.
        request_objects=(),
        processors=processors,
        out_of_scope=tuple(out_of_scope),
        matching="business",
    )


def _identity_match(column: IdentityColumn, matching: Matching) -> tuple[sql.Composable, tuple[str, ...]]:
    """A boolean expression: the column holds one of the person's identities (or keyed hashes)."""
    expression = identity_expression(sql.Identifier(column.field), column.match)
    if matching == "identity":
        return _any(expression, column.kind), (column.kind,)
    domain = keyed_hash_domain_param(column.kind)
    hashed = keyed_hash_sql(expression, domain=domain)
    return _any(hashed, f"kh_{column.kind}"), (f"kh_{column.kind}", domain, *KEYED_HASH_PADS)


def _keyed_hash_restriction(datamap: DataMap, ref: TableRef, table: TableSpec) -> tuple[sql.Composable, str]:
    """Rows a keyed-hash match may find: recorded before the erasure, or (no record-time column)
    among the keys the erasure removed."""
    column = record_time_column(datamap, ref)
    if column:
        return sql.SQL("{} < {}").format(sql.Identifier(column), sql.Placeholder(CREATED_BEFORE)), CREATED_BEFORE
    name = planned_keys_param(ref)
    return _any(sql.Identifier(table.primary_key), name), name


def _match_where(
    datamap: DataMap,
    ref: TableRef,
    table: TableSpec,
    matches: Sequence[IdentityColumn],
    parents: Sequence[ReferenceEdge],
    business_scope: bool,
    matching: Matching,
) -> tuple[sql.Composable, tuple[str, ...], bool]:
    alternatives: list[sql.Composable] = []
    needs: list[str] = []
    restriction: sql.Composable | None = None
    if matches and matching == "keyed_hash":
        restriction, restriction_param = _keyed_hash_restriction(datamap, ref, table)
        needs.append(restriction_param)
    for match in matches:
        expression, params = _identity_match(match, matching)
        alternatives.append(sql.SQL("({} AND {})").format(expression, restriction) if restriction is not None else expression)
        needs += params
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


def legal_period_param(exception: LegalException) -> str:
    return f"legal_period_{exception.name}"


def _resolve_statement(
    datamap: DataMap,
    ref: TableRef,
    table: TableSpec,
    columns: Sequence[str],
    matches: Sequence[IdentityColumn],
    parents: Sequence[ReferenceEdge],
    where: sql.Composable,
    needs: tuple[str, ...],
    matching: Matching,
) -> Statement:
    select: list[sql.Composable] = [sql.Identifier(c) for c in columns]
    params: dict[str, Any] = {}
    for column in matches:
        expression, _ = _identity_match(column, matching)
        select.append(
            sql.SQL("CASE WHEN {col} IS NULL THEN {absent} WHEN {match} THEN {hit} ELSE {differs} END AS {alias}").format(
                col=sql.Identifier(column.field), match=expression, absent=sql.Literal(ABSENT), hit=sql.Literal(MATCHES),
                differs=sql.Literal(DIFFERS), alias=sql.Identifier(identity_state_column(column)),
            )
        )  # fmt: skip
    for n, edge in enumerate(parents):
        select.append(
            sql.SQL("COALESCE({} = ANY({}), false) AS {}").format(
                sql.Identifier(edge.field), sql.Placeholder(key_param(datamap, edge.parent, edge.parent_field)),
                sql.Identifier(owner_flag_column(n)),
            )
        )
    extra: tuple[str, ...] = ()
    exception = datamap.legal_exception_for(ref)
    if exception is not None:
        period = legal_period_param(exception)
        params[period] = exception.period.sql_interval
        age = sql.Identifier(exception.age_column)
        until = sql.SQL("{} + {}::interval").format(age, sql.Placeholder(period))
        select.append(sql.SQL("{} AS {}").format(until, sql.Identifier(KEPT_UNTIL)))
        select.append(
            sql.SQL("({age} IS NULL OR {until} > {as_of}::timestamptz) AS {alias}").format(
                age=age, until=until, as_of=sql.Placeholder(AS_OF), alias=sql.Identifier(STILL_KEPT)
            )
        )
        extra = (AS_OF,)
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        sql.SQL(", ").join(select), _table_sql(datamap, ref), where, sql.Identifier(table.primary_key)
    )
    return Statement("resolve", ref, query, params, _unique([*needs, *extra]))


def _narrowed_statement(
    datamap: DataMap, ref: TableRef, table: TableSpec, purpose: Literal["count", "export"], where: sql.Composable,
    needs: tuple[str, ...],
) -> Statement:
    """The match minus the rows narrowing left out (``<> ALL('{}')`` is true, so a table nothing
    was left out of costs nothing extra): the person's rows exactly as resolution kept them."""
    narrowed = sql.SQL("{} AND {} <> ALL({})").format(
        where, sql.Identifier(table.primary_key), sql.Placeholder(excluded_param(ref))
    )
    if purpose == "count":
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_table_sql(datamap, ref), narrowed)
    else:  # every mapped column, in key order, for streaming into a bundle
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
            _columns(table.field_names), _table_sql(datamap, ref), narrowed, sql.Identifier(table.primary_key)
        )
    return Statement(purpose, ref, query, {}, (*needs, excluded_param(ref)))


# --------------------------------------------------------------------------------------------
# Erasure


ErasureEffect = Literal[
    "clear_mention", "delete_rows", "rewrite_rows", "minimise_kept_rows", "delete_expired_kept_rows"
]


@dataclass(frozen=True)
class ErasureStatement:
    """One table and effect of an erasure and the statement that carries it out.

    ``statement`` acts on the rows whose primary keys are bound to ``keys`` (the executor binds
    them in bounded batches of the keys resolution found and legal holds left free); a
    ``clear_mention`` statement also needs ``reference_values`` (the person's keys the mention
    may still point at). Every statement stops matching the rows it has handled (deleted, or
    rewritten), so repeating it, or re-running it after a crash, never double-applies.
    ``check`` is what verification runs afterwards on the same keys: mentions still pointing at
    the person, or one ``<field>_cleared`` flag per minimised field of a kept row.
    """

    table: TableRef
    effect: ErasureEffect
    statement: Statement
    fields: tuple[str, ...] = ()
    legal_exception: str | None = None
    reference_field: str | None = None
    check: Statement | None = None


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


def _keyed(table: TableSpec) -> sql.Composed:
    return _any(sql.Identifier(table.primary_key), KEYS)


def _delete(datamap: DataMap, ref: TableRef, table: TableSpec, effect: ErasureEffect) -> Statement:
    query = sql.SQL("DELETE FROM {} WHERE {}").format(_table_sql(datamap, ref), _keyed(table))
    return Statement(effect, ref, query, {}, (KEYS,))


def _rewrite(
    datamap: DataMap, ref: TableRef, table: TableSpec, effect: ErasureEffect, rewrites: Sequence[FieldRewrite]
) -> Statement:
    params, needs = _rewrite_params(rewrites)
    pending = sql.SQL(" OR ").join(r.pending for r in rewrites)
    query = sql.SQL("UPDATE {} SET {} WHERE {} AND ({})").format(
        _table_sql(datamap, ref), sql.SQL(", ").join(r.assignment for r in rewrites), _keyed(table), pending
    )
    return Statement(effect, ref, query, params, (KEYS, *needs))


def _cleared_check(datamap: DataMap, ref: TableRef, table: TableSpec, rewrites: Sequence[FieldRewrite]) -> Statement:
    params, _ = _rewrite_params(rewrites)
    flags = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(r.cleared, sql.Identifier(f"{r.field}_cleared")) for r in rewrites
    )
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY 1").format(
        sql.Identifier(table.primary_key), flags, _table_sql(datamap, ref), _keyed(table)
    )
    return Statement("verify_kept_rows", ref, query, params, (KEYS,))


def build_erasure_plan(datamap: DataMap, resolution: ResolutionPlan) -> ErasurePlan:
    """The erasure of the person ``resolution`` finds, children before parents
    (:func:`graph.erasure_order`).

    Per table: rows mentioning the person get the mention field rewritten; the person's own rows
    are deleted when a field is ``delete_row``, else rewritten field by field; under a legal
    exception, rows past the legal period are deleted and rows still inside it minimised (kept
    fields untouched): which rows are which, resolution says (``__still_kept``).
    """
    order = graph.erasure_order(datamap)
    owned = {s.table for s in resolution.steps}
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
            rewrite = field_rewrite(ref, spec)
            params, needs = _rewrite_params([rewrite])
            reference = _any(sql.Identifier(spec.name), REFERENCE_VALUES)
            query = sql.SQL("UPDATE {} SET {} WHERE {} AND {}").format(
                _table_sql(datamap, ref), rewrite.assignment, _keyed(table), reference
            )
            check = sql.SQL("SELECT {} FROM {} WHERE {} AND {} ORDER BY 1").format(
                sql.Identifier(table.primary_key), _table_sql(datamap, ref), _keyed(table), reference
            )
            statements.append(
                ErasureStatement(
                    table=ref, effect="clear_mention",
                    statement=Statement("clear_mention", ref, query, params, (KEYS, REFERENCE_VALUES, *needs)),
                    fields=(spec.name,), reference_field=spec.name,
                    check=Statement("verify_mentions", ref, check, {}, (KEYS, REFERENCE_VALUES)),
                )
            )  # fmt: skip
        if ref not in owned:
            continue
        rewrites = _rewrites(ref, [f for f in table.fields if f.erasure_action in REWRITING_ACTIONS])
        fields = tuple(r.field for r in rewrites)
        exception = datamap.legal_exception_for(ref)
        if exception is not None:
            kept[ref] = exception
            statements.append(
                ErasureStatement(ref, "delete_expired_kept_rows", _delete(datamap, ref, table, "delete_expired_kept_rows"),
                                 legal_exception=exception.name)
            )  # fmt: skip
            if rewrites:
                statements.append(
                    ErasureStatement(
                        ref, "minimise_kept_rows", _rewrite(datamap, ref, table, "minimise_kept_rows", rewrites),
                        fields=fields, legal_exception=exception.name,
                        check=_cleared_check(datamap, ref, table, rewrites),
                    )
                )  # fmt: skip
        elif table.deletes_rows_on_erasure:
            statements.append(ErasureStatement(ref, "delete_rows", _delete(datamap, ref, table, "delete_rows")))
        elif rewrites:
            statements.append(
                ErasureStatement(ref, "rewrite_rows", _rewrite(datamap, ref, table, "rewrite_rows", rewrites), fields=fields)
            )
    return ErasurePlan(
        resolution=resolution,
        objects=resolution.objects,
        request_objects=resolution.request_objects,
        statements=tuple(statements),
        processors=tuple(p.processor for p in resolution.processors),
        kept=kept,
    )


# --------------------------------------------------------------------------------------------
# Retention


@dataclass(frozen=True)
class RetentionStatement:
    """One bounded batch of a table retention rule; repeat until fewer than ``batch_size`` rows.

    When ``select_due`` is set (rows own objects), run it first, delete the objects rendered by
    ``objects`` from its rows, then run ``statement`` with ``keys`` = the selected primary keys: a
    crash between the two leaves the rows, so the objects are found again. Otherwise ``statement``
    is self-contained. Rows under a legal hold (``held_keys``, ``held_scope_ids``: pass empty lists
    when none) are never touched.
    """

    rule: str
    table: TableRef
    action: str
    statement: Statement
    select_due: Statement | None = None
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
    select_due: Statement | None = None
    object_step: ObjectStep | None = None
    clear_key_column: Statement | None = None
    reason: str = ""


@dataclass(frozen=True)
class RetentionPlan:
    """The retention sweep: object rules first, then table rules, children before parents (so
    a parent whose rule needs it unreferenced can go in the same sweep).

    No DAG runs these yet (``retention_sweep`` is planned); the integration test
    ``test_retention_statements`` executes every one of them with the values a sweep binds."""

    objects: tuple[ObjectRetention, ...]
    statements: tuple[RetentionStatement, ...]

    @property
    def all_statements(self) -> list[Statement]:
        """Every statement of the sweep, in the order it runs (for ``--sql`` and the tests)."""
        out: list[Statement] = []
        for item in self.objects:
            out += [s for s in (item.select_due, item.clear_key_column) if s is not None]
        for statement in self.statements:
            out += [s for s in (statement.select_due, statement.statement) if s is not None]
        return out


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
        return RetentionStatement(rule.name, ref, rule.action, Statement(rule.action, ref, query, params, tuple(needs)),
                                  fields=fields, reason=rule.reason)  # fmt: skip

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
        return RetentionStatement(rule.name, ref, rule.action, Statement(rule.action, ref, query, params, tuple(needs)),
                                  reason=rule.reason)  # fmt: skip
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
        rule.name, ref, rule.action, Statement(rule.action, ref, query, {}, (KEYS,)),
        select_due=Statement("select_due", ref, select_due, params, tuple(needs)),
        objects=tuple(object_steps), reason=rule.reason,
    )


def _object_retention(datamap: DataMap, rule: RetentionRule) -> ObjectRetention:
    assert rule.prefix is not None
    ref = PrefixRef(rule.system, rule.prefix)
    prefix: ObjectPrefix = datamap.prefix(ref)
    if rule.age_column is None:
        return ObjectRetention(
            rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
            age_source="last_modified", reason=rule.reason,
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
        clear = Statement("clear_key_column", source, sql.SQL("UPDATE {} SET {} = NULL WHERE {}").format(
            _table_sql(datamap, source), sql.Identifier(key_column), _any(sql.Identifier(table.primary_key), KEYS)
        ), {}, (KEYS,))  # fmt: skip
    return ObjectRetention(
        rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
        age_source="row", select_due=Statement("select_due", source, select_due, params, tuple(needs)),
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
