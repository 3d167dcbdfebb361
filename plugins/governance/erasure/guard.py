"""The safety guard: an erasure that looks broader than one person is refused before anything changes.

Two checks, each refusing the plan unless the run gives an explicit override:

* **Share of a table.** The person's own rows a plan deletes or rewrites in one table must not
  exceed ``max_table_share`` of the table (default 0.1%, ``GOVERNANCE_ERASURE_MAX_TABLE_SHARE``).
  Small tables would trip that with a single row, so a plan may always touch up to ``min_rows``
  rows of a table (default 1000, ``GOVERNANCE_ERASURE_GUARD_MIN_ROWS``). Mentions (a call the
  person handled, whose reference is cleared while the call stays) are not counted: they change
  one reference, never another person's data.
* **One person.** Several rows of one table in one business matching the identities equally well
  (a household phone shared by two callers) are refused: the request must name a narrower
  identity (the e-mail that tells them apart) or be overridden.

Table sizes come from the planner statistics (``pg_class.reltuples``) when present, so the guard
costs the same on a table of a thousand rows and one of a billion; without statistics a count is
taken, capped at the size that would make the plan acceptable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from governance.datamap.model import DataMap, TableRef
from governance.erasure.planner import ErasureWork, GuardDecision

DEFAULT_MAX_TABLE_SHARE = 0.001
DEFAULT_MIN_ROWS = 1000


class ErasureRefused(RuntimeError):
    """The plan was refused before any change; the message says what to do (counts only)."""


def guard_limits() -> tuple[float, int]:
    """(max share of a table, rows always allowed) from the environment, validated."""
    try:
        share = float(os.environ.get("GOVERNANCE_ERASURE_MAX_TABLE_SHARE", DEFAULT_MAX_TABLE_SHARE))
        min_rows = int(os.environ.get("GOVERNANCE_ERASURE_GUARD_MIN_ROWS", DEFAULT_MIN_ROWS))
    except ValueError:
        raise ValueError("GOVERNANCE_ERASURE_MAX_TABLE_SHARE must be a number and GOVERNANCE_ERASURE_GUARD_MIN_ROWS "
                         "a whole number") from None  # fmt: skip
    if not 0 < share <= 1 or min_rows < 0:
        raise ValueError("GOVERNANCE_ERASURE_MAX_TABLE_SHARE must be in (0, 1] and GOVERNANCE_ERASURE_GUARD_MIN_ROWS >= 0")
    return share, min_rows


def table_size_at_least(conn: psycopg.Connection[Any], datamap: DataMap, ref: TableRef, needed: int) -> int:
    """The table's size, or at least ``needed`` when it has that many rows: statistics first,
    else a count that stops at ``needed`` (cost bounded by the plan, not the table)."""
    schema = datamap.postgres_system(ref.system).db_schema
    row = conn.execute(
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, ref.table),
    ).fetchone()
    if row is not None and row[0] is not None and int(row[0]) > 0:
        return int(row[0])
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) AS capped").format(
        sql.Identifier(schema, ref.table), sql.Literal(int(needed))
    )
    counted = conn.execute(query).fetchone()
    return int(counted[0]) if counted else 0


def evaluate_guard(
    work: ErasureWork,
    table_sizes: Mapping[str, int],
    *,
    max_table_share: float,
    min_rows: int,
    override: bool,
) -> GuardDecision:
    """The verdict for ``work`` given table sizes (``system.table`` -> rows)."""
    decision = GuardDecision(max_table_share=max_table_share, min_rows=min_rows, overridden=False)
    for table, rows in sorted(work.owned_rows_by_table().items()):
        size = max(table_sizes.get(table, 0), rows)
        share = rows / size if size else 0.0
        decision.shares[table] = round(share, 6)
        if rows > max(min_rows, math.floor(max_table_share * size)):
            decision.reasons.append(
                f"{table}: {rows} of about {size} rows ({share:.2%}) is more than {max_table_share:.2%} of the table"
            )
    for ambiguity in work.ambiguities:
        decision.reasons.append(
            f"{ambiguity['where']}: {ambiguity['rows']} rows in business {ambiguity['business_id']} match the "
            "identities equally well (more than one person?)"
        )
    if decision.reasons:
        decision.refused = not override
        decision.overridden = override
    return decision


def needed_sizes(work: ErasureWork, max_table_share: float) -> dict[str, int]:
    """For each table the plan changes: the table size that would make the plan acceptable."""
    return {table: math.ceil(rows / max_table_share) + 1 for table, rows in work.owned_rows_by_table().items()}


def refusal_message(decision: GuardDecision) -> str:
    return (
        "erasure refused by the safety guard before any change: " + "; ".join(decision.reasons)
        + ". Name a narrower identity (the e-mail as well as a shared phone, or business_id), or, after review, "
        "trigger again with override_guard on."
    )
