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

Keyed hashes (HMAC-SHA256 under the governance hash key) are computed in the client, never in SQL:
the key and anything derived from it (HMAC's padded keys) are as good as the key, and a bound
parameter ends up in the database's statement log or ``auto_explain`` output. A rewrite to a keyed
hash first reads the values (:attr:`Statement.keyed_hash_inputs`, rows locked), the executor
hashes them, and the rewrite binds the digests by primary key; matching by keyed hashes streams
the identity column (:class:`KeyedHashScan`) and binds the primary keys whose digest matched.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    DynamoDBSystem,
    ErasureAction,
    FieldSpec,
    IdentityMatch,
    LegalException,
    ObjectPrefix,
    Paging,
    PrefixRef,
    Reference,
    ReferenceKind,
    RequestTemplate,
    RetentionPeriod,
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
KEYED_HASH_INNER = "keyed_hash_inner_pad"  # names of keyed_hash_params' entries (client side only)
KEYED_HASH_OUTER = "keyed_hash_outer_pad"
KEYED_HASH_PADS = (KEYED_HASH_INNER, KEYED_HASH_OUTER)
KEYED_HASH_VALUES_PREFIX = "kh_values_"  # {primary key as text: digest} of one rewritten field
# Matching by keyed hashes (a person known only by the suppression list).
CREATED_BEFORE = "kh_created_before"
PLANNED_KEYS_PREFIX = "kh_planned_"
MATCHED_KEYS_PREFIX = "kh_matched_"  # primary keys whose identity column's digest matched

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
    # A rewrite to keyed hashes: run this first with the same ``keys`` (it locks the rows and
    # returns the primary key and each hashed field's value still to rewrite), hash the values in
    # the client and bind ``kh_values_<field>`` ({key as text: digest}) to ``query``.
    keyed_hash_inputs: Statement | None = None
    keyed_hash_fields: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The SQL with its placeholders (``%(name)s``), never a value: safe to log and show
        (a keyed-hash rewrite shows the read before the rewrite)."""
        if self.keyed_hash_inputs is not None:
            return f"{self.keyed_hash_inputs.text};\n{self.query.as_string()}"
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
    """The SQL side of an identity comparison: ``lower(normalize(col, NFC))``, ``lower(col)`` or
    ``col``, mirroring :mod:`governance.identity` on the Python side."""
    if match is IdentityMatch.lowered_nfc:
        return sql.SQL("lower(normalize({}, NFC))").format(column)
    return sql.SQL("lower({})").format(column) if match is IdentityMatch.lowered else column


# --------------------------------------------------------------------------------------------
# Keyed hashes (one definition: erasure's keyed_hash action and matching by the suppression list)


def keyed_hash_params(key: bytes) -> dict[str, bytes]:
    """HMAC-SHA256's two padded keys, for :class:`ClientKeyedHash` in this process. They are as
    good as the key: never bind them to a statement (nothing in the plans asks for them)."""
    if len(key) > _HMAC_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_HMAC_BLOCK, b"\0")
    return {
        KEYED_HASH_INNER: bytes(b ^ 0x36 for b in key),
        KEYED_HASH_OUTER: bytes(b ^ 0x5C for b in key),
    }


class ClientKeyedHash:
    """HMAC-SHA256 (hex) of text values (UTF-8), computed here from the pads of
    :func:`keyed_hash_params`, optionally with a ``domain`` prefix (``kind || NUL``: what
    :class:`governance.crypto.IdentityHasher` computes for an identity)."""

    def __init__(self, pads: Mapping[str, bytes], *, domain: bytes = b"") -> None:
        self._inner = hashlib.sha256(pads[KEYED_HASH_INNER] + domain)
        self._outer = hashlib.sha256(pads[KEYED_HASH_OUTER])

    def __call__(self, value: str) -> str:
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return "ClientKeyedHash(<key>)"


def keyed_hash_reference(key: bytes, value: str, *, domain: bytes = b"") -> str:
    """HMAC-SHA256 (hex) of ``domain || value`` under ``key`` (for tests and for matching later)."""
    return hmac.new(key, domain + value.encode("utf-8"), hashlib.sha256).hexdigest()


def keyed_hash_values_param(field_name: str) -> str:
    return f"{KEYED_HASH_VALUES_PREFIX}{field_name}"


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
    keyed_hash: bool = False  # the assignment reads digests the client computed (kh_values_<field>)


def mask_param(ref: TableRef, field_name: str) -> str:
    return f"mask_{ref.table}_{field_name}"


def field_rewrite(ref: TableRef, spec: FieldSpec, *, primary_key: str) -> FieldRewrite:
    """The rewrite of ``spec`` by its erasure action (``nullify``, ``mask``, ``keyed_hash``) in a
    table keyed by ``primary_key``; ValueError for an action that does not rewrite a field."""
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
        # The digest comes from the client by primary key (a missing one clears the field).
        pending = sql.SQL("({c} IS NOT NULL AND {c}::text !~ '^[0-9a-f]{{64}}$')").format(c=column)
        digests = sql.Placeholder(keyed_hash_values_param(spec.name))
        return FieldRewrite(
            spec.name,
            sql.SQL("{c} = CASE WHEN {pending} THEN {digests}::jsonb ->> {pk}::text ELSE {c} END").format(
                c=column, pending=pending, digests=digests, pk=sql.Identifier(primary_key)),
            pending,
            sql.SQL("({c} IS NULL OR {c}::text ~ '^[0-9a-f]{{64}}$')").format(c=column), {},
            (keyed_hash_values_param(spec.name),), keyed_hash=True,
        )  # fmt: skip
    raise ValueError(f"{ref}.{spec.name}: erasure action {action.value if action else None} does not rewrite a field")


def _rewrites(ref: TableRef, table: TableSpec, fields: Iterable[FieldSpec]) -> list[FieldRewrite]:
    return [field_rewrite(ref, spec, primary_key=table.primary_key) for spec in fields]


def _keyed_hash_inputs(
    datamap: DataMap, ref: TableRef, table: TableSpec, rewrites: Sequence[FieldRewrite], condition: sql.Composable,
    needs: tuple[str, ...],
) -> tuple[Statement | None, tuple[str, ...]]:
    """For rewrites to keyed hashes: the read that locks the rows ``condition`` selects and returns
    the primary key and each such field's value still to rewrite (NULL when already rewritten)."""
    hashed = [r for r in rewrites if r.keyed_hash]
    if not hashed:
        return None, ()
    values = sql.SQL(", ").join(
        sql.SQL("CASE WHEN {} THEN {}::text END AS {}").format(r.pending, sql.Identifier(r.field), sql.Identifier(r.field))
        for r in hashed
    )
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} AND ({}) ORDER BY 1 FOR UPDATE").format(
        sql.Identifier(table.primary_key), values, _table_sql(datamap, ref), condition,
        sql.SQL(" OR ").join(r.pending for r in hashed),
    )  # fmt: skip
    inputs = Statement("keyed_hash_inputs", ref, query, {}, needs)
    return inputs, tuple(r.field for r in hashed)


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
    # ``export: include``: the mention-only rows (no ownership reference set) counted and streamed
    # for the mentioned person's export, every mapped column (:func:`_orphan_exports`).
    orphan_count: Statement | None = None
    orphan_export: Statement | None = None

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
    hash_scans: tuple[KeyedHashScan, ...] = ()  # matching by keyed hashes: run before the steps

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
        out = [h.statement for h in self.hash_scans]
        out += [s.select for s in self.steps] + [m.select for m in self.mentions]
        out += [s.count for s in self.steps] + [s.export for s in self.steps]
        return out + [s for m in self.mentions for s in (m.orphan_count, m.orphan_export) if s is not None]


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
    (``identity``: a param per kind), or with keyed hashes (``keyed_hash``: a person known only by
    the suppression list): ``hash_scans`` stream each identity column to the client, which hashes
    the values and binds the matching keys (``kh_matched_<system>_<table>_<field>``); rows must
    also be recorded before ``kh_created_before`` or, for a table without a record-time column, be
    among the keys in ``kh_planned_<system>_<table>``. No key material is ever bound.
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
    outputs, object_steps, extra_columns = _reach_outputs(datamap, reach)

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
        names = _unique([child.primary_key, edge.field, *([child.scope_column] if child.scope_column else []),
                         *owner_fields(child)])  # fmt: skip
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
            _columns(names), _table_sql(datamap, edge.child), _and(conditions), sql.Identifier(child.primary_key)
        )
        mentions.append(
            MentionStep(
                edge=edge,
                primary_key=child.primary_key,
                select=Statement("mentions", edge.child, query, {}, tuple(mention_needs)),
                parent_param=param,
                **_orphan_exports(datamap, edge, conditions, tuple(mention_needs)),
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
        hash_scans=tuple(
            _keyed_hash_scan(datamap, column) for step in steps for column in step.identity_matches
        ) if matching == "keyed_hash" else (),
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


def mention_reference(datamap: DataMap, edge: ReferenceEdge) -> Reference:
    """The data map's mention reference behind ``edge`` (its ``orphan`` and ``export`` rules)."""
    table = datamap.table(edge.child)
    return next(r for r in table.references if r.field == edge.field and r.kind is ReferenceKind.mention)


def owner_fields(table: TableSpec) -> list[str]:
    """The fields of ``table``'s ownership references (a mention step returns them too)."""
    return [r.field for r in table.references if r.kind is ReferenceKind.ownership]


def mention_only(table: TableSpec, alias: str | None = None) -> sql.Composable:
    """A row of ``table`` is mention-only: none of its ownership references is set (nobody else's
    data holds it). TRUE for a table without ownership references."""
    return _and([sql.SQL("{} IS NULL").format(_column(alias, f)) for f in owner_fields(table)])


def _orphan_exports(
    datamap: DataMap, edge: ReferenceEdge, conditions: Sequence[sql.Composable], needs: tuple[str, ...]
) -> dict[str, Statement]:
    """``export: include``: the count and export of the mention-only rows among a mention step's
    rows (``conditions``: the mention and the scope), for the mentioned person's bundle."""
    if not mention_reference(datamap, edge).exports_orphans:
        return {}
    child = datamap.table(edge.child)
    where = _and([*conditions, mention_only(child)])
    count = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_table_sql(datamap, edge.child), where)
    export = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        _columns(child.field_names), _table_sql(datamap, edge.child), where, sql.Identifier(child.primary_key)
    )
    return {
        "orphan_count": Statement("count_mention_only", edge.child, count, {}, needs),
        "orphan_export": Statement("export_mention_only", edge.child, export, {}, needs),
    }


def matched_keys_param(column: IdentityColumn) -> str:
    """Keyed-hash matching: the primary keys of ``column``'s table whose value's digest is one of
    the person's (found by the client from :class:`KeyedHashScan`)."""
    return f"{MATCHED_KEYS_PREFIX}{column.table.system}_{column.table.table}_{column.field}"


@dataclass(frozen=True)
class KeyedHashScan:
    """Keyed-hash matching without the key in SQL: ``statement`` streams the primary key and the
    identity expression (as the normaliser compares it) of every row holding a value; the client
    hashes each value with the ``kind`` domain and binds the keys whose digest is the person's to
    ``param``."""

    column: IdentityColumn
    primary_key: str
    param: str
    statement: Statement


def _keyed_hash_scan(datamap: DataMap, column: IdentityColumn) -> KeyedHashScan:
    table = datamap.table(column.table)
    expression = identity_expression(sql.Identifier(column.field), column.match)
    query = sql.SQL("SELECT {pk}, {value}::text FROM {table} WHERE {col} IS NOT NULL").format(
        pk=sql.Identifier(table.primary_key), value=expression, table=_table_sql(datamap, column.table),
        col=sql.Identifier(column.field),
    )  # fmt: skip
    statement = Statement("keyed_hash_scan", column.table, query, {}, ())
    return KeyedHashScan(column, table.primary_key, matched_keys_param(column), statement)


def _reach_outputs(
    datamap: DataMap, reach: graph.SubjectReach
) -> tuple[dict[TableRef, dict[str, str]], list[ObjectStep], dict[TableRef, list[str]]]:
    """What the steps of a reach must return for later steps: per table, the key columns its
    children and mentions bind (param name -> column), the object steps tied to its rows, and the
    extra columns those objects' keys are built from."""
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
    return outputs, object_steps, extra_columns


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
    outputs, object_steps, extra_columns = _reach_outputs(datamap, reach)
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
        names = _unique([child.primary_key, edge.field, *([child.scope_column] if child.scope_column else []),
                         *owner_fields(child)])  # fmt: skip
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


def _identity_match(
    column: IdentityColumn, matching: Matching, primary_key: str
) -> tuple[sql.Composable, tuple[str, ...]]:
    """A boolean expression: the column holds one of the person's identities (or, matching by
    keyed hashes, the row is among those whose digest the client found to be the person's)."""
    if matching == "identity":
        return _any(identity_expression(sql.Identifier(column.field), column.match), column.kind), (column.kind,)
    param = matched_keys_param(column)
    return _any(sql.Identifier(primary_key), param), (param,)


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
        expression, params = _identity_match(match, matching, table.primary_key)
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
        expression, _ = _identity_match(column, matching, table.primary_key)
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
    "clear_mention", "delete_rows", "rewrite_rows", "minimise_kept_rows", "delete_expired_kept_rows",
    "delete_mention_only_rows", "clear_mention_only_rows",
]
# Effects on mention-only rows (the mention's ``orphan`` rule): keyed, like clear_mention, by the
# mention rows resolution found and the person's keys the mention still points at.
MENTION_ONLY_EFFECTS = ("delete_mention_only_rows", "clear_mention_only_rows")


# Key sets of heavy tables kept in the table's own database (#12 item 4): a key table per mapped
# table, in this schema of that database, keyed by plan id. See :class:`KeyTable`.
KEY_TABLES_SCHEMA = "governance_erasure"
PLAN_ID = "plan_id"  # the plan whose stored keys a statement acts on
KEY_PLAN_COLUMN = "__plan_id"
KEY_HELD_COLUMN = "__held"  # a stored key under a legal hold: kept, never acted on


@dataclass(frozen=True)
class KeyTable:
    """Where the primary keys of one table's rows of a person are kept, by plan, in that table's
    own database (``governance_erasure.keys_<system>_<table>_<digest>``), so that a heavy subject's
    keys never have to pass through a task's memory or the stored plan.

    Only a leaf table reached through owners (no identity match, nothing downstream reads its
    values, no object, mention or legal exception on it, rows deleted whole, a record-time column
    for a later re-apply) stores its keys this way (:func:`stores_keys`): everything else the
    erasure decides per row stays in the plan. Columns: ``__plan_id``, ``__held`` and the resolution
    step's columns (primary key, scope, owning references), typed like the source table's (the
    table is created ``AS SELECT ... WITH NO DATA``). The name carries a digest of the columns, so
    a map that changes them gets a new table. ``UNLOGGED``: after a database crash it is empty,
    which the executor notices (the stored count no longer matches) and refuses to run.
    """

    source: TableRef
    table_name: str
    source_sql: sql.Composable
    primary_key: str
    columns: tuple[str, ...]

    @property
    def name(self) -> sql.Identifier:
        return sql.Identifier(KEY_TABLES_SCHEMA, self.table_name)

    def create(self) -> list[sql.Composed]:
        """Statements creating it where it is missing (idempotent)."""
        schema = sql.Identifier(KEY_TABLES_SCHEMA)
        index = sql.Identifier(f"{self.table_name}_plan")
        return [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            sql.SQL("CREATE UNLOGGED TABLE IF NOT EXISTS {} AS SELECT NULL::text AS {}, false AS {}, {} FROM {} WITH NO DATA").format(
                self.name, sql.Identifier(KEY_PLAN_COLUMN), sql.Identifier(KEY_HELD_COLUMN), _columns(self.columns),
                self.source_sql,
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})").format(
                index, self.name, sql.Identifier(KEY_PLAN_COLUMN), sql.Identifier(self.primary_key)
            ),
        ]  # fmt: skip

    def keyed(self) -> sql.Composed:
        """The rows of the source table whose keys the plan stored and no hold keeps."""
        return sql.SQL("{pk} IN (SELECT k.{pk} FROM {kt} AS k WHERE k.{plan} = {p} AND NOT k.{held})").format(
            pk=sql.Identifier(self.primary_key), kt=self.name, plan=sql.Identifier(KEY_PLAN_COLUMN),
            p=sql.Placeholder(PLAN_ID), held=sql.Identifier(KEY_HELD_COLUMN),
        )  # fmt: skip

    def count(self) -> Statement:
        """How many keys the plan stored that no hold keeps (the executor checks it first)."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE {} = {} AND NOT {}").format(
            self.name, sql.Identifier(KEY_PLAN_COLUMN), sql.Placeholder(PLAN_ID), sql.Identifier(KEY_HELD_COLUMN)
        )
        return Statement("count_stored_keys", self.source, query, {}, (PLAN_ID,))

    def fill(self, select: sql.Composable) -> sql.Composed:
        """Store the rows ``select`` (a resolution step's statement) returns for plan ``PLAN_ID``."""
        return sql.SQL("INSERT INTO {kt} ({plan}, {held}, {cols}) SELECT {p}, false, {cols} FROM ({select}) AS s").format(
            kt=self.name, plan=sql.Identifier(KEY_PLAN_COLUMN), held=sql.Identifier(KEY_HELD_COLUMN),
            cols=_columns(self.columns), p=sql.Placeholder(PLAN_ID), select=select,
        )  # fmt: skip

    def forget(self) -> sql.Composed:
        """Remove the keys of the plans in ``PLAN_ID`` (a list)."""
        return sql.SQL("DELETE FROM {} WHERE {} = ANY({})").format(
            self.name, sql.Identifier(KEY_PLAN_COLUMN), sql.Placeholder(PLAN_ID)
        )


def key_table(datamap: DataMap, ref: TableRef, columns: Sequence[str]) -> KeyTable:
    digest = hashlib.sha256("\x00".join(columns).encode()).hexdigest()[:8]
    name = f"keys_{ref.system}_{ref.table}"[:50] + f"_{digest}"
    return KeyTable(ref, name, _table_sql(datamap, ref),
                    datamap.table(ref).primary_key, tuple(columns))  # fmt: skip


def stores_keys(datamap: DataMap, plan: ResolutionPlan, step: ResolutionStep) -> bool:
    """Whether the erasure may keep ``step``'s keys in its database instead of the plan: a leaf
    reached only through owners, with nothing decided per row but legal holds (see
    :class:`KeyTable`)."""
    ref = step.table
    return bool(
        step.owned_via and not step.identity_matches and not step.output_params
        and not any(o.source == ref for o in plan.objects)
        and not any(ref in (m.edge.child, m.edge.parent) for m in plan.mentions)
        and datamap.legal_exception_for(ref) is None
        and record_time_column(datamap, ref) is not None
        and datamap.table(ref).deletes_rows_on_erasure
    )  # fmt: skip


def key_tables(datamap: DataMap, plan: ResolutionPlan) -> dict[TableRef, KeyTable]:
    """The key table of every step of ``plan`` that may store its keys (:func:`stores_keys`)."""
    return {s.table: key_table(datamap, s.table, s.columns) for s in plan.steps if stores_keys(datamap, plan, s)}


def provisioned_key_tables(datamap: DataMap) -> list[KeyTable]:
    """Every key table an erasure under ``datamap`` can use: those of the resolution plans of every
    combination of the map's identity kinds, with and without a business scope. The migration role
    creates them (``python -m governance grants --apply``, :mod:`governance.grants`) and grants the
    task role their rows, so planning never runs DDL as the task role."""
    kinds = sorted(datamap.identity_kinds)
    found: dict[str, KeyTable] = {}
    for size in range(1, len(kinds) + 1):
        for combination in itertools.combinations(kinds, size):
            for scoped in (False, True):
                plan = build_resolution_plan(datamap, combination, business_scope=scoped)
                for kt in key_tables(datamap, plan).values():
                    found.setdefault(kt.table_name, kt)
    return [found[name] for name in sorted(found)]


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
    # The same effect on the rows whose keys the plan stored in ``key_table`` (a heavy leaf table,
    # :func:`stores_keys`), bound by ``PLAN_ID``; ``stored_check`` finds those still there.
    key_table: KeyTable | None = None
    stored: Statement | None = None
    stored_check: Statement | None = None


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
    inputs, hashed = _keyed_hash_inputs(datamap, ref, table, rewrites, _keyed(table), (KEYS,))
    return Statement(effect, ref, query, params, (KEYS, *needs), keyed_hash_inputs=inputs, keyed_hash_fields=hashed)


def _cleared_check(datamap: DataMap, ref: TableRef, table: TableSpec, rewrites: Sequence[FieldRewrite]) -> Statement:
    params, _ = _rewrite_params(rewrites)
    flags = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(r.cleared, sql.Identifier(f"{r.field}_cleared")) for r in rewrites
    )
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY 1").format(
        sql.Identifier(table.primary_key), flags, _table_sql(datamap, ref), _keyed(table)
    )
    return Statement("verify_kept_rows", ref, query, params, (KEYS,))


def _mention_only_erasure(datamap: DataMap, ref: TableRef, table: TableSpec, edge: ReferenceEdge) -> list[ErasureStatement]:
    """The mention's ``orphan`` rule, run before its reference is cleared (afterwards the row no
    longer points at the person): delete the mention-only rows, or clear their ``orphan.clear``
    fields. A row with an owner is untouched here (its mention is cleared, it stays). ``check``
    finds, among the same keys, mention-only rows still there (delete) or still holding a cleared
    field: what verification expects to be empty, whatever the mention now points at."""
    reference = mention_reference(datamap, edge)
    cleared = reference.orphan_clears
    if not (reference.orphan_deletes_row or cleared):
        return []
    points = _any(sql.Identifier(edge.field), REFERENCE_VALUES)
    only = mention_only(table)
    if reference.orphan_deletes_row:
        effect: ErasureEffect = "delete_mention_only_rows"
        query = sql.SQL("DELETE FROM {} WHERE {} AND {} AND {}").format(_table_sql(datamap, ref), _keyed(table), points, only)
        left: sql.Composable = sql.SQL("TRUE")
    else:
        effect = "clear_mention_only_rows"
        left = _or([sql.SQL("{} IS NOT NULL").format(sql.Identifier(f)) for f in cleared])
        query = sql.SQL("UPDATE {} SET {} WHERE {} AND {} AND {} AND {}").format(
            _table_sql(datamap, ref), sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(f)) for f in cleared),
            _keyed(table), points, only, left,
        )  # fmt: skip
    check = sql.SQL("SELECT {} FROM {} WHERE {} AND {} AND {} ORDER BY 1").format(
        sql.Identifier(table.primary_key), _table_sql(datamap, ref), _keyed(table), only, left
    )
    return [ErasureStatement(
        table=ref, effect=effect, statement=Statement(effect, ref, query, {}, (KEYS, REFERENCE_VALUES)),
        fields=cleared or (edge.field,), reference_field=edge.field,
        check=Statement("verify_mention_only_rows", ref, check, {}, (KEYS,)),
    )]  # fmt: skip


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
    stored_keys = key_tables(datamap, resolution)
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
            rewrite = field_rewrite(ref, spec, primary_key=table.primary_key)
            params, needs = _rewrite_params([rewrite])
            reference = _any(sql.Identifier(spec.name), REFERENCE_VALUES)
            query = sql.SQL("UPDATE {} SET {} WHERE {} AND {}").format(
                _table_sql(datamap, ref), rewrite.assignment, _keyed(table), reference
            )
            inputs, hashed = _keyed_hash_inputs(datamap, ref, table, [rewrite], sql.SQL("{} AND {}").format(
                _keyed(table), reference), (KEYS, REFERENCE_VALUES))  # fmt: skip
            check = sql.SQL("SELECT {} FROM {} WHERE {} AND {} ORDER BY 1").format(
                sql.Identifier(table.primary_key), _table_sql(datamap, ref), _keyed(table), reference
            )
            statements += _mention_only_erasure(datamap, ref, table, mention.edge)
            statements.append(
                ErasureStatement(
                    table=ref, effect="clear_mention",
                    statement=Statement("clear_mention", ref, query, params, (KEYS, REFERENCE_VALUES, *needs),
                                        keyed_hash_inputs=inputs, keyed_hash_fields=hashed),
                    fields=(spec.name,), reference_field=spec.name,
                    check=Statement("verify_mentions", ref, check, {}, (KEYS, REFERENCE_VALUES)),
                )
            )  # fmt: skip
        if ref not in owned:
            continue
        rewrites = _rewrites(ref, table, [f for f in table.fields if f.erasure_action in REWRITING_ACTIONS])
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
            # Verification looks planned keys up where resolving again cannot reach the rows (their
            # owners, in another database, are gone): the same keys, nothing left.
            check = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY 1").format(
                sql.Identifier(table.primary_key), _table_sql(datamap, ref), _keyed(table)
            )
            stored: dict[str, Any] = {}
            kt = stored_keys.get(ref)
            if kt is not None:
                delete = sql.SQL("DELETE FROM {} WHERE {}").format(_table_sql(datamap, ref), kt.keyed())
                found = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY 1").format(
                    sql.Identifier(table.primary_key), _table_sql(datamap, ref), kt.keyed()
                )
                stored = {"key_table": kt, "stored": Statement("delete_rows", ref, delete, {}, (PLAN_ID,)),
                          "stored_check": Statement("verify_deleted", ref, found, {}, (PLAN_ID,))}  # fmt: skip
            statements.append(
                ErasureStatement(ref, "delete_rows", _delete(datamap, ref, table, "delete_rows"),
                                 check=Statement("verify_deleted", ref, check, {}, (KEYS,)), **stored)
            )  # fmt: skip
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
#
# Every table rule (and every object rule aged by its tied row) walks its expired rows once, in
# keyset order on (age column, primary key) through the age column's index: each batch is
# ``scan`` (the next ``batch_size`` rows after the cursor, with flags saying which are due, which
# are held and why, which still need the action), then the action keyed by the primary keys the
# scan chose. The sweep keeps a watermark per rule (the oldest age it must look at again: the
# oldest row it skipped as held or not yet matching a condition, else the cutoff), so rows
# already nulled, generalised or deleted are not visited again.

RETENTION_HELD_TABLES = "held_tables"  # 'schema.table' names under a table hold (may be empty)
AFTER_AGE = "after_age"  # keyset cursor: the age of the last row handled ('-infinity' to start)
AFTER_PK = "after_pk"  # keyset cursor: its primary key (NULL to start)

# Flag columns every scan returns besides the primary key and the age.
SCAN_KEY = "__key"
SCAN_AGE = "__age"
SCAN_DUE = "__due"  # every condition of the rule holds
SCAN_PENDING = "__pending"  # the action still has something to do (a field not yet nulled, ...)
SCAN_HELD_BY_HOLD = "__held_by_hold"  # a legal hold on the row (its key, its business, its table)
SCAN_HELD_BY_EXCEPTION = "__held_by_exception"  # the table's legal exception still keeps it
SCAN_HELD_BY_CHILD = "__held_by_child"  # a row it owns is held or excepted (delete_rows only)
SCAN_CTID = "__ctid"  # where the row is, for the single-statement batch (same statement, so stable)
SCAN_TABLEOID = "__tableoid"  # which relation (partition) holds it: a ctid is only unique within one
# Bind names and columns of a partition probe (a range-partitioned table's partition, by its bounds).
PARTITION_FROM = "partition_from"
PARTITION_TO = "partition_to"
PROBE_ROWS = "rows"
PROBE_BLOCKED = "blocked"
# Columns of the single-statement batch's one result row.
BATCH_SCANNED = "scanned"
BATCH_AFFECTED = "affected"
BATCH_LAST_AGE = "last_age"
BATCH_LAST_KEY = "last_key"
BATCH_OLDEST_SKIPPED = "oldest_skipped"
HELD_REASONS = {
    SCAN_HELD_BY_HOLD: "legal_hold",
    SCAN_HELD_BY_EXCEPTION: "legal_exception",
    SCAN_HELD_BY_CHILD: "owned_row_held",
}

# Fixed order of the rules of one table (README, "Retention"): generalise and null first, then
# objects, then rows, so a row is minimised on time even where a later rule deletes it only once
# a condition holds. Within one action, the map's order.
ACTION_ORDER = {"generalise": 0, "null_fields": 1, "delete_objects": 2, "delete_rows": 3}


def held_keys_param(ref: TableRef) -> str:
    """Name of the run-time parameter with the primary keys of ``ref`` under a person hold."""
    return f"held_keys__{ref.system}__{ref.table}"


def _table_name_param(datamap: DataMap, ref: TableRef) -> tuple[str, str]:
    schema = datamap.postgres_system(ref.system).db_schema
    return f"table_name__{ref.system}__{ref.table}", f"{schema}.{ref.table}"


@dataclass(frozen=True)
class CascadeStep:
    """Rows of ``table`` owned through ``edge`` by rows a ``delete_rows`` rule deletes: ``select``
    finds them from their owners' keys (``keys`` = the owners' ``edge.parent_field`` values) with
    the columns their own children, mentions and objects need; ``delete`` removes them by primary
    key; ``objects`` are deleted (every version) before the rows."""

    table: TableRef
    edge: ReferenceEdge
    select: Statement
    delete: Statement
    objects: tuple[ObjectStep, ...] = ()


@dataclass(frozen=True)
class MentionClear:
    """Rows of ``edge.child`` naming a deleted row of ``edge.parent``: the reference is cleared
    (``keys`` = the deleted rows' ``edge.parent_field`` values), the row stays."""

    edge: ReferenceEdge
    statement: Statement
    # The mention's ``orphan`` rule on the mention-only rows among them (run first, same ``keys``,
    # plus the holds of ``edge.child``: a held row is left as it is): delete them or clear fields.
    orphan: Statement | None = None


@dataclass(frozen=True)
class RetentionStatement:
    """One table rule, as bounded batches.

    Per batch: run ``scan`` with the keyset cursor (``after_age``/``after_pk``), the holds
    (``held_keys__<system>__<table>`` for the rule's table and every table of its cascade,
    ``held_scope_ids``, ``held_tables``) and ``as_of``; it returns up to ``batch_size`` rows aged
    before the cutoff, oldest first, each with the flag columns ``SCAN_*``. The rows to act on are
    those due, pending and held by nothing. ``delete_rows``: find what they own through
    ``cascade`` (parents before children), delete the objects of ``objects`` and of each cascade
    step (every version), then in one transaction delete the cascade's rows children first
    (``deletion_order``), clear ``mentions`` and run ``statement`` with ``keys``. ``null_fields``
    and ``generalise``: ``statement`` with ``keys`` (it re-checks that the field still needs it).
    Continue after the last scanned row until a scan returns fewer than ``batch_size`` rows.

    ``batch`` (rules whose rows own nothing: null_fields, generalise, delete_rows of a leaf
    table) is the scan and the action in one statement, for the sweep (a dry run uses ``scan``):
    it returns one row with ``scanned``, ``affected``, the cursor (``last_age``, ``last_key``),
    ``oldest_skipped`` and a count per held reason (``__held_by_hold``, ...).
    """

    rule: str
    table: TableRef
    action: str
    scan: Statement
    statement: Statement
    primary_key: str
    age_column: str
    batch: Statement | None = None
    cascade: tuple[CascadeStep, ...] = ()
    deletion_order: tuple[TableRef, ...] = ()
    mentions: tuple[MentionClear, ...] = ()
    objects: tuple[ObjectStep, ...] = ()
    fields: tuple[str, ...] = ()
    reason: str = ""
    # delete_rows of a table whose rows name no object: where the table turns out (from the
    # catalog, at run time) to be range-partitioned on ``age_column``, each wholly expired
    # partition is probed with this and, when nothing in it is blocked, dropped whole.
    partition_probe: Statement | None = None
    # delete_rows of a leaf table (no objects, owned rows or mentions) with no condition and no
    # legal exception: when no legal hold names the table, its business column or any of its rows,
    # a batch is a range of the age column's index: ``range_bound`` (``as_of``, ``after_age``)
    # returns ``last_age``, the age of the ``batch_size``-th expired row after the cursor (NULL:
    # none left), then ``range_delete`` (the same and ``range_bound``) deletes every expired row
    # after the cursor up to it, in one transaction; the next batch starts after ``last_age``.
    range_bound: Statement | None = None
    range_delete: Statement | None = None
    # With the ranged batches: a partition's rows, counted through the age index (nothing in it can
    # be blocked when no hold touches the table), in place of ``partition_probe``'s per-row checks.
    partition_count: Statement | None = None

    @property
    def held_tables(self) -> tuple[TableRef, ...]:
        """Tables whose held keys the scan binds (the rule's table, then its cascade)."""
        return _unique_refs([self.table, *(step.table for step in self.cascade)])

    @property
    def statements(self) -> list[Statement]:
        out = [self.scan, *([self.batch] if self.batch is not None else [])]
        for step in self.cascade:
            out.append(step.select)
        for step in reversed(self.cascade):
            out.append(step.delete)
        out += [s for m in self.mentions for s in (m.orphan, m.statement) if s is not None]
        out.append(self.statement)
        return out

    @property
    def sha256(self) -> str:
        """Digest of every statement of the rule: a changed rule starts again from the oldest row."""
        return hashlib.sha256("\n".join(s.sha256 for s in self.statements).encode()).hexdigest()


@dataclass(frozen=True)
class ObjectRetention:
    """An object retention rule. ``age_source == "last_modified"``: list ``list_prefix`` and
    delete objects last modified before ``as_of - period``. ``age_source == "row"``: page through
    ``scan`` exactly as a table rule (keyset on the tied table's age column and primary key),
    delete ``object_step.keys_for(rows)`` of the rows due and not held, then run
    ``clear_key_column`` with ``keys`` when the table stores the key (the row stays)."""

    rule: str
    prefix: PrefixRef
    list_prefix: str
    period_days: float
    period_interval: str
    age_source: Literal["last_modified", "row"]
    scan: Statement | None = None
    object_step: ObjectStep | None = None
    clear_key_column: Statement | None = None
    primary_key: str | None = None
    age_column: str | None = None
    reason: str = ""

    @property
    def statements(self) -> list[Statement]:
        return [s for s in (self.scan, self.clear_key_column) if s is not None]

    @property
    def sha256(self) -> str:
        parts = [s.sha256 for s in self.statements] or [f"{self.list_prefix}\x00{self.period_interval}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class OrphanCheck:
    """Objects of a row-owned prefix whose row is gone. List ``list_prefix``, parse each key with
    ``key_template`` into ``placeholder_columns`` values, run ``existing`` with the parsed
    ``keys`` (values of ``match_column``) and delete objects whose row is not returned once they
    are older than the grace period."""

    prefix: PrefixRef
    list_prefix: str
    key_template: str
    source: TableRef
    placeholder_columns: Mapping[str, str]
    match_placeholder: str
    match_column: str
    existing: Statement


@dataclass(frozen=True)
class ItemTtlRetention:
    """A DynamoDB table's ``ttl`` rule: every item's ``ttl_attribute`` (epoch seconds) no later
    than its age (``age_attribute``) plus ``period``.

    The sweep reads the whole table (the rule is about every item, not one person: a Scan is the
    only read that visits every item; a person is still never found by a Scan) as a parallel,
    paginated Scan projecting only the key, age and TTL attributes (and ``scope_attribute`` when a
    business hold is in force); per item it sets the TTL where missing, lowers it where later than
    the rule allows (``UpdateItem`` conditioned on the TTL still being later, so a concurrent
    earlier TTL is kept), and deletes items already past their TTL by more than
    ``expired_grace_days`` that DynamoDB has not removed yet. The age attribute is epoch seconds
    (``N``) or an ISO-8601 UTC time, optionally followed by ``#`` and more (the sort key
    ``2026-09-01T10:00:00Z#<event id>``)."""

    rule: str
    system: str
    table: str
    table_name: str
    connection_id: str
    key_attributes: tuple[str, ...]
    partition_key: str
    partition_kind: str | None
    age_attribute: str
    ttl_attribute: str
    scope_attribute: str | None
    period: RetentionPeriod
    expired_grace_days: int
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.system}.{self.table}"

    def scan_request(self, *, segment: int, total_segments: int, limit: int, with_scope: bool) -> dict[str, Any]:
        """The ``Scan`` arguments of one segment: the projection names only the attributes the
        rule reads (never the payload)."""
        projected = list(dict.fromkeys([*self.key_attributes, self.age_attribute, self.ttl_attribute,
                                        *([self.scope_attribute] if with_scope and self.scope_attribute else [])]))  # fmt: skip
        names = {f"#p{i}": name for i, name in enumerate(projected)}
        return {
            "TableName": self.table_name, "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names,
            "Segment": segment, "TotalSegments": total_segments, "Limit": limit,
        }  # fmt: skip


def _item_ttl_retention(datamap: DataMap, rule: RetentionRule) -> ItemTtlRetention:
    system = datamap.system(rule.system)
    assert isinstance(system, DynamoDBSystem) and rule.table is not None
    table = system.table(rule.table)
    assert table is not None and table.ttl_attribute is not None and rule.age_column is not None
    business = table.business_index
    return ItemTtlRetention(
        rule=rule.name, system=system.name, table=table.name, table_name=table.table_name.resolve(),
        connection_id=system.connection_id, key_attributes=tuple(table.key_attributes),
        partition_key=table.partition_key.attribute, partition_kind=table.partition_key.kind,
        age_attribute=rule.age_column, ttl_attribute=table.ttl_attribute,
        scope_attribute=business.partition_key.attribute if business else None, period=rule.period,
        expired_grace_days=datamap.settings.ttl_expired_grace_days, reason=rule.reason,
    )  # fmt: skip


@dataclass(frozen=True)
class RetentionPlan:
    """The retention sweep, per target: object rules (prefix), table rules (one table's rules in
    ``ACTION_ORDER``: generalise, null_fields, delete_objects, delete_rows), and the orphan check
    of every row-owned prefix. Targets are independent (one mapped task each); a delete_rows rule
    carries its own cascade, so no target depends on another having run."""

    objects: tuple[ObjectRetention, ...]
    statements: tuple[RetentionStatement, ...]
    orphans: tuple[OrphanCheck, ...] = ()
    items: tuple[ItemTtlRetention, ...] = ()  # DynamoDB tables' ttl rules

    @property
    def all_statements(self) -> list[Statement]:
        """Every statement of the sweep, in the order it runs (for ``--sql`` and the tests)."""
        out: list[Statement] = []
        for item in self.objects:
            out += item.statements
        for statement in self.statements:
            out += statement.statements
            extra = (statement.partition_probe, statement.partition_count, statement.range_bound, statement.range_delete)
            out += [s for s in extra if s is not None]
        out += [o.existing for o in self.orphans]
        return out

    def rule(self, name: str) -> RetentionStatement | ObjectRetention | ItemTtlRetention:
        items: list[RetentionStatement | ObjectRetention | ItemTtlRetention] = [*self.objects, *self.statements, *self.items]
        for item in items:
            if item.rule == name:
                return item
        raise KeyError(name)


def _column(alias: str | None, name: str) -> sql.Identifier:
    return sql.Identifier(alias, name) if alias else sql.Identifier(name)


def _unique_refs(items: Iterable[TableRef]) -> tuple[TableRef, ...]:
    return tuple(dict.fromkeys(items))


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
        return _and(checks) if checks else sql.SQL("TRUE")
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


def _held_by_hold(
    datamap: DataMap, ref: TableRef, alias: str, params: dict[str, Any], needs: list[str]
) -> sql.Composable:
    """A legal hold on the row: its primary key (person holds, resolved to keys), its business
    (scope column) or its whole table."""
    table = datamap.table(ref)
    keys = held_keys_param(ref)
    name_param, name = _table_name_param(datamap, ref)
    params[name_param] = name
    needs += [keys, RETENTION_HELD_TABLES]
    parts: list[sql.Composable] = [
        sql.SQL("{} = ANY({})").format(sql.Identifier(alias, table.primary_key), sql.Placeholder(keys)),
        sql.SQL("{}::text = ANY({}::text[])").format(sql.Placeholder(name_param), sql.Placeholder(RETENTION_HELD_TABLES)),
    ]
    if table.scope_column:
        needs.append(HELD_SCOPE_IDS)
        parts.append(sql.SQL("{} = ANY({})").format(sql.Identifier(alias, table.scope_column), sql.Placeholder(HELD_SCOPE_IDS)))
    return sql.SQL("COALESCE({}, FALSE)").format(_or(parts))


def _held_by_exception(datamap: DataMap, ref: TableRef, alias: str, params: dict[str, Any], needs: list[str]) -> sql.Composable:
    exception = datamap.legal_exception_for(ref)
    if exception is None:
        return sql.SQL("FALSE")
    period = legal_period_param(exception)
    params[period] = exception.period.sql_interval
    needs.append(AS_OF)
    return sql.SQL("COALESCE({} >= {}::timestamptz - {}::interval, FALSE)").format(
        sql.Identifier(alias, exception.age_column), sql.Placeholder(AS_OF), sql.Placeholder(period)
    )


def _owned_edges(datamap: DataMap, ref: TableRef) -> list[ReferenceEdge]:
    """Ownership edges a retention statement follows: within the row's own database only (one
    statement cannot reach another database; a table owned across systems, such as a warehouse's
    copy of a call, is aged by its own system's retention rules)."""
    return [
        e for e in graph.reference_edges(datamap, (ReferenceKind.ownership,))
        if e.parent == ref and e.child != ref and e.child.system == ref.system
    ]  # fmt: skip


def _held_by_child(
    datamap: DataMap, ref: TableRef, alias: str, params: dict[str, Any], needs: list[str], depth: int = 0
) -> sql.Composable:
    """Some row owned by the row (directly or further down) is held or excepted: deleting the row
    would take it along, so the row is kept too."""
    checks: list[sql.Composable] = []
    for n, edge in enumerate(_owned_edges(datamap, ref)):
        child_alias = f"own{depth}_{n}"
        protected = _or([
            _held_by_hold(datamap, edge.child, child_alias, params, needs),
            _held_by_exception(datamap, edge.child, child_alias, params, needs),
            _held_by_child(datamap, edge.child, child_alias, params, needs, depth + 1),
        ])  # fmt: skip
        checks.append(
            sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {} = {} AND {})").format(
                _table_sql(datamap, edge.child, child_alias),
                sql.Identifier(child_alias, edge.field),
                sql.Identifier(alias, edge.parent_field),
                protected,
            )
        )
    return _or(checks) if checks else sql.SQL("FALSE")


def _age_window(
    rule_name: str, period_sql: str, age_column: str, primary_key: str, params: dict[str, Any]
) -> sql.Composable:
    """Rows aged before the cutoff, after the keyset cursor (the first batch binds the watermark,
    or '-infinity', as ``after_age`` and NULL as ``after_pk``)."""
    period = f"period_{rule_name}"
    params[period] = period_sql
    age = sql.Identifier("t", age_column)
    return sql.SQL(
        "{age} < {as_of}::timestamptz - {period}::interval AND {age} >= {after_age}::timestamptz"
        " AND ({age}, {pk}) > ({after_age}::timestamptz, {after_pk})"
    ).format(
        age=age, as_of=sql.Placeholder(AS_OF), period=sql.Placeholder(period), after_age=sql.Placeholder(AFTER_AGE),
        pk=sql.Identifier("t", primary_key), after_pk=sql.Placeholder(AFTER_PK),
    )  # fmt: skip


def _scan(
    datamap: DataMap,
    ref: TableRef,
    rule_name: str,
    period_sql: str,
    age_column: str,
    *,
    due: sql.Composable,
    pending: sql.Composable,
    with_children: bool,
    extra_columns: Sequence[str],
    params: dict[str, Any],
) -> Statement:
    table = datamap.table(ref)
    needs: list[str] = [AS_OF, AFTER_AGE, AFTER_PK]
    params[BATCH_SIZE] = datamap.settings.retention_batch_size
    window = _age_window(rule_name, period_sql, age_column, table.primary_key, params)
    pk = sql.Identifier("t", table.primary_key)
    flags = [
        (pk, SCAN_KEY),
        (sql.Identifier("t", age_column), SCAN_AGE),
        (sql.SQL("{}").format(sql.Identifier("t", "ctid")), SCAN_CTID),
        (sql.SQL("{}").format(sql.Identifier("t", "tableoid")), SCAN_TABLEOID),
        (due, SCAN_DUE),
        (pending, SCAN_PENDING),
        (_held_by_hold(datamap, ref, "t", params, needs), SCAN_HELD_BY_HOLD),
        (_held_by_exception(datamap, ref, "t", params, needs), SCAN_HELD_BY_EXCEPTION),
        (_held_by_child(datamap, ref, "t", params, needs) if with_children else sql.SQL("FALSE"), SCAN_HELD_BY_CHILD),
    ]
    columns: list[sql.Composable] = [sql.SQL("{} AS {}").format(expr, sql.Identifier(name)) for expr, name in flags]
    columns += [sql.Identifier("t", c) for c in _unique(extra_columns)]
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}, {} LIMIT {}").format(
        sql.SQL(", ").join(columns), _table_sql(datamap, ref, "t"), window,
        sql.Identifier("t", age_column), pk, sql.Placeholder(BATCH_SIZE),
    )  # fmt: skip
    return Statement("retention_scan", ref, query, params, _unique(needs))


def _same_row(age_column: str) -> sql.Composable:
    """``d`` is the scan's row ``s``: same relation and tuple (a ctid alone is unique only within one
    partition), and the same age, so a partitioned table's other partitions are pruned at run time."""
    return sql.SQL("d.tableoid = s.{oid} AND d.ctid = s.{ctid} AND d.{age} = s.{scan_age}").format(
        oid=sql.Identifier(SCAN_TABLEOID), ctid=sql.Identifier(SCAN_CTID), age=sql.Identifier(age_column),
        scan_age=sql.Identifier(SCAN_AGE),
    )  # fmt: skip


#: Rows per ranged batch, in ``retention_batch_size`` units: with no per-row work a batch of the
#: age index deletes as a plain DELETE does (measured: 20,000 rows in tens of milliseconds), and
#: fewer, larger batches pay fewer statements and commits.
RANGE_BATCH_FACTOR = 4
RANGE_BOUND = "range_bound"  # bind name: the last age a ranged batch deletes (inclusive)


def _range_batch(
    datamap: DataMap, ref: TableRef, rule_name: str, period_sql: str, age_column: str
) -> tuple[Statement, Statement]:
    """The batch of a rule with nothing to check per row (see ``RetentionStatement.range_bound``):
    the age of the n-th expired row after ``after_age`` (n = ``batch_size``; an index-only walk of
    the age column), then a DELETE of every expired row after ``after_age`` up to that age,
    through the same index (a plain ranged DELETE: no flags, no join, no RETURNING). Rows sharing
    the last age all go in the batch, so the next batch starts strictly after it."""
    period = f"period_{rule_name}"
    params: dict[str, Any] = {period: period_sql, BATCH_SIZE: datamap.settings.retention_batch_size * RANGE_BATCH_FACTOR}
    age = sql.Identifier("t", age_column)
    window = sql.SQL("{age} < {as_of}::timestamptz - {period}::interval AND {age} > {after}::timestamptz").format(
        age=age, as_of=sql.Placeholder(AS_OF), period=sql.Placeholder(period), after=sql.Placeholder(AFTER_AGE),
    )  # fmt: skip
    bound = sql.SQL(
        "SELECT max(b.{name}) AS {last_age} FROM (SELECT {age} FROM {table} WHERE {window} ORDER BY {age} LIMIT {n}) b"
    ).format(
        name=sql.Identifier(age_column), age=age, table=_table_sql(datamap, ref, "t"), window=window,
        n=sql.Placeholder(BATCH_SIZE), last_age=sql.Identifier(BATCH_LAST_AGE),
    )  # fmt: skip
    delete = sql.SQL("DELETE FROM {table} WHERE {window} AND {age} <= {bound}::timestamptz").format(
        table=_table_sql(datamap, ref, "t"), window=window, age=age, bound=sql.Placeholder(RANGE_BOUND)
    )
    return (
        Statement("retention_range_bound", ref, bound, params, (AS_OF, AFTER_AGE)),
        Statement("retention_range_delete", ref, delete, {period: period_sql}, (AS_OF, AFTER_AGE, RANGE_BOUND)),
    )


def _partition_count(datamap: DataMap, ref: TableRef, age_column: str) -> Statement:
    """``partition_probe``'s columns for a table where nothing can be blocked: the rows only."""
    age = sql.Identifier("t", age_column)
    query = sql.SQL(
        "SELECT count(*) AS {rows}, 0 AS {blocked} FROM {table} WHERE {age} >= {lo}::timestamptz AND {age} < {hi}::timestamptz"
    ).format(
        rows=sql.Identifier(PROBE_ROWS), blocked=sql.Identifier(PROBE_BLOCKED), table=_table_sql(datamap, ref, "t"),
        age=age, lo=sql.Placeholder(PARTITION_FROM), hi=sql.Placeholder(PARTITION_TO),
    )  # fmt: skip
    return Statement("retention_partition_count", ref, query, {}, (PARTITION_FROM, PARTITION_TO))


def _partition_probe(
    datamap: DataMap, ref: TableRef, age_column: str, due: sql.Composable, base_params: Mapping[str, Any]
) -> Statement:
    """Rows of one partition of a table range-partitioned on ``age_column`` (bound by its bounds,
    ``partition_from`` inclusive, ``partition_to`` exclusive, so only that partition is read) and
    how many of them block dropping it whole: not due, held (hold, legal exception, an owned row
    held) or with a row that would have to follow it (an owned row to delete with it, a mention to
    clear). A partition with no blocked row holds only rows the rule would delete row by row with
    nothing else to do."""
    params: dict[str, Any] = dict(base_params)
    needs: list[str] = [PARTITION_FROM, PARTITION_TO]
    dependants: list[sql.Composable] = []
    for n, edge in enumerate(_owned_edges(datamap, ref)):
        alias = f"dep{n}"
        dependants.append(sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {} = {})").format(
            _table_sql(datamap, edge.child, alias), sql.Identifier(alias, edge.field), sql.Identifier("t", edge.parent_field),
        ))  # fmt: skip
    mention_edges = [
        e for e in graph.reference_edges(datamap, (ReferenceKind.mention,))
        if e.parent == ref and e.child != ref and e.child.system == ref.system
    ]  # fmt: skip
    for n, edge in enumerate(mention_edges):
        alias = f"men{n}"
        dependants.append(sql.SQL("EXISTS (SELECT 1 FROM {} WHERE {} = {})").format(
            _table_sql(datamap, edge.child, alias), sql.Identifier(alias, edge.field), sql.Identifier("t", edge.parent_field),
        ))  # fmt: skip
    blocked = _or([
        sql.SQL("NOT COALESCE({}, FALSE)").format(due),
        _held_by_hold(datamap, ref, "t", params, needs),
        _held_by_exception(datamap, ref, "t", params, needs),
        _held_by_child(datamap, ref, "t", params, needs),
        *dependants,
    ])  # fmt: skip
    age = sql.Identifier("t", age_column)
    query = sql.SQL(
        "SELECT count(*) AS {rows}, count(*) FILTER (WHERE {blocked}) AS {blocked_name} FROM {table} "
        "WHERE {age} >= {lo}::timestamptz AND {age} < {hi}::timestamptz"
    ).format(
        rows=sql.Identifier(PROBE_ROWS), blocked=blocked, blocked_name=sql.Identifier(PROBE_BLOCKED),
        table=_table_sql(datamap, ref, "t"), age=age, lo=sql.Placeholder(PARTITION_FROM), hi=sql.Placeholder(PARTITION_TO),
    )  # fmt: skip
    text = query.as_string()
    used = {name: value for name, value in params.items() if f"%({name})s" in text and name not in needs}
    return Statement("retention_partition_probe", ref, query, used, _unique(needs))


def _single_statement_batch(
    datamap: DataMap,
    ref: TableRef,
    scan: Statement,
    action: Callable[[sql.Composable], sql.Composable],
    extra_params: Mapping[str, Any],
) -> Statement:
    """``scan`` and ``action`` (a DELETE or UPDATE of ``"d"`` joined to ``scan`` by ctid, for
    the rows due, pending and held by nothing) as one statement returning one row of counts."""
    acting = sql.SQL("s.{due} AND s.{pending} AND NOT (s.{hold} OR s.{exception} OR s.{child})").format(
        due=sql.Identifier(SCAN_DUE), pending=sql.Identifier(SCAN_PENDING), hold=sql.Identifier(SCAN_HELD_BY_HOLD),
        exception=sql.Identifier(SCAN_HELD_BY_EXCEPTION), child=sql.Identifier(SCAN_HELD_BY_CHILD),
    )  # fmt: skip
    held_counts = [
        sql.SQL("(SELECT count(*) FROM scan s WHERE s.{due} AND s.{pending} AND s.{flag}{before}) AS {name}").format(
            due=sql.Identifier(SCAN_DUE), pending=sql.Identifier(SCAN_PENDING), flag=sql.Identifier(flag),
            before=sql.SQL("").join(sql.SQL(" AND NOT s.{}").format(sql.Identifier(f)) for f in list(HELD_REASONS)[:n]),
            name=sql.Identifier(flag),
        )  # fmt: skip
        for n, flag in enumerate(HELD_REASONS)
    ]
    query = sql.SQL(
        "WITH scan AS ({scan}), acted AS ({action} RETURNING 1) SELECT "
        "(SELECT count(*) FROM scan) AS {scanned}, (SELECT count(*) FROM acted) AS {affected}, "
        "(SELECT s.{age} FROM scan s ORDER BY s.{age} DESC, s.{key} DESC LIMIT 1) AS {last_age}, "
        "(SELECT s.{key} FROM scan s ORDER BY s.{age} DESC, s.{key} DESC LIMIT 1) AS {last_key}, "
        "(SELECT min(s.{age}) FROM scan s WHERE s.{pending} AND NOT ({acting})) AS {oldest}, {held}"
    ).format(
        scan=scan.query, action=action(acting), scanned=sql.Identifier(BATCH_SCANNED),
        affected=sql.Identifier(BATCH_AFFECTED), age=sql.Identifier(SCAN_AGE), key=sql.Identifier(SCAN_KEY),
        last_age=sql.Identifier(BATCH_LAST_AGE), last_key=sql.Identifier(BATCH_LAST_KEY),
        pending=sql.Identifier(SCAN_PENDING), acting=acting, oldest=sql.Identifier(BATCH_OLDEST_SKIPPED),
        held=sql.SQL(", ").join(held_counts),
    )  # fmt: skip
    return Statement("retention_batch", ref, query, {**scan.params, **extra_params}, scan.input_params)


def _object_steps(datamap: DataMap, ref: TableRef) -> tuple[list[ObjectStep], list[str]]:
    steps: list[ObjectStep] = []
    columns: list[str] = []
    for prefix_ref in datamap.prefixes_tied_to(ref):
        prefix = datamap.prefix(prefix_ref)
        assert prefix.tied_to is not None
        placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
        key_column = prefix.tied_to.key_column
        steps.append(ObjectStep(prefix_ref, prefix.key_template, ref, placeholder_columns, key_column))
        columns += [*placeholder_columns.values(), *([key_column] if key_column else [])]
    return steps, columns


def _referenced_columns(datamap: DataMap, ref: TableRef) -> list[str]:
    """Columns of ``ref`` that owned rows and mentions point at (usually the primary key)."""
    edges = graph.reference_edges(datamap, (ReferenceKind.ownership, ReferenceKind.mention))
    return [e.parent_field for e in edges if e.parent == ref and e.child != ref]


def cascade_of(datamap: DataMap, ref: TableRef) -> tuple[list[tuple[ReferenceEdge, int]], list[ReferenceEdge]]:
    """What deleting rows of ``ref`` also deletes, as ``(ownership edge, depth)`` parents before
    children, and the mention edges of every table deleted (cleared, rows stay)."""
    owned: list[tuple[ReferenceEdge, int]] = []
    frontier = [(ref, 0)]
    while frontier:
        parent, depth = frontier.pop(0)
        for edge in _owned_edges(datamap, parent):
            owned.append((edge, depth + 1))
            frontier.append((edge.child, depth + 1))
    deleted = {ref, *(e.child for e, _ in owned)}
    mentions = [
        e for e in graph.reference_edges(datamap, (ReferenceKind.mention,))
        if e.parent in deleted and e.child not in deleted and e.child.system == ref.system
    ]  # fmt: skip
    return owned, mentions


def _cascade(datamap: DataMap, ref: TableRef) -> tuple[list[CascadeStep], list[MentionClear], list[TableRef]]:
    owned, mention_edges = cascade_of(datamap, ref)
    steps: list[CascadeStep] = []
    for edge, _depth in owned:
        child = datamap.table(edge.child)
        objects, object_columns = _object_steps(datamap, edge.child)
        columns = _unique([child.primary_key, *_referenced_columns(datamap, edge.child), *object_columns])
        select = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.Identifier("c", c) for c in columns),
            _table_sql(datamap, edge.child, "c"),
            _any(sql.Identifier("c", edge.field), KEYS),
        )
        delete = sql.SQL("DELETE FROM {} WHERE {}").format(
            _table_sql(datamap, edge.child), _any(sql.Identifier(child.primary_key), KEYS)
        )
        steps.append(CascadeStep(
            edge.child, edge, Statement("retention_cascade_select", edge.child, select, {}, (KEYS,)),
            Statement("retention_cascade_delete", edge.child, delete, {}, (KEYS,)), tuple(objects),
        ))  # fmt: skip
    mentions = [
        MentionClear(edge, Statement("retention_clear_mention", edge.child, sql.SQL("UPDATE {} SET {} = NULL WHERE {}").format(
            _table_sql(datamap, edge.child), sql.Identifier(edge.field), _any(sql.Identifier(edge.field), KEYS),
        ), {}, (KEYS,)), _retention_mention_only(datamap, edge))  # fmt: skip
        for edge in mention_edges
    ]
    position = {r: i for i, r in enumerate(graph.erasure_order(datamap))}
    tables = sorted({s.table for s in steps}, key=lambda r: position.get(r, -1))
    return steps, mentions, tables


def _retention_mention_only(datamap: DataMap, edge: ReferenceEdge) -> Statement | None:
    """A retention cascade deleting mentioned rows applies the mention's ``orphan`` rule, as
    erasure does, to the mention-only rows pointing at them that no legal hold keeps."""
    reference = mention_reference(datamap, edge)
    if not (reference.orphan_deletes_row or reference.orphan_clears):
        return None
    child = datamap.table(edge.child)
    params: dict[str, Any] = {}
    needs: list[str] = [KEYS]
    free = sql.SQL("NOT {}").format(_held_by_hold(datamap, edge.child, "m", params, needs))
    where = _and([_any(sql.Identifier("m", edge.field), KEYS), mention_only(child, "m"), free])
    if reference.orphan_deletes_row:
        query = sql.SQL("DELETE FROM {} WHERE {}").format(_table_sql(datamap, edge.child, "m"), where)
    else:
        query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
            _table_sql(datamap, edge.child, "m"),
            sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(f)) for f in reference.orphan_clears), where,
        )  # fmt: skip
    return Statement("retention_mention_only", edge.child, query, params, _unique(needs))


def _retention_statement(datamap: DataMap, rule: RetentionRule) -> RetentionStatement:
    assert rule.table is not None and rule.age_column is not None
    age_column: str = rule.age_column
    ref = TableRef(rule.system, rule.table)
    table = datamap.table(ref)
    params: dict[str, Any] = {}
    conditions = [_condition_sql(datamap, ref, table, c, i, params) for i, c in enumerate(rule.conditions)]
    due = _and(conditions) if conditions else sql.SQL("TRUE")
    target = _table_sql(datamap, ref)
    pk = sql.Identifier(table.primary_key)
    fields: tuple[str, ...] = ()
    action_params: dict[str, Any] = {}

    if rule.action in ("null_fields", "generalise"):
        # not_done(alias): the field still needs the action (the scan's pending flag on alias t,
        # and the UPDATE's re-check on the bare table).
        if rule.action == "null_fields":
            fields = tuple(rule.fields)

            def not_done(alias: str | None) -> sql.Composable:
                return _or([sql.SQL("{} IS NOT NULL").format(_column(alias, f)) for f in fields])

            assignment = sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(f)) for f in fields)
        else:
            generalisation = rule.generalise
            assert generalisation is not None
            fields = (generalisation.field,)
            column = sql.Identifier(generalisation.field)
            if generalisation.method == "ip_prefix":
                action_params["ipv4_prefix"] = generalisation.ipv4_prefix
                action_params["ipv6_prefix"] = generalisation.ipv6_prefix

                def bits(c: sql.Composable) -> sql.Composable:
                    return sql.SQL("CASE WHEN family({c}) = 4 THEN {v4}::integer ELSE {v6}::integer END").format(
                        c=c, v4=sql.Placeholder("ipv4_prefix"), v6=sql.Placeholder("ipv6_prefix")
                    )

                new = sql.SQL("network(set_masklen({c}, {bits}))::inet").format(c=column, bits=bits(column))

                def not_done(alias: str | None) -> sql.Composable:
                    c = _column(alias, fields[0])
                    return sql.SQL("{c} IS NOT NULL AND masklen({c}) > {bits}").format(c=c, bits=bits(c))
            else:
                action_params["truncate_unit"] = generalisation.unit
                new = sql.SQL("date_trunc({u}::text, {c}, 'UTC')").format(u=sql.Placeholder("truncate_unit"), c=column)

                def not_done(alias: str | None) -> sql.Composable:
                    c = _column(alias, fields[0])
                    return sql.SQL("{c} IS NOT NULL AND {c} <> date_trunc({u}::text, {c}, 'UTC')").format(
                        c=c, u=sql.Placeholder("truncate_unit")
                    )
            assignment = sql.SQL("{} = {}").format(column, new)
        pending = not_done("t")
        scan_params: dict[str, Any] = {**params, **action_params}
        scan = _scan(datamap, ref, rule.name, rule.period.sql_interval, rule.age_column, due=due, pending=pending,
                     with_children=False, extra_columns=(), params=scan_params)  # fmt: skip
        query = sql.SQL("UPDATE {} SET {} WHERE {} AND ({})").format(target, assignment, _any(pk, KEYS), not_done(None))
        def in_batch(acting: sql.Composable) -> sql.Composable:
            return sql.SQL("UPDATE {} AS d SET {} FROM scan s WHERE {} AND {} AND ({})").format(
                target, assignment, _same_row(age_column), acting, not_done("d")
            )

        return RetentionStatement(
            rule.name, ref, rule.action, scan, Statement(rule.action, ref, query, action_params, (KEYS,)),
            primary_key=table.primary_key, age_column=rule.age_column, fields=fields, reason=rule.reason,
            batch=_single_statement_batch(datamap, ref, scan, in_batch, action_params),
        )  # fmt: skip

    # delete_rows: the rows, everything they own (children first) and their objects; mentions cleared.
    objects, object_columns = _object_steps(datamap, ref)
    cascade, mentions, order = _cascade(datamap, ref)
    scan = _scan(
        datamap, ref, rule.name, rule.period.sql_interval, rule.age_column, due=due, pending=sql.SQL("TRUE"),
        with_children=bool(cascade), extra_columns=[*_referenced_columns(datamap, ref), *object_columns], params=params,
    )  # fmt: skip
    query = sql.SQL("DELETE FROM {} WHERE {}").format(target, _any(pk, KEYS))
    batch = range_bound = range_delete = partition_count = None
    if not objects and not cascade and not mentions and not rule.conditions and datamap.legal_exception_for(ref) is None:
        range_bound, range_delete = _range_batch(datamap, ref, rule.name, rule.period.sql_interval, age_column)
        partition_count = _partition_count(datamap, ref, age_column)
    if not objects and not cascade and not mentions:
        def delete_batch(acting: sql.Composable) -> sql.Composable:
            return sql.SQL("DELETE FROM {} AS d USING scan s WHERE {} AND {}").format(
                target, _same_row(age_column), acting
            )

        batch = _single_statement_batch(datamap, ref, scan, delete_batch, {})
    probe = None
    if not objects:
        probe = _partition_probe(datamap, ref, rule.age_column, due, {**params, **scan.params})
    return RetentionStatement(
        rule.name, ref, rule.action, scan, Statement(rule.action, ref, query, {}, (KEYS,)), batch=batch,
        primary_key=table.primary_key, age_column=rule.age_column, cascade=tuple(cascade),
        deletion_order=tuple(order), mentions=tuple(mentions), objects=tuple(objects), reason=rule.reason,
        partition_probe=probe, range_bound=range_bound, range_delete=range_delete, partition_count=partition_count,
    )  # fmt: skip


def _object_retention(datamap: DataMap, rule: RetentionRule) -> ObjectRetention:
    assert rule.prefix is not None
    ref = PrefixRef(rule.system, rule.prefix)
    prefix: ObjectPrefix = datamap.prefix(ref)
    if rule.age_column is None:
        return ObjectRetention(
            rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
            period_interval=rule.period.sql_interval, age_source="last_modified", reason=rule.reason,
        )  # fmt: skip
    source = datamap.tie_table(prefix)
    assert source is not None and prefix.tied_to is not None
    table = datamap.table(source)
    placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
    key_column = prefix.tied_to.key_column
    step = ObjectStep(ref, prefix.key_template, source, placeholder_columns, key_column)
    params: dict[str, Any] = {}
    # A row whose key column is already cleared has nothing left to delete (when the key is
    # stored); without a stored key the watermark alone keeps rows from being visited again.
    pending = sql.SQL("{} IS NOT NULL").format(sql.Identifier("t", key_column)) if key_column else sql.SQL("TRUE")
    scan = _scan(
        datamap, source, rule.name, rule.period.sql_interval, rule.age_column, due=sql.SQL("TRUE"), pending=pending,
        with_children=False, extra_columns=[*placeholder_columns.values(), *([key_column] if key_column else [])],
        params=params,
    )  # fmt: skip
    clear = None
    if key_column:
        clear = Statement("clear_key_column", source, sql.SQL("UPDATE {} SET {} = NULL WHERE {}").format(
            _table_sql(datamap, source), sql.Identifier(key_column), _any(sql.Identifier(table.primary_key), KEYS)
        ), {}, (KEYS,))  # fmt: skip
    return ObjectRetention(
        rule=rule.name, prefix=ref, list_prefix=prefix.static_prefix, period_days=rule.period.approx_days,
        period_interval=rule.period.sql_interval, age_source="row", scan=scan, object_step=step,
        clear_key_column=clear, primary_key=table.primary_key, age_column=rule.age_column, reason=rule.reason,
    )  # fmt: skip


def _orphan_check(datamap: DataMap, ref: PrefixRef) -> OrphanCheck | None:
    prefix = datamap.prefix(ref)
    source = datamap.tie_table(prefix)
    if source is None or prefix.tied_to is None:
        return None
    table = datamap.table(source)
    placeholder_columns = {p: prefix.tied_to.column_for(p) for p in prefix.placeholders}
    # The placeholder naming the primary key identifies the row; without one, the first.
    match = next((p for p, c in placeholder_columns.items() if c == table.primary_key), next(iter(placeholder_columns)))
    column = placeholder_columns[match]
    existing = sql.SQL("SELECT {c}::text AS {c} FROM {t} WHERE {c}::text = ANY({k}::text[])").format(
        c=sql.Identifier(column), t=_table_sql(datamap, source), k=sql.Placeholder(KEYS)
    )
    return OrphanCheck(
        ref, prefix.static_prefix, prefix.key_template, source, placeholder_columns, match, column,
        Statement("orphan_check", source, existing, {}, (KEYS,)),
    )  # fmt: skip


def build_retention_plan(datamap: DataMap) -> RetentionPlan:
    """Every retention rule of the map as executable batches (see RetentionPlan for order)."""
    objects = [_object_retention(datamap, r) for r in datamap.retention if r.prefix is not None]
    item_rules = [_item_ttl_retention(datamap, r) for r in datamap.retention if r.action == "ttl"]
    table_rules = [r for r in datamap.retention if r.table is not None and r.action != "ttl"]
    position = {r.name: i for i, r in enumerate(table_rules)}
    table_rules.sort(key=lambda r: (ACTION_ORDER[r.action], position[r.name]))
    orphans = [o for o in (_orphan_check(datamap, p) for p in datamap.prefix_refs()) if o is not None]
    return RetentionPlan(
        objects=tuple(objects),
        statements=tuple(_retention_statement(datamap, r) for r in table_rules),
        orphans=tuple(orphans),
        items=tuple(item_rules),
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
