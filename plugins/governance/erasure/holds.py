"""Legal holds in force at a point in time (``governance.legal_holds``).

A hold keeps data that erasure (and retention) would otherwise remove, and wins over everything:

* ``person``: found by the keyed hash of one identity (under any key in the ring): nothing of the
  person is erased; the plan and the certificate say why;
* ``business``: rows collected for that business client (its scope column) are kept, with what
  they own;
* ``table``: ``schema.table`` is not touched at all (not even a mention is cleared).

A hold is in force from ``starts_at`` until ``ends_at`` or ``released_at``, whichever comes first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row


@dataclass(frozen=True)
class LegalHold:
    """One hold in force (its reason is written by legal staff, never personal data of the subject)."""

    hold_id: int
    scope: str
    reason: str
    case_reference: str | None
    ends_at: datetime | None
    business_id: int | None = None
    table_name: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "scope": self.scope,
            "reason": self.reason,
            "case_reference": self.case_reference,
            "until": self.ends_at.isoformat() if self.ends_at else None,
        }


@dataclass
class ActiveHolds:
    """The holds bearing on one erasure."""

    person: list[LegalHold] = field(default_factory=list)
    businesses: dict[int, list[LegalHold]] = field(default_factory=lambda: defaultdict(list))
    tables: dict[str, list[LegalHold]] = field(default_factory=lambda: defaultdict(list))

    @property
    def any(self) -> bool:
        return bool(self.person or self.businesses or self.tables)


def load_active_holds(
    conn: psycopg.Connection[Any],
    *,
    as_of: datetime,
    subject_hashes: Iterable[tuple[str, str, str]],
) -> ActiveHolds:
    """Holds in force at ``as_of``: person holds matching one of ``subject_hashes`` (``(identity
    kind, hash key id, hash)``, one per key in the ring), and every business and table hold."""
    kinds: list[str] = []
    key_ids: list[str] = []
    digests: list[str] = []
    for kind, key_id, digest in subject_hashes:
        kinds.append(kind)
        key_ids.append(key_id)
        digests.append(digest)
    holds = ActiveHolds()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT h.hold_id, h.scope, h.reason, h.case_reference, h.business_id, h.table_name,
                   LEAST(h.ends_at, h.released_at) AS ends_at
              FROM governance.legal_holds h
             WHERE h.starts_at <= %(as_of)s
               AND (h.ends_at IS NULL OR h.ends_at > %(as_of)s)
               AND (h.released_at IS NULL OR h.released_at > %(as_of)s)
               AND (h.scope <> 'person' OR EXISTS (
                     SELECT 1 FROM unnest(%(kinds)s::text[], %(key_ids)s::text[], %(digests)s::text[]) AS s(kind, key_id, digest)
                      WHERE s.kind = h.identity_kind AND s.key_id = h.hash_key_id AND s.digest = h.subject_hash))
             ORDER BY h.hold_id
            """,
            {"as_of": as_of, "kinds": kinds, "key_ids": key_ids, "digests": digests},
        ).fetchall()
    for row in rows:
        hold = LegalHold(
            hold_id=int(row["hold_id"]), scope=row["scope"], reason=row["reason"], case_reference=row["case_reference"],
            ends_at=row["ends_at"], business_id=row["business_id"], table_name=row["table_name"],
        )  # fmt: skip
        if hold.scope == "person":
            holds.person.append(hold)
        elif hold.scope == "business" and hold.business_id is not None:
            holds.businesses[int(hold.business_id)].append(hold)
        elif hold.table_name:
            holds.tables[hold.table_name].append(hold)
    return holds


def subject_hashes(hasher: Any, identities: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(kind, key id, hash)`` of each identity under every key of ``hasher``'s ring."""
    out: list[tuple[str, str, str]] = []
    for kind, value in identities:
        for key_id, digest in hasher.lookup_hashes(kind, value).items():
            out.append((kind, key_id, digest))
    return out
