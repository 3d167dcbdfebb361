"""The suppression list: who was erased (keyed hashes only) and when; re-erasure after a restore.

An erasure records the keyed hash of each of the person's identities with the erasure time
(``governance.suppression_list``). A database or bucket restored from a backup brings the person
back; :func:`reapply` erases them again, by matching keyed hashes computed in SQL against the list:

* only rows recorded before the erasure match (each identity table's record-time column, or,
  for a table without one, the keys the erasure removed), so someone who came back afterwards as
  a new customer keeps the new account;
* rows owned by those rows go with them, mentions are cleared (mention-only rows follow their
  mention's `orphan` rule), legal exceptions and legal holds
  apply exactly as in the erasure itself (the same planner and executor);
* the objects the erasure deleted are deleted again, all versions (a restored bucket), as are the
  objects of the rows found again.

Narrowing applies too: a restored row that carries another person's identity, or ties with
another row of the same business, is left alone unless the original erasure was overridden.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from governance.crypto import IdentityHasher
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import build_erasure_plan, build_resolution_plan, keyed_hash_params
from governance.erasure.executor import approved_statements, delete_planned_objects, run_database_steps
from governance.erasure.holds import load_active_holds
from governance.erasure.planner import OWNED_EFFECTS, ErasureWork, build_work
from governance.erasure.resolve import MatchByKeyedHash, resolve_subject
from governance.identity import SubjectIdentities
from governance.resolution import plan_systems, system_snapshots

log = logging.getLogger(__name__)


def record_suppression(
    conn: psycopg.Connection[Any],
    *,
    request_id: str,
    identities: SubjectIdentities,
    hasher: IdentityHasher,
    business_id: int | None,
    erased_at: datetime,
    at: datetime,
) -> int:
    """Add (or move forward) the person's entries; returns how many identities were recorded."""
    written = 0
    for kind, value in identities.items():
        conn.execute(
            """
            INSERT INTO governance.suppression_list
                (identity_kind, subject_hash, hash_key_id, business_id, erased_at, request_id, recorded_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (identity_kind, subject_hash, hash_key_id, COALESCE(business_id, 0)) DO UPDATE
               SET erased_at = GREATEST(governance.suppression_list.erased_at, EXCLUDED.erased_at),
                   request_id = CASE WHEN EXCLUDED.erased_at >= governance.suppression_list.erased_at
                                     THEN EXCLUDED.request_id ELSE governance.suppression_list.request_id END,
                   recorded_at = EXCLUDED.recorded_at
            """,
            (kind, hasher.hash(kind, value), hasher.key_id, business_id, erased_at, request_id, at),
        )
        written += 1
    return written


@dataclass
class SuppressedPerson:
    """One erased person as the list knows them: hashes per kind, under one key."""

    request_id: str
    hash_key_id: str
    business_id: int | None
    erased_at: datetime
    hashes: dict[str, list[str]] = field(default_factory=dict)


def suppressed_people(conn: psycopg.Connection[Any], request_id: str | None = None) -> list[SuppressedPerson]:
    """Entries grouped by the request that erased them (one request is one person)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT identity_kind, subject_hash, hash_key_id, business_id, erased_at, request_id"
            " FROM governance.suppression_list WHERE %(r)s::text IS NULL OR request_id = %(r)s"
            " ORDER BY request_id, identity_kind",
            {"r": request_id},
        ).fetchall()
    people: dict[tuple[str, str, int | None], SuppressedPerson] = {}
    for row in rows:
        key = (row["request_id"], row["hash_key_id"], row["business_id"])
        person = people.setdefault(key, SuppressedPerson(row["request_id"], row["hash_key_id"], row["business_id"], row["erased_at"]))
        person.erased_at = max(person.erased_at, row["erased_at"])
        person.hashes.setdefault(row["identity_kind"], []).append(row["subject_hash"])
    return list(people.values())


def _earlier_plans(conn: psycopg.Connection[Any], request_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT plan, guard_override FROM governance.erasure_plans WHERE request_id = %s"
            " AND status IN ('executing', 'executed', 'verified', 'verification_failed') ORDER BY created_at",
            (request_id,),
        ).fetchall()


def reapply_for_person(
    datamap: DataMap,
    person: SuppressedPerson,
    *,
    app_conninfo: Callable[[str], str],
    governance_conn: psycopg.Connection[Any],
    hash_key: bytes,
    object_client: Callable[[str], Any],
    buckets: Mapping[str, str],
    as_of: datetime,
    dry_run: bool,
) -> dict[str, Any]:
    """Erase again what a restore brought back of ``person``; counts only."""
    earlier = _earlier_plans(governance_conn, person.request_id)
    planned_keys: dict[TableRef, list[Any]] = defaultdict(list)
    planned_objects: dict[tuple[str, str], set[str]] = defaultdict(set)
    overridden = False
    for row in earlier:
        old = ErasureWork.from_json(row["plan"])
        overridden = overridden or bool(row["guard_override"])
        for step in old.database:
            if step.effect in OWNED_EFFECTS:
                planned_keys[step.ref] += step.keys
        for item in old.objects:
            planned_objects[(item.system, item.prefix)].update(item.keys)
    plan = build_resolution_plan(datamap, sorted(person.hashes), business_scope=person.business_id is not None,
                                 matching="keyed_hash")  # fmt: skip
    erasure_plan = build_erasure_plan(datamap, plan)
    matcher = MatchByKeyedHash(
        person.hashes, keyed_hash_params(hash_key), created_before=person.erased_at, planned_keys=planned_keys,
    )  # fmt: skip
    result: dict[str, Any] = {"request_id": person.request_id, "rows": {}, "objects": 0, "kept": [], "skipped": None}
    work: ErasureWork | None = None
    systems = plan_systems(plan)
    if not systems:
        return result
    with system_snapshots(datamap, systems, app_conninfo, read_only=False, application_name="governance-reapply") as dbs:
        resolution = resolve_subject(
            dbs, datamap, plan, matcher, as_of=as_of,
            scope_ids=[person.business_id] if person.business_id is not None else None,
        )  # fmt: skip
        if resolution.ambiguities and not overridden:
            result["skipped"] = "ambiguous: several rows of one business match equally well; erase by request instead"
            return result
        holds = load_active_holds(
            governance_conn, as_of=as_of,
            subject_hashes=[(k, person.hash_key_id, h) for k, hs in person.hashes.items() for h in hs],
        )  # fmt: skip
        work = build_work(
            datamap, erasure_plan, resolution, holds, plan_id="epl-" + "0" * 20, request_id=person.request_id,
            as_of=as_of, business_id=person.business_id, buckets=buckets, request_folders={}, processor_records={},
        )  # fmt: skip
        result["rows"] = {k: sum(v.values()) for k, v in work.table_counts().items() if sum(v.values())}
        result["kept"] = [k.public() for k in work.kept]
        if not dry_run:
            statements = approved_statements(datamap, work)
            rows: dict[str, int] = defaultdict(int)
            for system_name in work.systems:  # one transaction per database, children's first
                conn = dbs[system_name]
                affected = run_database_steps(
                    conn, statements, work.steps_of(system_name), batch_size=datamap.settings.erasure_batch_size,
                    keyed_hash_pads=keyed_hash_params(hash_key),
                )  # fmt: skip
                conn.commit()
                for step in work.steps_of(system_name):
                    rows[f"{step.system}.{step.table}"] += affected.get(step.step_id, 0)
            result["rows"] = {k: v for k, v in rows.items() if v}
    if work is None:
        return result
    if work.person_held:
        return result
    for item in work.objects:  # a restored bucket: what the erasure deleted comes back too
        item.keys = sorted(set(item.keys) | planned_objects.get((item.system, item.prefix), set()))
    if dry_run:
        result["objects"] = sum(len(o.keys) for o in work.objects)
    else:
        result["objects"] = sum(delete_planned_objects(work, client_for=object_client).values())
    return result
