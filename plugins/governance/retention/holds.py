"""Legal holds as the values the retention statements bind.

* ``table`` holds: ``held_tables`` (``schema.table`` names): nothing of the table is changed;
* ``business`` holds: ``held_scope_ids``: rows collected for the business (its scope column);
* ``person`` holds: the person's rows found by keyed hash (identity columns hashed in SQL, as the
  suppression list is matched) and what they own, as ``held_keys__<system>__<table>``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from governance.crypto import hasher_from_airflow
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import (
    HELD_SCOPE_IDS,
    RETENTION_HELD_TABLES,
    build_resolution_plan,
    held_keys_param,
    keyed_hash_params,
)
from governance.erasure.resolve import MatchByKeyedHash, resolve_subject

_EVERYTHING = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PersonHold:
    """A hold on one person, known by the keyed hash of one identity."""

    hold_id: int
    identity_kind: str
    hash_key_id: str
    subject_hash: str = field(repr=False)


@dataclass
class RetentionHolds:
    """Holds in force at the sweep's ``as_of``, ready to bind."""

    tables: set[str] = field(default_factory=set)
    businesses: set[int] = field(default_factory=set)
    keys: dict[TableRef, set[Any]] = field(default_factory=lambda: defaultdict(set))
    count: int = 0
    # Person holds as keyed hashes: DynamoDB items are matched by hashing their partition key.
    persons: list[PersonHold] = field(default_factory=list)

    def values(self, tables: Any) -> dict[str, Any]:
        """Bind values for a statement touching ``tables`` (TableRefs)."""
        out: dict[str, Any] = {RETENTION_HELD_TABLES: sorted(self.tables), HELD_SCOPE_IDS: sorted(self.businesses)}
        for ref in tables:
            out[held_keys_param(ref)] = sorted(self.keys.get(ref, set()))
        return out


    def touch(self, datamap: DataMap, ref: TableRef) -> bool:
        """Whether some hold could keep a row of ``ref``: a hold on the table, on a business
        (where the table has a business column) or on a person with rows in it."""
        schema = datamap.postgres_system(ref.system).db_schema
        return (
            f"{schema}.{ref.table}" in self.tables
            or bool(self.keys.get(ref))
            or (datamap.table(ref).scope_column is not None and bool(self.businesses))
        )


def load_holds(gov: psycopg.Connection[Any], datamap: DataMap, *, as_of: datetime) -> tuple[RetentionHolds, list[PersonHold]]:
    """Every business, table and person hold in force at ``as_of`` (person holds still need
    :func:`resolve_person_holds` against each app database)."""
    with gov.cursor() as cur:
        rows = cur.execute(
            """
            SELECT hold_id, scope, reason, case_reference, business_id, table_name, identity_kind, hash_key_id,
                   subject_hash, LEAST(ends_at, released_at) AS ends_at
              FROM governance.legal_holds
             WHERE starts_at <= %(as_of)s
               AND (ends_at IS NULL OR ends_at > %(as_of)s)
               AND (released_at IS NULL OR released_at > %(as_of)s)
             ORDER BY hold_id
            """,
            {"as_of": as_of},
        ).fetchall()
    holds = RetentionHolds(count=len(rows))
    persons: list[PersonHold] = []
    for hold_id, scope, _reason, _case, business_id, table_name, kind, key_id, digest, _ends_at in rows:
        if scope == "table" and table_name:
            holds.tables.add(table_name)
        elif scope == "business" and business_id is not None:
            holds.businesses.add(int(business_id))
        elif scope == "person":
            persons.append(PersonHold(int(hold_id), kind, key_id, digest))
    holds.persons = list(persons)
    return holds, persons


def resolve_person_holds(
    conns: Mapping[str, psycopg.Connection[Any]], datamap: DataMap, holds: RetentionHolds, persons: list[PersonHold]
) -> None:
    """Add the primary keys of each held person's rows (and what they own) in every database
    (``conns``: one connection per system, keys found in one carried to the next)."""
    if not persons:
        return

    keyring = hasher_from_airflow().keyring
    for hold in persons:
        kind, key_id, digest = hold.identity_kind, hold.hash_key_id, hold.subject_hash
        plan = build_resolution_plan(datamap, [kind], matching="keyed_hash")
        if not plan.steps:
            continue
        matcher = MatchByKeyedHash({kind: [digest]}, keyed_hash_params(keyring.key(key_id)), created_before=_EVERYTHING)
        resolution = resolve_subject(conns, datamap, plan, matcher, narrow=False)
        for ref, rows in resolution.tables.items():
            holds.keys[ref].update(rows.rows)
    for conn in conns.values():
        conn.rollback()


__all__ = ["PersonHold", "RetentionHolds", "load_holds", "resolve_person_holds"]
