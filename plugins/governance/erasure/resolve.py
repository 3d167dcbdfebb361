"""Where one person's rows are, for erasure: the shared resolution plus keyed-hash matching.

Resolution narrowed to exactly one person (the narrowing rule, ambiguities, legal-exception
columns) lives in :mod:`governance.resolution`, shared with the export so both agree on who the
person is; its names are re-exported here for erasure's modules. What only erasure needs stays
here: :class:`MatchByKeyedHash`, the values that find a person known only by the keyed hashes of
the suppression list (after a restore), for a resolution plan built with
``matching="keyed_hash"`` (the plan computes the hashes of the columns in SQL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from governance.datamap.model import TableRef
from governance.datamap.plans import (
    CREATED_BEFORE,
    KEYED_HASH_INNER,
    KEYED_HASH_OUTER,
    Matching,
    keyed_hash_domain,
    keyed_hash_domain_param,
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
    hashes of the columns computed in SQL. ``created_before`` limits identity matches to rows
    recorded before the erasure (a table without a record-time column is limited to
    ``planned_keys``, the keys an earlier erasure removed)."""

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
        params: dict[str, Any] = {
            KEYED_HASH_OUTER: self.pads[KEYED_HASH_OUTER],
            KEYED_HASH_INNER: self.pads[KEYED_HASH_INNER],
            CREATED_BEFORE: self.created_before,
        }
        for kind, digests in self.hashes.items():
            params[f"kh_{kind}"] = digests
            params[keyed_hash_domain_param(kind)] = keyed_hash_domain(kind)
        for ref, keys in self.planned_keys.items():
            params[planned_keys_param(ref)] = keys
        return params

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
