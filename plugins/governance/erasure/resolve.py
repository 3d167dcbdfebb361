"""Where one person's rows are, for erasure: the shared resolution plus keyed-hash matching.

Resolution narrowed to exactly one person (the narrowing rule, ambiguities, legal-exception
columns) lives in :mod:`governance.resolution`, shared with the export so both agree on who the
person is; its names are re-exported here for erasure's modules. What only erasure needs stays
here: :class:`MatchByKeyedHash`, which finds a person known only by the keyed hashes of the
suppression list (after a restore), computing the hashes of the columns in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import sql

from governance.datamap.graph import IdentityColumn
from governance.datamap.model import DataMap, TableRef, TableSpec
from governance.datamap.plans import identity_expression
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
    "MatchByIdentity",
    "MatchByKeyedHash",
    "MentionRows",
    "SubjectResolution",
    "TableRows",
    "_narrow",
    "keyed_hash_of_column_sql",
    "resolve_subject",
]


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
