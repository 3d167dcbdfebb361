"""Where one person's rows are, for erasure: the shared resolution plus keyed-hash matching.

Resolution narrowed to exactly one person (the narrowing rule, ambiguities, legal-exception
columns) lives in :mod:`governance.resolution`, shared with the export so both agree on who the
person is; its names are re-exported here for erasure's modules. What only erasure needs stays
here: :class:`MatchByKeyedHash`, the values that find a person known only by the keyed hashes of
the suppression list (after a restore), for a resolution plan built with
``matching="keyed_hash"``: the plan's scans stream each identity column here, where the values are
hashed (the key never reaches the database), and the rows whose digest is the person's are bound
by primary key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from governance.datamap.model import TableRef
from governance.datamap.plans import (
    CREATED_BEFORE,
    ClientKeyedHash,
    KeyedHashScan,
    Matching,
    keyed_hash_domain,
    planned_keys_param,
)
from governance.resolution import (
    ABSENT,
    DIFFERS,
    EXCLUDED_BY_PLAN,
    FEWER_IDENTITIES,
    KEPT_UNTIL,
    MATCHES,
    OTHER_IDENTITY,
    STILL_KEPT,
    Ambiguity,
    IdentityMatcher,
    MatchByIdentity,
    MentionRows,
    SubjectResolution,
    TableRows,
    _narrow,
    resolve_subject,
)

__all__ = [
    "ABSENT",
    "DIFFERS",
    "EXCLUDED_BY_PLAN",
    "FEWER_IDENTITIES",
    "KEPT_UNTIL",
    "MATCHES",
    "OTHER_IDENTITY",
    "STILL_KEPT",
    "Ambiguity",
    "IdentityMatcher",
    "MatchByBusiness",
    "MatchByIdentity",
    "MatchByKeyedHash",
    "MentionRows",
    "SubjectResolution",
    "TableRows",
    "_narrow",
    "resolve_subject",
]


class MatchByKeyedHash(IdentityMatcher):
    """Keyed hashes of the person's identities (stored on the suppression list), compared with
    hashes of the columns computed here from ``pads`` (:func:`keyed_hash_params`; never bound to a
    statement). ``created_before`` limits identity matches to rows recorded before the erasure (a
    table without a record-time column is limited to ``planned_keys``, the keys an earlier erasure
    removed)."""

    scan_rows_per_fetch = 5000

    matching: Matching = "keyed_hash"

    def __init__(
        self,
        hashes: Mapping[str, Sequence[str]],
        pads: Mapping[str, bytes],
        *,
        created_before: datetime,
        planned_keys: Mapping[TableRef, Sequence[Any]] | None = None,
    ) -> None:
        self.hashes = {k: list(v) for k, v in hashes.items() if v}
        self.pads = dict(pads)
        self.created_before = created_before
        self.planned_keys = {k: list(v) for k, v in (planned_keys or {}).items()}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self.hashes))

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {CREATED_BEFORE: self.created_before}
        for ref, keys in self.planned_keys.items():
            params[planned_keys_param(ref)] = keys
        return params

    def matched_keys(self, conn: psycopg.Connection[Any], scan: KeyedHashScan) -> list[Any]:
        """Stream ``scan`` (a server-side cursor inside a transaction, so memory stays flat) and
        return the keys whose value's digest is one of the person's, in key order."""
        wanted = set(self.hashes.get(scan.column.kind, ()))
        if not wanted:
            return []
        digest = ClientKeyedHash(self.pads, domain=keyed_hash_domain(scan.column.kind))
        query, params = scan.statement.query, scan.statement.bind({})
        found: list[Any] = []
        if conn.autocommit:  # no transaction for a server-side cursor: single-row mode instead
            for key, value in conn.cursor().stream(query, params):
                if digest(value) in wanted:
                    found.append(key)
        else:
            with conn.cursor(name="governance_keyed_hash_scan") as cursor:
                cursor.itersize = self.scan_rows_per_fetch
                for key, value in cursor.execute(query, params):
                    if digest(value) in wanted:
                        found.append(key)
        return sorted(found)

    def __repr__(self) -> str:
        return f"MatchByKeyedHash(<{','.join(self.kinds)}>)"


class MatchByBusiness(IdentityMatcher):
    """No identity: a business plan's statements bind only the business id (``scope_ids``)."""

    matching: Matching = "business"

    @property
    def kinds(self) -> tuple[str, ...]:
        return ()

    def params(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "MatchByBusiness()"
