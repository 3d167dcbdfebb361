"""The data map as a graph: who owns which rows, who is mentioned where, in which order to erase.

Nodes are tables; edges are the map's declared references (child --field--> parent). Everything
here is a pure function of the map: no database, no I/O. Ties are always broken by name, so the
same map gives the same order on every machine and every run.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from governance.datamap.model import (
    DataMap,
    DataMapError,
    DataMapIssue,
    IdentityField,
    IdentityMatch,
    PostgresSystem,
    PrefixRef,
    ReferenceKind,
    TableRef,
)

ERASURE_KINDS = (ReferenceKind.ownership, ReferenceKind.mention)


@dataclass(frozen=True, order=True)
class ReferenceEdge:
    """``child.field`` points at ``parent.parent_field`` with the given kind."""

    child: TableRef
    field: str
    parent: TableRef
    parent_field: str
    kind: ReferenceKind

    def __str__(self) -> str:
        return f"{self.child}.{self.field} -> {self.parent}.{self.parent_field} ({self.kind.value})"


@dataclass(frozen=True)
class IdentityColumn:
    """A column holding an identity, with the comparison to use (defaults resolved)."""

    table: TableRef
    field: str
    kind: str
    match: IdentityMatch


def reference_edges(datamap: DataMap, kinds: Collection[ReferenceKind] = ERASURE_KINDS) -> list[ReferenceEdge]:
    """Every reference of the given kinds, sorted. References that do not resolve (a broken map
    being validated) are skipped: the loader reports them separately."""
    edges: list[ReferenceEdge] = []
    for system in datamap.postgres_systems:
        for table in system.tables:
            child = TableRef(system.name, table.name)
            for reference in table.references:
                if reference.kind not in kinds:
                    continue
                target_system = datamap.system(reference.to.system or system.name)
                if not isinstance(target_system, PostgresSystem):
                    continue
                target = target_system.table(reference.to.table)
                if target is None:
                    continue
                parent = TableRef(target_system.name, target.name)
                edges.append(
                    ReferenceEdge(child, reference.field, parent, reference.to.field or target.primary_key, reference.kind)
                )
    return sorted(edges)


def identity_columns(datamap: DataMap, kinds: Iterable[str] | None = None) -> list[IdentityColumn]:
    """Columns holding an identity of one of ``kinds`` (all kinds when None), in map order."""
    wanted = set(kinds) if kinds is not None else None
    out: list[IdentityColumn] = []
    for system in datamap.postgres_systems:
        for table in system.tables:
            for identity in table.identities:
                if wanted is not None and identity.kind not in wanted:
                    continue
                out.append(_identity_column(datamap, TableRef(system.name, table.name), identity))
    return out


def _identity_column(datamap: DataMap, ref: TableRef, identity: IdentityField) -> IdentityColumn:
    spec = datamap.identity_kinds.get(identity.kind)
    match = identity.match or (spec.match if spec else IdentityMatch.exact)
    return IdentityColumn(ref, identity.field, identity.kind, match)


def find_cycles(datamap: DataMap, kinds: Collection[ReferenceKind] = ERASURE_KINDS) -> list[list[TableRef]]:
    """Reference cycles among the given kinds, each as the list of tables around it (starting at
    its smallest table, deduplicated). A mention of a row of the same table is not a cycle (the
    reference is cleared before rows are deleted); an ownership of the same table is."""
    parents: dict[TableRef, set[TableRef]] = defaultdict(set)
    for edge in reference_edges(datamap, kinds):
        if edge.child == edge.parent and edge.kind is not ReferenceKind.ownership:
            continue
        parents[edge.child].add(edge.parent)

    cycles: set[tuple[TableRef, ...]] = set()
    state: dict[TableRef, int] = {}  # 1 = on the current path, 2 = done
    path: list[TableRef] = []

    def visit(node: TableRef) -> None:
        state[node] = 1
        path.append(node)
        for parent in sorted(parents.get(node, ())):
            if state.get(parent) == 1:
                cycle = path[path.index(parent) :]
                start = cycle.index(min(cycle))
                cycles.add(tuple(cycle[start:] + cycle[:start]))
            elif parent not in state:
                visit(parent)
        path.pop()
        state[node] = 2

    for node in sorted(parents):
        if node not in state:
            visit(node)
    return [list(c) for c in sorted(cycles)]


def erasure_tables(datamap: DataMap) -> list[TableRef]:
    """Tables erasure may touch: those holding an identity, those owned (transitively) by them,
    and those mentioning any of these. Sorted by name."""
    edges = reference_edges(datamap)
    tables = {c.table for c in identity_columns(datamap)}
    changed = True
    while changed:
        changed = False
        for edge in edges:
            if edge.kind is ReferenceKind.ownership and edge.parent in tables and edge.child not in tables:
                tables.add(edge.child)
                changed = True
    tables |= {e.child for e in edges if e.kind is ReferenceKind.mention and e.parent in tables}
    return sorted(tables)


def _topological(
    nodes: Iterable[TableRef], edges: Iterable[ReferenceEdge], *, children_first: bool, source: str = "<datamap>"
) -> list[TableRef]:
    """Kahn's algorithm with a name-ordered heap; raises DataMapError on a cycle."""
    node_set = set(nodes)
    before: dict[TableRef, set[TableRef]] = defaultdict(set)  # node -> nodes that must come after it
    waiting: dict[TableRef, int] = dict.fromkeys(node_set, 0)
    for edge in edges:
        if edge.child not in node_set or edge.parent not in node_set or edge.child == edge.parent:
            continue
        first, then = (edge.child, edge.parent) if children_first else (edge.parent, edge.child)
        if then not in before[first]:
            before[first].add(then)
            waiting[then] += 1
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[TableRef] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for then in before.get(node, ()):
            waiting[then] -= 1
            if waiting[then] == 0:
                heapq.heappush(ready, then)
    if len(order) != len(node_set):
        stuck = sorted(n for n in node_set if n not in order)
        raise DataMapError(
            [
                DataMapIssue(
                    source,
                    "references",
                    "reference cycle among " + ", ".join(map(str, stuck)) + ": no order erases children before parents",
                )
            ]
        )
    return order


def erasure_order(datamap: DataMap) -> list[TableRef]:
    """The tables erasure touches, children before parents.

    A table comes before every table it references by ownership or mention: its rows (or its
    references) are gone before the rows they point at are deleted, so foreign keys hold at every
    step. Ties are broken by (system, table). Raises DataMapError on a cycle (the loader rejects
    such maps already).
    """
    tables = erasure_tables(datamap)
    own_self = [e for e in reference_edges(datamap, (ReferenceKind.ownership,)) if e.child == e.parent]
    if own_self:
        raise DataMapError([DataMapIssue(datamap.source, "references", f"ownership cycle: {own_self[0]}")])
    return _topological(tables, reference_edges(datamap), children_first=True, source=datamap.source)


@dataclass(frozen=True)
class SubjectReach:
    """Where a person found by some identity kinds has data, as the map describes it.

    ``identity_columns``: columns compared with the given identities. ``owned_tables``: tables
    holding the person's rows (matched by identity or reached along ownership), parents before
    children. ``ownership_edges``: the edges used to reach owned tables. ``mention_edges``:
    references from rows that only mention one of the person's rows. ``object_prefixes``:
    prefixes tied to owned tables. ``request_prefixes``: prefixes owned by privacy requests.
    """

    identity_kinds: tuple[str, ...]
    identity_columns: tuple[IdentityColumn, ...]
    owned_tables: tuple[TableRef, ...]
    ownership_edges: tuple[ReferenceEdge, ...]
    mention_edges: tuple[ReferenceEdge, ...]
    object_prefixes: tuple[PrefixRef, ...]
    request_prefixes: tuple[PrefixRef, ...]

    def matches_of(self, table: TableRef) -> list[IdentityColumn]:
        return [c for c in self.identity_columns if c.table == table]

    def parents_of(self, table: TableRef) -> list[ReferenceEdge]:
        """Ownership edges by which rows of ``table`` are reached."""
        return [e for e in self.ownership_edges if e.child == table]


def subject_reach(datamap: DataMap, identity_kinds: Iterable[str]) -> SubjectReach:
    """Walk the map from the identity kinds given to every table holding the person's rows."""
    kinds = tuple(sorted(set(identity_kinds)))
    columns = identity_columns(datamap, kinds)
    owned = {c.table for c in columns}
    ownership = [e for e in reference_edges(datamap, (ReferenceKind.ownership,)) if e.child != e.parent]
    changed = True
    while changed:  # fixpoint: owned rows of owned rows are owned
        changed = False
        for edge in ownership:
            if edge.parent in owned and edge.child not in owned:
                owned.add(edge.child)
                changed = True
    used = [e for e in ownership if e.parent in owned]
    order = _topological(owned, used, children_first=False, source=datamap.source)
    mentions = tuple(e for e in reference_edges(datamap, (ReferenceKind.mention,)) if e.parent in owned)
    prefixes: list[PrefixRef] = []
    request_prefixes: list[PrefixRef] = []
    for ref in datamap.prefix_refs():
        prefix = datamap.prefix(ref)
        if prefix.owned_by == "privacy_request":
            request_prefixes.append(ref)
        elif datamap.tie_table(prefix) in owned:
            prefixes.append(ref)
    return SubjectReach(
        identity_kinds=kinds,
        identity_columns=tuple(columns),
        owned_tables=tuple(order),
        ownership_edges=tuple(sorted(used)),
        mention_edges=mentions,
        object_prefixes=tuple(prefixes),
        request_prefixes=tuple(request_prefixes),
    )
