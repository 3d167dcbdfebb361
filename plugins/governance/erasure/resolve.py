"""Where one person's rows are, for erasure: resolution narrowed to exactly one person.

The data map's :class:`~governance.datamap.plans.ResolutionPlan` says which tables hold the
person's rows (matched by an identity column, or owned by such rows) and in which order to visit
them. This module runs it in one snapshot with two additions erasure needs and export does not:

* **Narrowing.** A row found by one identity that carries a *different* value of another identity
  the request names (the household phone on a row with someone else's e-mail) belongs to another
  person: it is left out, with its owned rows. Where several rows of one table in one business
  still match (two callers sharing a phone, no e-mail to tell them apart), the row matching more
  of the request's identities wins; a tie is an :class:`Ambiguity`, which the guard refuses.
* **What holds and plans need.** Each row comes with its business (scope), the references that
  tie it to its owners (so legal holds can follow them), the columns object keys are rendered
  from and, for tables under a legal exception, until when the law keeps it.

Identities are matched by an :class:`IdentityMatcher`: by the normalised values themselves
(:class:`MatchByIdentity`, a request being served), or by their keyed hashes
(:class:`MatchByKeyedHash`, the suppression list after a restore). Either way they reach
PostgreSQL only as bound parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from governance.datamap.graph import IdentityColumn, ReferenceEdge
from governance.datamap.model import DataMap, TableRef, TableSpec
from governance.datamap.plans import SCOPE_IDS, ResolutionPlan, ResolutionStep, identity_expression
from governance.identity import SubjectIdentities

# What a row's identity column says about the request's identity of that kind.
ABSENT, MATCHES, DIFFERS = 0, 1, 2

# Reasons a matched row is left out of the person's rows.
OTHER_IDENTITY = "other_identity"  # it carries another value of an identity the request names
FEWER_IDENTITIES = "fewer_identities"  # another row of the same business matches more identities
EXCLUDED_BY_PLAN = "excluded_by_plan"  # verification: the plan left it out already

KEPT_UNTIL = "__kept_until"
STILL_KEPT = "__still_kept"


class IdentityMatcher(ABC):
    """How identity columns are compared with the person's identities in SQL."""

    @property
    @abstractmethod
    def kinds(self) -> tuple[str, ...]:
        """Identity kinds the person is known by (the kinds a resolution plan is built for)."""

    @abstractmethod
    def matches(self, column: IdentityColumn) -> sql.Composable:
        """A boolean SQL expression: the column holds one of the person's identities."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Bound parameters the expressions above use."""

    def restrict(self, datamap: DataMap, ref: TableRef, table: TableSpec) -> sql.Composable | None:
        """An extra condition on rows matched by identity (none by default)."""
        return None


class MatchByIdentity(IdentityMatcher):
    """Compare with the normalised identities, as the data map's match expressions do."""

    def __init__(self, identities: SubjectIdentities) -> None:
        self.identities = identities

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(kind for kind, _ in self.identities.items()))

    def matches(self, column: IdentityColumn) -> sql.Composable:
        return sql.SQL("{} = ANY({})").format(
            identity_expression(sql.Identifier(column.field), column.match), sql.Placeholder(f"id_{column.kind}")
        )

    def params(self) -> dict[str, Any]:
        return {f"id_{kind}": [value] for kind, value in self.identities.items()}

    def __repr__(self) -> str:
        return f"MatchByIdentity({self.identities!r})"


def keyed_hash_of_column_sql(column: sql.Composable, kind: str) -> sql.Composed:
    """HMAC-SHA256 (hex) of ``kind || NUL || value``, as :class:`governance.crypto.IdentityHasher`
    computes it, from the padded keys of :func:`governance.datamap.plans.keyed_hash_params`."""
    return sql.SQL(
        "encode(sha256({outer}::bytea || sha256({inner}::bytea || {domain}::bytea"
        " || convert_to({col}::text, 'UTF8'))), 'hex')"
    ).format(
        outer=sql.Placeholder("kh_outer"),
        inner=sql.Placeholder("kh_inner"),
        domain=sql.Placeholder(f"kh_domain_{kind}"),
        col=column,
    )


class MatchByKeyedHash(IdentityMatcher):
    """Compare keyed hashes of the columns (computed in SQL) with stored hashes of the person's
    identities: the person is known only by the suppression list. ``created_before`` limits
    identity matches to rows recorded before the erasure (``record_columns`` names each table's
    record-time column; a table without one is limited to ``planned_keys``, the keys an earlier
    erasure removed)."""

    def __init__(
        self,
        hashes: Mapping[str, Sequence[str]],
        pads: Mapping[str, bytes],
        *,
        created_before: datetime,
        record_columns: Mapping[TableRef, str | None],
        planned_keys: Mapping[TableRef, Sequence[Any]] | None = None,
    ) -> None:
        self.hashes = {k: list(v) for k, v in hashes.items() if v}
        self.pads = dict(pads)
        self.created_before = created_before
        self.record_columns = dict(record_columns)
        self.planned_keys = {k: list(v) for k, v in (planned_keys or {}).items()}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self.hashes))

    def matches(self, column: IdentityColumn) -> sql.Composable:
        expression = identity_expression(sql.Identifier(column.field), column.match)
        return sql.SQL("{} = ANY({})").format(
            keyed_hash_of_column_sql(expression, column.kind), sql.Placeholder(f"kh_{column.kind}")
        )

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "kh_outer": self.pads["keyed_hash_outer_pad"],
            "kh_inner": self.pads["keyed_hash_inner_pad"],
            "kh_created_before": self.created_before,
        }
        for kind, digests in self.hashes.items():
            params[f"kh_{kind}"] = digests
            params[f"kh_domain_{kind}"] = f"{kind}\x00".encode()
        for ref, keys in self.planned_keys.items():
            params[f"kh_planned_{ref.system}_{ref.table}"] = keys
        return params

    def restrict(self, datamap: DataMap, ref: TableRef, table: TableSpec) -> sql.Composable | None:
        column = self.record_columns.get(ref)
        if column:
            return sql.SQL("{} < {}").format(sql.Identifier(column), sql.Placeholder("kh_created_before"))
        self.planned_keys.setdefault(ref, [])
        return sql.SQL("{} = ANY({})").format(
            sql.Identifier(table.primary_key), sql.Placeholder(f"kh_planned_{ref.system}_{ref.table}")
        )

    def __repr__(self) -> str:
        return f"MatchByKeyedHash(<{','.join(self.kinds)}>)"


@dataclass
class TableRows:
    """The person's rows of one table (after narrowing), by primary key.

    ``rows`` maps each key to its selected columns (primary key, output and object-key columns,
    scope column, owning references, and ``__kept_until``/``__still_kept`` under a legal
    exception). ``by_identity`` are the keys matched by an identity rather than only through an
    owner. ``excluded`` maps keys left out to the reason.
    """

    table: TableRef
    primary_key: str
    scope_column: str | None
    owned_via: tuple[ReferenceEdge, ...]
    rows: dict[Any, dict[str, Any]] = field(default_factory=dict)
    by_identity: set[Any] = field(default_factory=set)
    excluded: dict[Any, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[Any]:
        return sorted(self.rows)


@dataclass
class MentionRows:
    """Rows of ``edge.child`` naming one of the person's rows through ``edge.field``."""

    edge: ReferenceEdge
    primary_key: str
    scope_column: str | None
    rows: dict[Any, dict[str, Any]] = field(default_factory=dict)  # key -> {field, scope}

    @property
    def keys(self) -> list[Any]:
        return sorted(self.rows)


@dataclass(frozen=True)
class Ambiguity:
    """Several rows of one table in one business match the request equally well: they may be
    different people (a household phone), so erasing all of them needs a narrower identity or an
    explicit override."""

    table: TableRef
    scope: Any
    rows: int


@dataclass
class SubjectResolution:
    """Everything resolution found for the person in one database, in plan order."""

    plan: ResolutionPlan
    tables: dict[TableRef, TableRows]
    mentions: list[MentionRows]
    params: dict[str, list[Any]]  # output params (keys of the person's rows), never identities
    ambiguities: list[Ambiguity]

    def counts(self) -> dict[str, int]:
        return {str(ref): len(rows.rows) for ref, rows in self.tables.items()}

    @property
    def is_empty(self) -> bool:
        return not any(t.rows for t in self.tables.values())


def _needed_columns(datamap: DataMap, plan: ResolutionPlan, step: ResolutionStep) -> list[str]:
    table = datamap.table(step.table)
    columns = [step.primary_key, *step.output_params.values()]
    for obj in plan.objects:
        if obj.source == step.table:
            columns += list(obj.placeholder_columns.values())
            if obj.key_column:
                columns.append(obj.key_column)
    if table.scope_column:
        columns.append(table.scope_column)
    columns += [edge.field for edge in step.owned_via]
    return list(dict.fromkeys(columns))


def _step_query(
    datamap: DataMap,
    plan: ResolutionPlan,
    step: ResolutionStep,
    matcher: IdentityMatcher,
    *,
    legal_params: dict[str, Any],
) -> tuple[sql.Composed, list[str]]:
    """SELECT of one step's rows: the needed columns, one state per identity column and one
    flag per owning reference; the WHERE rebuilt from the step's parts with ``matcher``."""
    table = datamap.table(step.table)
    schema = datamap.postgres_system(step.table.system).db_schema
    columns = _needed_columns(datamap, plan, step)
    select: list[sql.Composable] = [sql.Identifier(c) for c in columns]
    for column in step.identity_matches:
        select.append(
            sql.SQL("CASE WHEN {col} IS NULL THEN {absent} WHEN {match} THEN {hit} ELSE {differs} END AS {alias}").format(
                col=sql.Identifier(column.field), match=matcher.matches(column), absent=sql.Literal(ABSENT),
                hit=sql.Literal(MATCHES), differs=sql.Literal(DIFFERS), alias=sql.Identifier(f"__id_{column.field}"),
            )
        )  # fmt: skip
    for n, edge in enumerate(step.owned_via):
        select.append(
            sql.SQL("COALESCE({} = ANY({}), false) AS {}").format(
                sql.Identifier(edge.field), sql.Placeholder(_key_param(datamap, edge)), sql.Identifier(f"__own_{n}")
            )
        )
    exception = datamap.legal_exception_for(step.table)
    if exception is not None:
        period = f"legal_period_{exception.name}"
        legal_params[period] = exception.period.sql_interval
        age = sql.Identifier(exception.age_column)
        until = sql.SQL("{} + {}::interval").format(age, sql.Placeholder(period))
        select.append(sql.SQL("{} AS {}").format(until, sql.Identifier(KEPT_UNTIL)))
        select.append(
            sql.SQL("({age} IS NULL OR {until} > {as_of}) AS {alias}").format(
                age=age, until=until, as_of=sql.Placeholder("as_of"), alias=sql.Identifier(STILL_KEPT)
            )
        )
    alternatives: list[sql.Composable] = []
    restrict = matcher.restrict(datamap, step.table, table) if step.identity_matches else None
    for column in step.identity_matches:
        match = matcher.matches(column)
        alternatives.append(sql.SQL("({} AND {})").format(match, restrict) if restrict is not None else match)
    for edge in step.owned_via:
        alternatives.append(
            sql.SQL("{} = ANY({})").format(sql.Identifier(edge.field), sql.Placeholder(_key_param(datamap, edge)))
        )
    where: sql.Composable = sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))
    if step.scoped:
        assert table.scope_column is not None
        where = sql.SQL("{} AND {} = ANY({})").format(
            where, sql.Identifier(table.scope_column), sql.Placeholder(SCOPE_IDS)
        )
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        sql.SQL(", ").join(select), sql.Identifier(schema, step.table.table), where, sql.Identifier(step.primary_key)
    )
    return query, columns


def _key_param(datamap: DataMap, edge: ReferenceEdge) -> str:
    from governance.datamap.plans import key_param

    return key_param(datamap, edge.parent, edge.parent_field)


def _narrow(
    rows: TableRows, candidates: dict[Any, dict[str, Any]], identity_fields: Sequence[str], *, groups: bool
) -> list[Ambiguity]:
    """Leave out rows that are another person's; with ``groups``, also settle several rows of one
    business by the number of identities they match, and return the groups that stay ambiguous."""
    by_scope: dict[Any, list[Any]] = defaultdict(list)
    for key in list(candidates):
        if key not in rows.by_identity or key in rows.excluded:
            continue
        states = [candidates[key][f"__id_{f}"] for f in identity_fields]
        if DIFFERS in states:
            rows.excluded[key] = OTHER_IDENTITY
            continue
        by_scope[candidates[key].get(rows.scope_column) if rows.scope_column else None].append(key)
    ambiguities: list[Ambiguity] = []
    if not groups:
        return ambiguities
    for scope, keys in sorted(by_scope.items(), key=lambda item: str(item[0])):
        if len(keys) < 2:
            continue
        score = {k: sum(candidates[k][f"__id_{f}"] == MATCHES for f in identity_fields) for k in keys}
        best = max(score.values())
        winners = [k for k in keys if score[k] == best]
        if len(winners) == 1:
            for key in keys:
                if key != winners[0]:
                    rows.excluded[key] = FEWER_IDENTITIES
        else:
            ambiguities.append(Ambiguity(rows.table, scope, len(keys)))
    return ambiguities


def resolve_subject(
    conn: psycopg.Connection[Any],
    datamap: DataMap,
    plan: ResolutionPlan,
    matcher: IdentityMatcher,
    *,
    as_of: datetime,
    scope_ids: Sequence[int] | None = None,
    narrow: bool = True,
    exclude: Mapping[TableRef, set[Any]] | None = None,
) -> SubjectResolution:
    """Run ``plan`` on ``conn`` (the caller's snapshot) and return the person's rows.

    Rows carrying another value of an identity the request names are always left out. With
    ``narrow`` (planning), several rows of one table and business are settled by how many
    identities they match, and ties are returned as ambiguities; without it (verification), the
    keys in ``exclude`` (what the plan left out) are left out instead. Rows left out are not
    followed: their owned rows are not the person's either. Steps run parents before children.
    """
    if plan.business_scope and not scope_ids:
        raise ValueError("a business-scoped resolution needs scope_ids")
    systems = {step.table.system for step in plan.steps}
    if len(systems) > 1:
        raise NotImplementedError(f"resolution across several postgres systems ({sorted(systems)}) is not supported")
    params: dict[str, Any] = {**matcher.params(), "as_of": as_of}
    if plan.business_scope:
        params[SCOPE_IDS] = [int(s) for s in scope_ids or []]
    outputs: dict[str, list[Any]] = {}
    tables: dict[TableRef, TableRows] = {}
    ambiguities: list[Ambiguity] = []
    with conn.cursor(row_factory=dict_row) as cur:
        for step in plan.steps:
            table = datamap.table(step.table)
            legal: dict[str, Any] = {}
            query, columns = _step_query(datamap, plan, step, matcher, legal_params=legal)
            for edge in step.owned_via:
                params.setdefault(_key_param(datamap, edge), [])
            fetched = cur.execute(query, {**params, **matcher.params(), **legal}).fetchall()
            rows = TableRows(step.table, step.primary_key, table.scope_column, step.owned_via)
            candidates: dict[Any, dict[str, Any]] = {}
            identity_fields = [c.field for c in step.identity_matches]
            for record in fetched:
                key = record[step.primary_key]
                owned = any(record[f"__own_{n}"] for n in range(len(step.owned_via)))
                hit = any(record[f"__id_{f}"] == MATCHES for f in identity_fields)
                candidates[key] = dict(record)
                if hit and not owned:
                    rows.by_identity.add(key)
                if exclude and key in exclude.get(step.table, set()):
                    rows.excluded[key] = EXCLUDED_BY_PLAN
            ambiguities += _narrow(rows, candidates, identity_fields, groups=narrow)
            keep_columns = [*columns, *([KEPT_UNTIL, STILL_KEPT] if legal else [])]
            for key, record in candidates.items():
                if key not in rows.excluded:
                    rows.rows[key] = {c: record[c] for c in keep_columns}
            rows.by_identity &= set(rows.rows)
            tables[step.table] = rows
            for param, column in step.output_params.items():
                values = sorted({r[column] for r in rows.rows.values() if r[column] is not None})
                params[param] = values
                outputs[param] = values
        mentions: list[MentionRows] = []
        for mention in plan.mentions:
            child = datamap.table(mention.edge.child)
            schema = datamap.postgres_system(mention.edge.child.system).db_schema
            names = [child.primary_key, mention.edge.field, *([child.scope_column] if child.scope_column else [])]
            query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
                sql.SQL(", ").join(sql.Identifier(n) for n in dict.fromkeys(names)),
                sql.Identifier(schema, mention.edge.child.table),
                mention.where, sql.Identifier(child.primary_key),
            )  # fmt: skip
            found = MentionRows(mention.edge, child.primary_key, child.scope_column)
            if params.get(mention.parent_param):
                for record in cur.execute(query, {n: params[n] for n in mention.input_params}).fetchall():
                    found.rows[record[child.primary_key]] = dict(record)
            mentions.append(found)
    return SubjectResolution(plan=plan, tables=tables, mentions=mentions, params=outputs, ambiguities=ambiguities)
