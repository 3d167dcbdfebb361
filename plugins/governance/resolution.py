"""Where one person's rows are: identity resolution narrowed to exactly one person.

Shared by every workflow that reads or changes a person's rows (export, erasure, the suppression
list), so they all agree on who "the person" is. The data map's
:class:`~governance.datamap.plans.ResolutionPlan` says which tables hold the person's rows
(matched by an identity column, or owned by such rows) and in which order to visit them;
:func:`resolve_subject` runs it in the caller's snapshot and applies **the narrowing rule**
(:func:`narrow_to_one_person`):

* A row found by one identity that carries a *different* value of another identity the request
  names (the household phone on a row with someone else's e-mail) belongs to another person: it
  is left out (``other_identity``), with its owned rows.
* Where several rows of one table in one business still match (two callers sharing a phone, no
  e-mail to tell them apart), the row matching more of the request's identities wins; the others
  are left out (``fewer_identities``). A tie is an :class:`Ambiguity`: the rows may be different
  people, so no workflow may act on them for one requester. Erasure's guard and the export refuse
  it, asking for the identity that tells the people apart.

Rows reached only through an owner are never narrowed: their owner already was. The quality gate
of the export applies the same rule (:func:`narrow_to_one_person`) to the rows it reads back from a bundle.

Each resolved row also comes with its business (scope), the references that tie it to its owners
(so legal holds can follow them), the columns object keys are rendered from and, when an ``as_of``
date is given, until when the law keeps a row of a table under a legal exception.

The SQL is the plan's (``ResolutionStep.select``, ``MentionStep.select``): nothing here builds
any. Identities are bound by an :class:`IdentityMatcher`: the normalised values themselves
(:class:`MatchByIdentity`, a request being served) or keyed hashes (erasure's
``MatchByKeyedHash``, the suppression list after a restore), for a plan built with the same
``matching``. Identities reach PostgreSQL only as bound parameters, and nothing here puts one in a
message; keyed hashes are computed in this process from the plan's scans (the key, and anything
derived from it, never reaches the database).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from governance.datamap.graph import ReferenceEdge
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import (
    ABSENT as ABSENT,
)
from governance.datamap.plans import (
    AS_OF,
    DIFFERS,
    KEPT_UNTIL,
    KEY_HELD_COLUMN,
    KEY_PLAN_COLUMN,
    MATCHES,
    PLAN_ID,
    PLANNED_KEYS_PREFIX,
    SCOPE_IDS,
    STILL_KEPT,
    KeyedHashScan,
    KeyTable,
    Matching,
    ResolutionPlan,
    key_param,
    owner_flag_column,
)
from governance.identity import SubjectIdentities

# Reasons a matched row is left out of the person's rows.
OTHER_IDENTITY = "other_identity"  # it carries another value of an identity the request names
FEWER_IDENTITIES = "fewer_identities"  # another row of the same business matches more identities
EXCLUDED_BY_PLAN = "excluded_by_plan"  # verification: the plan left it out already

K = TypeVar("K", bound=Hashable)


# --------------------------------------------------------------------------------------------
# The rule


@dataclass(frozen=True)
class IdentityMatchRow:
    """What narrowing needs of one row found by an identity: its business (``None`` for a table
    without a scope column) and, per identity column of a kind the request names, whether the
    column is ABSENT, MATCHES or DIFFERS."""

    scope: Any
    states: tuple[int, ...]


def narrow_to_one_person(
    rows: Mapping[K, IdentityMatchRow], *, settle_groups: bool = True
) -> tuple[dict[K, str], list[tuple[Any, int]]]:
    """The narrowing rule on rows of one table found by an identity (never rows reached only
    through an owner).

    Returns ``(left out, ties)``: the keys that are another person's, with the reason
    (``other_identity``; with ``settle_groups`` also ``fewer_identities``), and, with
    ``settle_groups``, ``(business, rows)`` for each business where several rows match the most
    identities equally well (ordered by business). Rows of a tie are not left out: the caller
    refuses the request instead.
    """
    left_out: dict[K, str] = {}
    by_scope: dict[Any, list[K]] = defaultdict(list)
    for key, row in rows.items():
        if DIFFERS in row.states:
            left_out[key] = OTHER_IDENTITY
            continue
        by_scope[row.scope].append(key)
    ties: list[tuple[Any, int]] = []
    if not settle_groups:
        return left_out, ties
    for scope, keys in sorted(by_scope.items(), key=lambda item: str(item[0])):
        if len(keys) < 2:
            continue
        score = {k: sum(state == MATCHES for state in rows[k].states) for k in keys}
        best = max(score.values())
        winners = [k for k in keys if score[k] == best]
        if len(winners) == 1:
            for key in keys:
                if key != winners[0]:
                    left_out[key] = FEWER_IDENTITIES
        else:
            ties.append((scope, len(keys)))
    return left_out, ties


@dataclass(frozen=True)
class Ambiguity:
    """Several rows of one table in one business match the request equally well: they may be
    different people (a household phone), so acting on all of them needs a narrower identity."""

    table: TableRef
    scope: Any
    rows: int

    def describe(self) -> str:
        """Counts, table and business only: safe for logs, XCom and outcome details."""
        return f"{self.table}: {self.rows} rows in business {self.scope} match the identities equally well"


def describe_ambiguities(ambiguities: Iterable[Ambiguity]) -> str:
    return "; ".join(a.describe() for a in ambiguities)


# --------------------------------------------------------------------------------------------
# Matching identities


class IdentityMatcher(ABC):
    """The values identity columns are compared with: the parameters the resolution plan's
    statements bind (the SQL itself is the plan's, built for ``matching``)."""

    matching: Matching

    @property
    @abstractmethod
    def kinds(self) -> tuple[str, ...]:
        """Identity kinds the person is known by (the kinds a resolution plan is built for)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Bound parameters the plan's match expressions use."""

    def matched_keys(self, conn: psycopg.Connection[Any], scan: KeyedHashScan) -> list[Any]:
        """Primary keys of the rows ``scan`` finds to be the person's (matching by keyed hashes)."""
        raise NotImplementedError(f"{type(self).__name__} matches by {self.matching}: it runs no keyed-hash scan")


class MatchByIdentity(IdentityMatcher):
    """Compare with the normalised identities (``{kind: [value]}``)."""

    matching: Matching = "identity"

    def __init__(self, identities: SubjectIdentities) -> None:
        self.identities = identities

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(kind for kind, _ in self.identities.items()))

    def params(self) -> dict[str, Any]:
        return {kind: [value] for kind, value in self.identities.items()}

    def __repr__(self) -> str:
        return f"MatchByIdentity({self.identities!r})"


# --------------------------------------------------------------------------------------------
# What resolution returns


@dataclass
class StoredKeys:
    """A table's rows of the person kept in its own database, in its :class:`KeyTable` under
    ``plan_id`` (a heavy subject: :class:`KeyStore`), not in this process: ``count`` rows.

    Rows are read back only where a decision needs them (:meth:`rows_where`: the rows a legal hold
    may keep), in pages of a server-side cursor on ``conn``, the resolution's snapshot."""

    conn: psycopg.Connection[Any]
    key_table: KeyTable
    plan_id: str
    count: int
    held: int = 0
    page_rows: int = 5000

    def rows_where(self, condition: sql.Composable, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """The stored rows (the step's columns) meeting ``condition``, in key order."""
        kt = self.key_table
        query = sql.SQL("SELECT {} FROM {} WHERE {} = {} AND {} ORDER BY {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in kt.columns), kt.name, sql.Identifier(KEY_PLAN_COLUMN),
            sql.Placeholder(PLAN_ID), condition, sql.Identifier(kt.primary_key),
        )  # fmt: skip
        with self.conn.cursor(name=f"governance_stored_keys_{kt.table_name}"[:63], row_factory=dict_row) as cur:
            cur.itersize = self.page_rows
            yield from cur.execute(query, {**params, PLAN_ID: self.plan_id})

    def mark_held(self, keys: Sequence[Any]) -> None:
        """Keys a legal hold keeps: stored, but never acted on."""
        kt = self.key_table
        for start in range(0, len(keys), self.page_rows):
            self.conn.execute(
                sql.SQL("UPDATE {} SET {} = true WHERE {} = %(plan)s AND {} = ANY(%(keys)s)").format(
                    kt.name, sql.Identifier(KEY_HELD_COLUMN), sql.Identifier(KEY_PLAN_COLUMN), sql.Identifier(kt.primary_key)
                ),
                {"plan": self.plan_id, "keys": list(keys[start : start + self.page_rows])},
            )  # fmt: skip
        self.held += len(keys)


@dataclass(frozen=True)
class KeyStore:
    """Keep the keys of ``tables`` (:func:`~governance.datamap.plans.key_tables`) in their own
    database under ``plan_id`` when a step finds more than ``inline_rows`` rows; fewer come back
    to this process as ordinary rows (and are listed in the plan). The snapshot connections must
    be read-write (``system_snapshots(read_only=False)``) and the key tables exist."""

    plan_id: str
    tables: Mapping[TableRef, KeyTable]
    inline_rows: int = 10_000


@dataclass
class TableRows:
    """The person's rows of one table (after narrowing), by primary key.

    ``rows`` maps each key to its selected columns (primary key, output and object-key columns,
    scope column, owning references, and ``__kept_until``/``__still_kept`` under a legal
    exception when resolved with ``as_of``). ``by_identity`` are the keys matched by an identity
    rather than only through an owner. ``excluded`` maps keys left out to the reason.
    """

    table: TableRef
    primary_key: str
    scope_column: str | None
    owned_via: tuple[ReferenceEdge, ...]
    rows: dict[Any, dict[str, Any]] = field(default_factory=dict)
    by_identity: set[Any] = field(default_factory=set)
    excluded: dict[Any, str] = field(default_factory=dict)
    stored: StoredKeys | None = None  # the rows are in the database (``rows`` is empty)

    @property
    def keys(self) -> list[Any]:
        return sorted(self.rows)

    @property
    def count(self) -> int:
        return self.stored.count if self.stored is not None else len(self.rows)


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


@dataclass
class SubjectResolution:
    """Everything resolution found for the person in one database, in plan order."""

    plan: ResolutionPlan
    tables: dict[TableRef, TableRows]
    mentions: list[MentionRows]
    params: dict[str, list[Any]]  # output params (keys of the person's rows), never identities
    ambiguities: list[Ambiguity]

    def counts(self) -> dict[str, int]:
        return {str(ref): rows.count for ref, rows in self.tables.items()}

    @property
    def is_empty(self) -> bool:
        return not any(t.count for t in self.tables.values())


# --------------------------------------------------------------------------------------------
# Running a plan


#: One connection (a plan within one database) or one per system name, each in its own snapshot.
SystemConnections = psycopg.Connection[Any] | Mapping[str, psycopg.Connection[Any]]


def plan_systems(plan: ResolutionPlan) -> list[str]:
    """The database systems a plan reads, in the order its steps first visit them (a system whose
    keys drive another's resolution comes first), then systems only its mentions read."""
    tables = [*(step.table for step in plan.steps), *(m.edge.child for m in plan.mentions)]
    return list(dict.fromkeys(t.system for t in tables))


def connection_for(conns: SystemConnections, system: str) -> psycopg.Connection[Any]:
    """The connection of ``system``: the only one given, or the one named for it (KeyError naming
    the system when none is)."""
    if isinstance(conns, psycopg.Connection):
        return conns
    try:
        return conns[system]
    except KeyError:
        raise KeyError(f"no connection given for system {system!r} (have {sorted(conns)})") from None


@contextmanager
def system_snapshots(
    datamap: DataMap,
    systems: Iterable[str],
    conninfo_for: Callable[[str], str],
    *,
    read_only: bool = True,
    application_name: str = "governance",
) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """One connection per database system (``conninfo_for(connection_id)``), each inside its own
    ``REPEATABLE READ`` transaction (``READ ONLY`` unless ``read_only`` is false): every statement
    run on it until the block ends sees that system's one snapshot. Keys found in one system are
    carried to the next by :func:`resolve_subject` as bound parameters (databases cannot join
    across each other). Connections are closed at the end (a transaction the caller did not commit
    is rolled back)."""
    with ExitStack() as stack:
        conns: dict[str, psycopg.Connection[Any]] = {}
        for name in dict.fromkeys(systems):
            system = datamap.postgres_system(name)
            conn = stack.enter_context(psycopg.connect(conninfo_for(system.connection_id), application_name=application_name))
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ" + (" READ ONLY" if read_only else ""))
            conns[name] = conn
        yield conns


def _owner_param(datamap: DataMap, edge: ReferenceEdge) -> str:
    return key_param(datamap, edge.parent, edge.parent_field)


def _narrow(
    rows: TableRows, candidates: dict[Any, dict[str, Any]], identity_fields: Sequence[str], *, groups: bool
) -> list[Ambiguity]:
    """Apply :func:`narrow_to_one_person` to one table's candidate rows (``__id_<field>`` states), recording
    what it leaves out in ``rows.excluded``; return the businesses that stay ambiguous."""
    matched = {
        key: IdentityMatchRow(
            candidates[key].get(rows.scope_column) if rows.scope_column else None,
            tuple(candidates[key][f"__id_{f}"] for f in identity_fields),
        )
        for key in candidates
        if key in rows.by_identity and key not in rows.excluded
    }
    left_out, ties = narrow_to_one_person(matched, settle_groups=groups)
    rows.excluded.update(left_out)
    return [Ambiguity(rows.table, scope, count) for scope, count in ties]


def resolve_subject(
    conn: SystemConnections,
    datamap: DataMap,
    plan: ResolutionPlan,
    matcher: IdentityMatcher,
    *,
    as_of: datetime | None = None,
    scope_ids: Sequence[int] | None = None,
    narrow: bool = True,
    exclude: Mapping[TableRef, set[Any]] | None = None,
    key_store: KeyStore | None = None,
) -> SubjectResolution:
    """Run ``plan``'s statements on ``conn`` (the caller's snapshot) and return the person's rows.

    ``conn`` is one connection when the plan stays within one database, else a connection per
    system (:func:`system_snapshots`: each in its own snapshot): each step runs on its table's
    system, and the keys found upstream (a call's id in the app) are bound to the steps of the
    next system (the warehouse's facts of those calls).

    Rows carrying another value of an identity the request names are always left out. With
    ``narrow`` (serving a request), several rows of one table and business are settled by how
    many identities they match, and ties are returned as ambiguities; without it (verification),
    the keys in ``exclude`` (what the plan left out) are left out instead. Rows left out are not
    followed: their owned rows are not the person's either. Steps run parents before children.
    With ``as_of``, rows of tables under a legal exception carry until when they are kept.

    With ``key_store`` (an erasure plan), the steps it names store their rows in their own
    database, set-based (``INSERT ... SELECT`` of the step's statement, in the same snapshot), and
    come back as :class:`StoredKeys` (a count) when there are more than ``inline_rows``.
    """
    if plan.business_scope and not scope_ids:
        raise ValueError("a business-scoped resolution needs scope_ids")
    if plan.matching != matcher.matching:
        raise ValueError(f"the plan matches by {plan.matching}, the matcher by {matcher.matching}")
    systems = plan_systems(plan)
    if isinstance(conn, psycopg.Connection) and len(systems) > 1:
        raise ValueError(f"the plan reads {', '.join(systems)}: give a connection per system (system_snapshots)")
    conns = {name: connection_for(conn, name) for name in systems}
    params: dict[str, Any] = {**matcher.params(), AS_OF: as_of}
    if plan.business_scope:
        params[SCOPE_IDS] = [int(s) for s in scope_ids or []]
    for scan in plan.hash_scans:  # keyed hashes are computed here, never in SQL
        params[scan.param] = matcher.matched_keys(conns[scan.statement.table.system], scan)
    outputs: dict[str, list[Any]] = {}
    tables: dict[TableRef, TableRows] = {}
    ambiguities: list[Ambiguity] = []
    with ExitStack() as cursors:
        cursor_of = {name: cursors.enter_context(c.cursor(row_factory=dict_row)) for name, c in conns.items()}
        for step in plan.steps:
            cur = cursor_of[step.table.system]
            table = datamap.table(step.table)
            for name in step.select.input_params:  # nothing found upstream, nothing planned: match nothing
                if name.startswith(PLANNED_KEYS_PREFIX) or any(name == _owner_param(datamap, e) for e in step.owned_via):
                    params.setdefault(name, [])
            rows = TableRows(step.table, step.primary_key, table.scope_column, step.owned_via)
            kt = key_store.tables.get(step.table) if key_store is not None and not exclude else None
            if kt is not None and key_store is not None:
                stored = _store_rows(conns[step.table.system], kt, step.select.query, step.select.bind(params),
                                     key_store.plan_id, key_store.inline_rows)  # fmt: skip
                if isinstance(stored, StoredKeys):
                    rows.stored = stored
                else:  # few rows: the plan lists them, as any other table's
                    rows.rows = stored
                tables[step.table] = rows
                continue  # a leaf reached only through owners: nothing to narrow, nothing downstream
            fetched = cur.execute(step.select.query, step.select.bind(params)).fetchall()
            candidates: dict[Any, dict[str, Any]] = {}
            identity_fields = [c.field for c in step.identity_matches]
            for record in fetched:
                key = record[step.primary_key]
                owned = any(record[owner_flag_column(n)] for n in range(len(step.owned_via)))
                hit = any(record[f"__id_{f}"] == MATCHES for f in identity_fields)
                candidates[key] = dict(record)
                if hit and not owned:
                    rows.by_identity.add(key)
                if exclude and key in exclude.get(step.table, set()):
                    rows.excluded[key] = EXCLUDED_BY_PLAN
            ambiguities += _narrow(rows, candidates, identity_fields, groups=narrow)
            legal = as_of is not None and datamap.legal_exception_for(step.table) is not None
            keep_columns = [*step.columns, *([KEPT_UNTIL, STILL_KEPT] if legal else [])]
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
            found = MentionRows(mention.edge, child.primary_key, child.scope_column)
            if params.get(mention.parent_param):
                cur = cursor_of[mention.edge.child.system]
                for record in cur.execute(mention.select.query, mention.select.bind(params)).fetchall():
                    found.rows[record[child.primary_key]] = dict(record)
            mentions.append(found)
    return SubjectResolution(plan=plan, tables=tables, mentions=mentions, params=outputs, ambiguities=ambiguities)


def _store_rows(
    conn: psycopg.Connection[Any], kt: KeyTable, select: sql.Composable, params: Mapping[str, Any], plan_id: str,
    inline_rows: int,
) -> StoredKeys | dict[Any, dict[str, Any]]:
    """Store the rows ``select`` finds in ``kt`` under ``plan_id`` (replacing what an earlier
    attempt of the same plan stored), set-based in the caller's snapshot. More than
    ``inline_rows``: the :class:`StoredKeys`; else they are taken back out and returned by key."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(kt.forget(), {PLAN_ID: [plan_id]})
        count = max(0, cur.execute(kt.fill(select), {**params, PLAN_ID: plan_id}).rowcount)
        if count > inline_rows:
            cur.execute(sql.SQL("ANALYZE {}").format(kt.name))  # the executor joins to it
            return StoredKeys(conn, kt, plan_id, count)
        taken = cur.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %(plan)s RETURNING {}").format(
                kt.name, sql.Identifier(KEY_PLAN_COLUMN), sql.SQL(", ").join(sql.Identifier(c) for c in kt.columns)
            ),
            {"plan": plan_id},
        ).fetchall()  # fmt: skip
    return {r[kt.primary_key]: dict(r) for r in sorted(taken, key=lambda r: r[kt.primary_key])}
