"""The erasure plan of one person: what each step deletes, clears or keeps, and why.

:func:`build_work` turns the data map's :class:`~governance.datamap.plans.ErasurePlan` (which
effect each table gets, in reference order: children before parents) and a
:class:`~governance.erasure.resolve.SubjectResolution` (the person's rows, in one snapshot) into an
:class:`ErasureWork`: the resolved primary keys per table and effect, the object keys, the
processor record ids, and everything kept with its reason and end date. Legal holds are applied
here, because the data map's statements know nothing of them:

* a person hold keeps everything of the person (nothing is erased; the plan says why);
* a business hold keeps the rows collected for that business, a table hold the whole table
  (mentions there are not cleared either); rows owned by a held row are held with it;
* a row that a held row still references (an owner, or a mentioned user) is kept, so no foreign
  key breaks: it is listed as kept because of the hold;
* rows under a legal exception are minimised (the data map's field actions) until the law's
  period ends, then deleted; objects of held rows are kept, those of every other row deleted.

No I/O but on stored keys: a heavy leaf table's keys stay in its own database (resolution's
:class:`~governance.resolution.StoredKeys`); its step records the plan id and a count, the rows a
hold may keep are read back (in pages) and marked held there. The result is JSON
(``to_json``/``from_json``), its size independent of such tables' rows, and is what gets
persisted, approved, executed, verified and certified. ``summary()`` has counts only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from governance.connectors.objects import present_objects
from governance.datamap.model import DataMap, ErasureAction, PrefixRef, TableRef
from governance.datamap.plans import MENTION_ONLY_EFFECTS, ErasurePlan, owner_fields
from governance.erasure.holds import ActiveHolds, LegalHold
from governance.erasure.resolve import KEPT_UNTIL, STILL_KEPT, SubjectResolution, TableRows

OWNED_EFFECTS = ("delete_rows", "rewrite_rows", "minimise_kept_rows", "delete_expired_kept_rows")
DELETING_EFFECTS = ("delete_rows", "delete_expired_kept_rows")

# Why something is kept.
LEGAL_EXCEPTION = "legal_exception"
LEGAL_HOLD = "legal_hold"
HELD_REFERENCE = "referenced_by_held_row"
OUT_OF_SCOPE = "out_of_business_scope"


@dataclass
class DatabaseStep:
    """One table and effect: the statements run keyed by ``keys``, in bounded batches.

    ``clear_mention`` steps rewrite ``reference_field`` (the data map's action for it) on rows that
    still point at one of ``reference_values`` (the person's keys); the other effects act on the
    person's own rows. ``fields`` are the columns rewritten. ``sql`` is the statement that runs
    (placeholders only, as the dry run and the approval show it) and ``statement_sha256`` its
    digest with its constants: the executor refuses to run a different one.
    """

    order: int
    system: str
    table: str
    effect: str
    keys: list[Any]
    fields: list[str] = field(default_factory=list)
    reference_field: str | None = None
    reference_values: list[Any] = field(default_factory=list)
    legal_exception: str | None = None
    sql: str = ""
    statement_sha256: str = ""
    # A heavy leaf table's keys kept in its own database under this plan id (``keys`` is empty):
    # ``stored_rows`` of them are acted on (see :class:`~governance.datamap.plans.KeyTable`).
    key_set: str | None = None
    stored_rows: int = 0

    @property
    def ref(self) -> TableRef:
        return TableRef(self.system, self.table)

    @property
    def planned(self) -> int:
        """Rows the step acts on: its keys, or the keys stored for it."""
        return self.stored_rows if self.key_set is not None else len(self.keys)

    @property
    def step_id(self) -> str:
        return f"db:{self.system}:{self.order:03d}:{self.table}:{self.effect}"


@dataclass
class ObjectWork:
    """Objects of one prefix to delete (every version): ``keys``, or whole ``folders`` (export
    bundles of the person's requests)."""

    system: str
    bucket: str
    prefix: str
    keys: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    # What the object store really holds for these candidates, listed when the plan is made
    # (:func:`inventory_objects`); None when not listed (a plan stored before, a pure test).
    present: int | None = None  # objects with data
    versions: int | None = None  # their stored versions (all deleted)
    absent: int | None = None  # candidate keys or folders with nothing stored

    @property
    def step_id(self) -> str:
        return f"objects:{self.system}:{self.prefix}"

    @property
    def candidates(self) -> int:
        """Keys computed from the person's rows, plus request folders: what may exist."""
        return len(self.keys) + len(self.folders)


@dataclass
class ProcessorWork:
    """Records a processor holds for the person, erased through its declared erase call."""

    processor: str
    record_ids: list[str]


@dataclass
class ItemWork:
    """A person's (or business's) items of one DynamoDB table, deleted whole.

    The plan holds no key values (they hold the person's phone): ``found`` counts the items the
    Query returned when planning; execution runs the same Query again with the identities
    decrypted inside the task and deletes what it finds (minus ``held_businesses``, within
    ``business_id`` when scoped); verification runs it once more and expects nothing."""

    system: str
    table: str
    table_name: str
    index: str | None
    by: str
    found: int = 0
    kept: int = 0
    held_businesses: list[int] = field(default_factory=list)

    @property
    def step_id(self) -> str:
        return f"items:{self.system}:{self.table}"

    @property
    def where(self) -> str:
        return f"{self.system}.{self.table}"


@dataclass
class KeptItem:
    """Something of the person that is not erased, why, and until when.

    ``kind`` is ``rows``, ``mentions``, ``objects`` or ``processor_records``; ``where`` the table,
    prefix or processor. ``until`` / ``until_latest`` bound the end dates (None: until released,
    or no end). ``keys`` are what verification must find still there (never in the summary)."""

    where: str
    kind: str
    count: int
    reason: str
    basis: str
    law: str | None = None
    until: str | None = None
    until_latest: str | None = None
    hold_ids: list[int] = field(default_factory=list)
    fields_kept: list[str] = field(default_factory=list)
    fields_cleared: list[str] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("keys")
        return data


@dataclass
class ExcludedItem:
    """Rows an identity found that belong to someone else (left out, with what they own)."""

    where: str
    count: int
    reason: str
    keys: list[Any] = field(default_factory=list)


@dataclass
class GuardDecision:
    """The safety guard's verdict (see :mod:`governance.erasure.guard`)."""

    refused: bool = False
    reasons: list[str] = field(default_factory=list)
    overridden: bool = False
    max_table_share: float = 0.0
    min_rows: int = 0
    shares: dict[str, float] = field(default_factory=dict)


@dataclass
class ErasureWork:
    """Everything erasing one person does, as resolved primary keys, object keys and processor
    record ids, in the order it runs (database steps children before parents)."""

    plan_id: str
    request_id: str
    as_of: str
    business_id: int | None
    identity_kinds: list[str]
    datamap_version: str
    datamap_sha256: str
    database: list[DatabaseStep] = field(default_factory=list)
    objects: list[ObjectWork] = field(default_factory=list)
    processors: list[ProcessorWork] = field(default_factory=list)
    items: list[ItemWork] = field(default_factory=list)
    kept: list[KeptItem] = field(default_factory=list)
    excluded: list[ExcludedItem] = field(default_factory=list)
    ambiguities: list[dict[str, Any]] = field(default_factory=list)
    guard: GuardDecision = field(default_factory=GuardDecision)
    person_held: bool = False
    processors_skipped: list[str] = field(default_factory=list)
    out_of_scope_tables: list[str] = field(default_factory=list)
    # Params the database guard needs (the person's keys by parent param) are not needed: every
    # statement is keyed by primary keys. What verification must not count as residue:
    verification_exclude: dict[str, list[Any]] = field(default_factory=dict)

    # -- (de)serialisation ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErasureWork:
        values = dict(data)
        values["database"] = [DatabaseStep(**s) for s in values.get("database", [])]
        values["objects"] = [ObjectWork(**o) for o in values.get("objects", [])]
        values["processors"] = [ProcessorWork(**p) for p in values.get("processors", [])]
        values["items"] = [ItemWork(**i) for i in values.get("items", [])]
        values["kept"] = [KeptItem(**k) for k in values.get("kept", [])]
        values["excluded"] = [ExcludedItem(**e) for e in values.get("excluded", [])]
        values["guard"] = GuardDecision(**values.get("guard", {}))
        return cls(**values)

    # -- views ----------------------------------------------------------------------------------

    def steps_of(self, system: str) -> list[DatabaseStep]:
        return [s for s in self.database if s.system == system]

    @property
    def systems(self) -> list[str]:
        return list(dict.fromkeys(s.system for s in self.database))

    def table_counts(self) -> dict[str, dict[str, int]]:
        """``{"system.table": {effect: rows}}`` in execution order (counts only)."""
        counts: dict[str, dict[str, int]] = {}
        for step in self.database:
            counts.setdefault(f"{step.system}.{step.table}", {})[step.effect] = step.planned
        return counts

    def owned_rows_by_table(self) -> dict[str, int]:
        """Rows (DynamoDB items) of the person each table deletes or rewrites (mentions not included)."""
        totals: dict[str, int] = defaultdict(int)
        for step in self.database:
            if step.effect in OWNED_EFFECTS:
                totals[f"{step.system}.{step.table}"] += step.planned
        for item in self.items:  # DynamoDB items deleted whole: the person's own data
            if item.found:
                totals[item.where] += item.found
        return dict(totals)

    @property
    def has_changes(self) -> bool:
        return bool(
            any(s.planned for s in self.database)
            or any(o.keys or o.folders for o in self.objects)
            or any(p.record_ids for p in self.processors)
            or any(i.found for i in self.items)
        )

    def statements(self) -> list[dict[str, Any]]:
        """The database steps as they run: step id, rows and the SQL (placeholders only, never a
        value): what the dry run and the approval show."""
        return [{"step": s.step_id, "rows": s.planned, "sql": s.sql} for s in self.database]

    def summary(self) -> dict[str, Any]:
        """Counts and statements only: safe for XCom, task logs and the approval screen."""
        return {
            "plan_id": self.plan_id,
            "request_id": self.request_id,
            "as_of": self.as_of,
            "business_id": self.business_id,
            "identity_kinds": list(self.identity_kinds),
            "order": list(dict.fromkeys(f"{s.system}.{s.table}" for s in self.database)),
            "tables": self.table_counts(),
            # Objects actually present (listed) per prefix, their versions, and candidates with nothing
            # stored; before listing (present None) the candidates stand in.
            "objects": {f"{o.system}.{o.prefix}": o.candidates if o.present is None else o.present for o in self.objects},
            "object_versions": {f"{o.system}.{o.prefix}": o.versions for o in self.objects if o.versions is not None},
            "objects_absent": {f"{o.system}.{o.prefix}": o.absent for o in self.objects if o.absent},
            "processors": {p.processor: len(p.record_ids) for p in self.processors},
            "items": {i.where: i.found for i in self.items},
            "kept": [k.public() for k in self.kept],
            "excluded": [{"where": e.where, "count": e.count, "reason": e.reason} for e in self.excluded],
            "ambiguities": list(self.ambiguities),
            "person_held": self.person_held,
            "processors_skipped": list(self.processors_skipped),
            "out_of_scope_tables": list(self.out_of_scope_tables),
            "guard": asdict(self.guard),
            "statements": self.statements(),
        }


def approval_markdown(summary: Mapping[str, Any]) -> str:
    """The plan as the approver sees it in the Airflow UI (counts only, never an identity)."""
    lines = [
        f"**Erasure plan** `{summary['plan_id']}` for request `{summary['request_id']}` "
        f"(as of {summary['as_of']}; identities: {', '.join(summary['identity_kinds'])}"
        + (f"; only business {summary['business_id']}" if summary.get("business_id") else "")
        + ").",
        "",
        "| table | effect | rows |",
        "|---|---|---|",
    ]
    for table, effects in summary["tables"].items():
        for effect, rows in effects.items():
            lines.append(f"| {table} | {effect.replace('_', ' ')} | {rows} |")
    if summary["objects"]:
        versions = summary.get("object_versions") or {}
        lines += ["", "Objects deleted (every version): " + ", ".join(
            f"{k}: {v}" + (f" ({versions[k]} versions)" if k in versions else "") for k, v in summary["objects"].items())]
    if summary.get("objects_absent"):
        lines += ["", "Named by the map but not stored (nothing to delete): "
                  + ", ".join(f"{k}: {v}" for k, v in summary["objects_absent"].items())]
    if summary.get("items"):
        lines += ["", "DynamoDB items deleted (found by key or index Query): "
                  + ", ".join(f"{k}: {v}" for k, v in summary["items"].items())]
    if summary["processors"]:
        lines += ["", "Processor records erased: " + ", ".join(f"{k}: {v}" for k, v in summary["processors"].items())]
    if summary["kept"]:
        lines += ["", "**Kept:**"]
        for kept in summary["kept"]:
            until = kept["until"] or "until released"
            if kept.get("until_latest") and kept["until_latest"] != kept["until"]:
                until = f"{kept['until']} .. {kept['until_latest']}"
            lines.append(f"- {kept['where']}: {kept['count']} {kept['kind']} ({kept['reason'].replace('_', ' ')}, until {until})")
    if summary["excluded"]:
        lines += ["", "**Left out (another person's):** " + ", ".join(f"{e['where']}: {e['count']}" for e in summary["excluded"])]
    guard = summary["guard"]
    if guard.get("overridden"):
        lines += ["", "**The safety guard was overridden:** " + "; ".join(guard.get("reasons", []))]
    statements = [st for st in summary.get("statements", []) if st.get("rows") and st.get("sql")]
    if statements:
        lines += ["", "**Statements that run** (each keyed by the planned rows' primary keys, bound at run time):", "",
                  "```sql"] + [f"-- {st['step']} ({st['rows']} rows)\n{st['sql']};" for st in statements] + ["```"]  # fmt: skip
    lines += ["", "Approve only after the person's identity was verified; choose how below."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Building


def inventory_objects(work: ErasureWork, *, client_for: Callable[[str], Any]) -> None:
    """List, per prefix, what the object store really holds for the plan's candidate keys and
    request folders (``present``, ``versions``, ``absent`` on each :class:`ObjectWork`), so the
    plan and the approval show objects that exist, not keys computed from rows."""

    for item in work.objects:
        if not item.candidates:
            item.present, item.versions, item.absent = 0, 0, 0
            continue
        found = present_objects(client_for(item.system), item.bucket, item.keys, item.folders)
        item.present, item.versions, item.absent = found.objects, found.versions, found.absent


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _qualified(datamap: DataMap, ref: TableRef) -> str:
    """``schema.table``, the form legal holds name tables by."""
    return f"{datamap.postgres_system(ref.system).db_schema}.{ref.table}"


@dataclass
class _Held:
    holds: dict[int, LegalHold] = field(default_factory=dict)
    reason: str = LEGAL_HOLD


def _hold_rows(
    datamap: DataMap, resolution: SubjectResolution, holds: ActiveHolds
) -> tuple[dict[TableRef, dict[Any, _Held]], dict[int, dict[Any, _Held]]]:
    """Held rows per table, and held mention rows per mention index, with the holds behind them."""
    held: dict[TableRef, dict[Any, _Held]] = defaultdict(dict)
    held_mentions: dict[int, dict[Any, _Held]] = defaultdict(dict)
    stored_rows: dict[TableRef, dict[Any, dict[str, Any]]] = defaultdict(dict)  # held rows of stored tables

    def add(target: dict[Any, _Held], key: Any, hold_list: Iterable[LegalHold], reason: str = LEGAL_HOLD) -> bool:
        entry = target.get(key)
        new = entry is None
        if entry is None:
            entry = target[key] = _Held(reason=reason)
        for hold in hold_list:
            entry.holds.setdefault(hold.hold_id, hold)
        return new

    def direct(ref: TableRef, scope: Any) -> list[LegalHold]:
        found = list(holds.person)
        found += holds.tables.get(_qualified(datamap, ref), [])
        if scope is not None:
            found += holds.businesses.get(int(scope), [])
        return found

    # Direct holds, then down the ownership tree (parents come first in the plan's steps).
    for step in resolution.plan.steps:
        rows: TableRows = resolution.tables[step.table]
        parent_index = {
            n: _value_index(resolution.tables[edge.parent]) if edge.parent in resolution.tables else {}
            for n, edge in enumerate(rows.owned_via)
        }
        candidates: Iterable[tuple[Any, dict[str, Any]]] = rows.rows.items()
        if rows.stored is not None:  # only the stored rows a hold may reach are read back
            candidates = ((r[rows.primary_key], r) for r in _stored_hold_candidates(datamap, resolution, rows, holds, held))
        for key, row in candidates:
            if rows.stored is not None:
                stored_rows[step.table][key] = row
            found = direct(step.table, row.get(rows.scope_column) if rows.scope_column else None)
            if found:
                add(held[step.table], key, found)
            for n, edge in enumerate(rows.owned_via):
                parent_key = parent_index[n].get((edge.parent_field, row.get(edge.field)))
                parent_held = held.get(edge.parent, {}).get(parent_key) if parent_key is not None else None
                if parent_held is not None and parent_held.reason == LEGAL_HOLD:
                    add(held[step.table], key, parent_held.holds.values())
        if rows.stored is not None:
            kept = [k for k in stored_rows[step.table] if k in held.get(step.table, {})]
            stored_rows[step.table] = {k: stored_rows[step.table][k] for k in kept}
            rows.stored.mark_held(kept)
    for index, mention in enumerate(resolution.mentions):
        for key, row in mention.rows.items():
            scope = row.get(mention.scope_column) if mention.scope_column else None
            found = direct(mention.edge.child, scope)
            if found:
                add(held_mentions[index], key, found)

    # Up: whatever a held row still points at must stay, or its foreign key would break.
    changed = True
    while changed:
        changed = False
        pointers: list[tuple[TableRef, str, Any, _Held]] = []
        for ref, keyed in held.items():
            rows = resolution.tables[ref]
            for key, entry in keyed.items():
                row = stored_rows[ref][key] if rows.stored is not None else rows.rows[key]
                for edge in rows.owned_via:
                    pointers.append((edge.parent, edge.parent_field, row.get(edge.field), entry))
        for index, keyed in held_mentions.items():
            mention = resolution.mentions[index]
            for key, entry in keyed.items():
                pointers.append((mention.edge.parent, mention.edge.parent_field, mention.rows[key].get(mention.edge.field), entry))
        for parent, parent_field, value, entry in pointers:
            if value is None or parent not in resolution.tables:
                continue
            parent_key = _value_index(resolution.tables[parent]).get((parent_field, value))
            if parent_key is None:
                continue
            if add(held[parent], parent_key, entry.holds.values(), HELD_REFERENCE):
                changed = True
    return held, held_mentions


def _stored_hold_candidates(
    datamap: DataMap, resolution: SubjectResolution, rows: TableRows, holds: ActiveHolds,
    held: Mapping[TableRef, Mapping[Any, _Held]],
) -> Iterator[dict[str, Any]]:
    """The stored rows of ``rows`` a legal hold may keep (every row under a person or table hold;
    else those of a held business, or owned by a row a hold keeps), streamed from its key table:
    :func:`_hold_rows` then decides each exactly as for rows in memory."""
    assert rows.stored is not None
    if holds.person or holds.tables.get(_qualified(datamap, rows.table)):
        yield from rows.stored.rows_where(sql.SQL("TRUE"), {})
        return
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if rows.scope_column and holds.businesses:
        conditions.append(sql.SQL("{} = ANY(%(held_businesses)s)").format(sql.Identifier(rows.scope_column)))
        params["held_businesses"] = sorted(int(b) for b in holds.businesses)
    for n, edge in enumerate(rows.owned_via):
        parent = resolution.tables.get(edge.parent)
        values = sorted({parent.rows[k].get(edge.parent_field) for k, e in held.get(edge.parent, {}).items()
                         if e.reason == LEGAL_HOLD and k in parent.rows} - {None}, key=str) if parent else []  # fmt: skip
        if values:
            conditions.append(sql.SQL("{} = ANY({})").format(sql.Identifier(edge.field), sql.Placeholder(f"held_owner_{n}")))
            params[f"held_owner_{n}"] = values
    if conditions:
        yield from rows.stored.rows_where(sql.SQL("({})").format(sql.SQL(" OR ").join(conditions)), params)


def _value_index(rows: TableRows) -> dict[tuple[str, Any], Any]:
    index: dict[tuple[str, Any], Any] = {}
    for key, row in rows.rows.items():
        for column, value in row.items():
            if not column.startswith("__"):
                index.setdefault((column, value), key)
    return index


def _hold_item(where: str, kind: str, entries: Sequence[_Held], keys: list[Any], reason: str) -> KeptItem:
    holds: dict[int, LegalHold] = {}
    for entry in entries:
        holds.update(entry.holds)
    ends = [h.ends_at for h in holds.values()]
    open_ended = any(e is None for e in ends)
    dated = sorted(e for e in ends if e is not None)
    basis = "; ".join(
        f"legal hold {h.hold_id}" + (f" ({h.case_reference})" if h.case_reference else "") + f": {h.reason}"
        for h in sorted(holds.values(), key=lambda h: h.hold_id)
    )
    if reason == HELD_REFERENCE:
        basis = "still referenced by rows under " + basis
    return KeptItem(
        where=where, kind=kind, count=len(keys), reason=reason, basis=basis,
        until=None if open_ended or not dated else _iso(dated[-1]),
        until_latest=None if open_ended or not dated else _iso(dated[-1]),
        hold_ids=sorted(holds), keys=sorted(keys),
    )  # fmt: skip


def build_work(
    datamap: DataMap,
    erasure_plan: ErasurePlan,
    resolution: SubjectResolution,
    holds: ActiveHolds,
    *,
    plan_id: str,
    request_id: str,
    as_of: datetime,
    business_id: int | None,
    buckets: Mapping[str, str],
    request_folders: Mapping[PrefixRef, Sequence[str]] | None = None,
    processor_records: Mapping[str, Sequence[str]] | None = None,
) -> ErasureWork:
    """The plan of one person's erasure (see the module docstring).

    ``buckets`` maps object systems to their bucket; ``request_folders`` gives, per request-owned
    prefix, the folders of the person's requests; ``processor_records`` the record ids each
    processor's look-up returned (None: processors out of reach of this request).
    """
    work = ErasureWork(
        plan_id=plan_id, request_id=request_id, as_of=as_of.isoformat(), business_id=business_id,
        identity_kinds=list(resolution.plan.identity_kinds), datamap_version=datamap.version,
        datamap_sha256=datamap.version_hash,
    )  # fmt: skip
    work.person_held = bool(holds.person)
    work.out_of_scope_tables = [str(t) for t in resolution.plan.out_of_scope]
    work.ambiguities = [{"where": str(a.table), "business_id": a.scope, "rows": a.rows} for a in resolution.ambiguities]
    held, held_mentions = _hold_rows(datamap, resolution, holds)

    for ref, rows in resolution.tables.items():
        for reason in sorted(set(rows.excluded.values())):
            keys = sorted(k for k, r in rows.excluded.items() if r == reason)
            work.excluded.append(ExcludedItem(str(ref), len(keys), reason, keys))

    mention_index = {(m.edge.child, m.edge.field): i for i, m in enumerate(resolution.mentions)}
    deleted_or_rewritten: dict[TableRef, set[Any]] = defaultdict(set)
    deleted_mention_only: dict[int, set[Any]] = {}
    for order, statement in enumerate(erasure_plan.statements, start=1):
        ref = statement.table
        if statement.effect == "clear_mention" or statement.effect in MENTION_ONLY_EFFECTS:
            # Mention-only rows (the mention's orphan rule) are chosen exactly as the mentions are.
            index = mention_index.get((ref, statement.reference_field or statement.fields[0]))
            if index is None:
                continue
            mention = resolution.mentions[index]
            own = resolution.tables.get(ref)
            parent_rows = resolution.tables[mention.edge.parent]
            parent_held = held.get(mention.edge.parent, {})
            # Mentions of a held row stay as they are: the held row keeps its context.
            values = sorted({r[mention.edge.parent_field] for k, r in parent_rows.rows.items() if k not in parent_held} - {None})
            allowed = set(values)
            keys = [
                k for k in mention.keys
                if k not in held_mentions.get(index, {})
                and mention.rows[k].get(mention.edge.field) in allowed
                and not (own is not None and k in own.rows and k not in held.get(ref, {}))  # deleted anyway
            ]  # fmt: skip
            if statement.effect in MENTION_ONLY_EFFECTS:  # rows with an owner are that owner's
                owners = owner_fields(datamap.table(ref))
                keys = [k for k in keys if all(mention.rows[k].get(f) is None for f in owners)]
                if statement.effect == "delete_mention_only_rows":
                    deleted_mention_only[index] = set(keys)
            else:  # a deleted mention-only row has no reference left to clear
                keys = [k for k in keys if k not in deleted_mention_only.get(index, set())]
            left = [k for k in mention.keys if k not in held_mentions.get(index, {})
                    and mention.rows[k].get(mention.edge.field) not in allowed]  # fmt: skip
            if left and statement.effect == "clear_mention":
                work.kept.append(_hold_item(f"{ref}.{mention.edge.field}", "mentions",
                                            [parent_held[k] for k in parent_held], left, HELD_REFERENCE))  # fmt: skip
            work.database.append(DatabaseStep(order, ref.system, ref.table, statement.effect, keys, list(statement.fields),
                                              statement.reference_field, values, sql=statement.statement.text,
                                              statement_sha256=statement.statement.sha256))  # fmt: skip
            continue
        owned_rows = resolution.tables.get(ref)
        if owned_rows is None:
            continue
        rows = owned_rows
        if rows.stored is not None:  # a heavy leaf: its keys stay in its database (delete_rows only)
            if rows.stored.plan_id != plan_id:
                raise ValueError(f"{ref}: keys stored for plan {rows.stored.plan_id}, not {plan_id}")
            stored = statement.stored
            if statement.effect != "delete_rows" or stored is None:
                raise ValueError(f"{ref}: {statement.effect} cannot act on stored keys")
            work.database.append(DatabaseStep(order, ref.system, ref.table, statement.effect, [], list(statement.fields),
                                              sql=stored.text, statement_sha256=stored.sha256, key_set=plan_id,
                                              stored_rows=rows.stored.count - rows.stored.held))  # fmt: skip
            continue
        free = [k for k in rows.keys if k not in held.get(ref, {})]
        if statement.effect == "delete_expired_kept_rows":
            keys = [k for k in free if not rows.rows[k][STILL_KEPT]]
        elif statement.effect == "minimise_kept_rows":
            keys = [k for k in free if rows.rows[k][STILL_KEPT]]
            exception = datamap.legal_exception(statement.legal_exception or "")
            if keys and exception is not None:
                until = sorted(rows.rows[k][KEPT_UNTIL] for k in keys if rows.rows[k][KEPT_UNTIL] is not None)
                table = datamap.table(ref)
                work.kept.append(KeptItem(
                    where=str(ref), kind="rows", count=len(keys), reason=LEGAL_EXCEPTION, basis=exception.basis.strip(),
                    law=exception.law, until=_iso(until[0]) if until else None, until_latest=_iso(until[-1]) if until else None,
                    fields_kept=[f.name for f in table.fields if f.erasure_action is ErasureAction.keep],
                    fields_cleared=list(statement.fields), keys=keys,
                ))  # fmt: skip
        else:
            keys = free
        deleted_or_rewritten[ref].update(keys)
        work.database.append(DatabaseStep(order, ref.system, ref.table, statement.effect, keys, list(statement.fields),
                                          legal_exception=statement.legal_exception, sql=statement.statement.text,
                                          statement_sha256=statement.statement.sha256))  # fmt: skip

    # Kept because of holds: rows (per table and reason) and mentions left in place.
    for ref, keyed in held.items():
        for reason in (LEGAL_HOLD, HELD_REFERENCE):
            by_reason = {k: e for k, e in keyed.items() if e.reason == reason}
            if by_reason:
                work.kept.append(_hold_item(str(ref), "rows", list(by_reason.values()), list(by_reason), reason))
    for index, keyed in held_mentions.items():
        mention = resolution.mentions[index]
        work.kept.append(_hold_item(f"{mention.edge.child}.{mention.edge.field}", "mentions", list(keyed.values()),
                                    list(keyed), LEGAL_HOLD))  # fmt: skip

    # Objects: those of every erased row; those of held rows are kept with them.
    for step in resolution.plan.objects:
        source = resolution.tables.get(step.source)
        if source is None:
            continue
        erased_rows = [source.rows[k] for k in sorted(deleted_or_rewritten.get(step.source, set()))]
        held_rows = [source.rows[k] for k in held.get(step.source, {})]
        work.objects.append(ObjectWork(step.prefix.system, buckets[step.prefix.system], step.prefix.prefix,
                                       keys=step.keys_for(erased_rows)))  # fmt: skip
        held_keys = step.keys_for(held_rows)
        if held_keys:
            entries = list(held[step.source].values())
            work.kept.append(_hold_item(str(step.prefix), "objects", entries, held_keys, LEGAL_HOLD))
    for request_step in resolution.plan.request_objects:
        folders = list((request_folders or {}).get(request_step.prefix, []))
        if work.person_held:
            if folders:
                work.kept.append(_hold_item(str(request_step.prefix), "objects", [_Held({h.hold_id: h for h in holds.person})],
                                            folders, LEGAL_HOLD))  # fmt: skip
            folders = []
        work.objects.append(ObjectWork(request_step.prefix.system, buckets[request_step.prefix.system],
                                       request_step.prefix.prefix, folders=folders))  # fmt: skip

    # Processors.
    for processor_step in resolution.plan.processors:
        name = processor_step.processor
        if processor_records is None:
            work.processors_skipped.append(name)
            work.kept.append(KeptItem(name, "processor_records", 0, OUT_OF_SCOPE,
                                      "a request for one business client does not reach processors, which hold "
                                      "aircalls' own records of the person, not the business client's"))  # fmt: skip
            continue
        ids = sorted(processor_records.get(name, []))
        if work.person_held:
            if ids:
                work.kept.append(_hold_item(name, "processor_records", [_Held({h.hold_id: h for h in holds.person})], ids,
                                            LEGAL_HOLD))  # fmt: skip
            ids = []
        work.processors.append(ProcessorWork(name, ids))

    # What verification must not count as the person's residue: rows left out or kept.
    exclude: dict[str, set[Any]] = defaultdict(set)
    for item in work.excluded:
        exclude[item.where].update(item.keys)
    for ref, keyed in held.items():
        exclude[str(ref)].update(keyed)
    work.verification_exclude = {k: sorted(v) for k, v in exclude.items()}
    return work
