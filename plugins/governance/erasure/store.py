"""Persistence of erasure plans and their per-step progress (``governance.erasure_plans``,
``governance.erasure_progress``).

A plan is persisted before anything changes and carried through its statuses::

    planned -> approved -> executing -> executed -> verified | verification_failed
    planned -> refused | superseded

A request has at most one plan ``approved`` or ``executing`` (a partial unique index): a retried
task, a cleared run or a new run for the same request continues that plan, skipping every step
recorded as done, instead of planning again from data that is already half erased.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from governance.erasure.planner import ErasureWork

CONTINUABLE = ("approved", "executing")


class PlanNotFound(LookupError):
    pass


def plan_id_for(request_id: str, dag_run_id: str) -> str:
    """The id of the plan a run makes for a request (a retried plan task finds the same one)."""
    return "epl-" + hashlib.sha256(f"{request_id}\x00{dag_run_id}".encode()).hexdigest()[:20]


def continuable_plan(conn: psycopg.Connection[Any], request_id: str) -> dict[str, Any] | None:
    """The request's plan being carried out (approved or executing), if any."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM governance.erasure_plans WHERE request_id = %s AND status = ANY(%s)",
            (request_id, list(CONTINUABLE)),
        ).fetchone()


def save_plan(
    conn: psycopg.Connection[Any],
    work: ErasureWork,
    *,
    status: str,
    dag_id: str,
    dag_run_id: str,
    dry_run: bool,
    as_of: datetime,
    override: bool,
    refusal: str | None,
    at: datetime,
) -> None:
    """Insert the plan, or replace one this run made earlier that nothing has acted on yet."""
    conn.execute(
        """
        INSERT INTO governance.erasure_plans (plan_id, request_id, dag_id, dag_run_id, status, dry_run, as_of,
            guard_override, refusal, datamap_version, datamap_sha256, summary, plan, created_at, updated_at)
        VALUES (%(plan_id)s, %(request_id)s, %(dag_id)s, %(dag_run_id)s, %(status)s, %(dry_run)s, %(as_of)s,
            %(override)s, %(refusal)s, %(version)s, %(sha)s, %(summary)s, %(plan)s, %(at)s, %(at)s)
        ON CONFLICT (plan_id) DO UPDATE SET status = EXCLUDED.status, dry_run = EXCLUDED.dry_run,
            as_of = EXCLUDED.as_of, guard_override = EXCLUDED.guard_override, refusal = EXCLUDED.refusal,
            datamap_version = EXCLUDED.datamap_version, datamap_sha256 = EXCLUDED.datamap_sha256,
            summary = EXCLUDED.summary, plan = EXCLUDED.plan, updated_at = EXCLUDED.updated_at
        WHERE governance.erasure_plans.status IN ('planned', 'refused', 'superseded')
        """,
        {
            "plan_id": work.plan_id, "request_id": work.request_id, "dag_id": dag_id, "dag_run_id": dag_run_id,
            "status": status, "dry_run": dry_run, "as_of": as_of, "override": override, "refusal": refusal,
            "version": work.datamap_version, "sha": work.datamap_sha256 or "-", "summary": Jsonb(work.summary()),
            "plan": Jsonb(work.to_json()), "at": at,
        },
    )  # fmt: skip


def supersede_planned(conn: psycopg.Connection[Any], request_id: str, *, keep: str, at: datetime) -> int:
    """Mark the request's other plans that were only planned as superseded."""
    cur = conn.execute(
        "UPDATE governance.erasure_plans SET status = 'superseded', updated_at = %s"
        " WHERE request_id = %s AND plan_id <> %s AND status = 'planned'",
        (at, request_id, keep),
    )
    return cur.rowcount


def load_plan(conn: psycopg.Connection[Any], plan_id: str) -> tuple[ErasureWork, dict[str, Any]]:
    """The plan and its row (status, dates, verification)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    if row is None:
        raise PlanNotFound(f"no erasure plan {plan_id}")
    return ErasureWork.from_json(row["plan"]), row


def latest_plan_for_run(conn: psycopg.Connection[Any], request_id: str, dag_run_id: str) -> dict[str, Any] | None:
    """The plan a run worked on: the one it made, or the one it continued."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """
            SELECT p.* FROM governance.erasure_plans p
             WHERE p.request_id = %(r)s AND (p.dag_run_id = %(run)s OR p.plan_id = (
                   SELECT plan_id FROM governance.erasure_progress pr WHERE pr.step = %(marker)s LIMIT 1))
             ORDER BY (p.dag_run_id = %(run)s) DESC, p.updated_at DESC LIMIT 1
            """,
            {"r": request_id, "run": dag_run_id, "marker": f"run:{dag_run_id}"},
        ).fetchone()


def set_status(
    conn: psycopg.Connection[Any], plan_id: str, status: str, *, at: datetime, only_from: tuple[str, ...] | None = None,
    **columns: Any,
) -> bool:
    """Move a plan to ``status`` (optionally only from some statuses), setting extra columns."""
    allowed = {"approved_at", "approved_by", "executed_at", "verified_at", "verification", "refusal"}
    unknown = set(columns) - allowed
    if unknown:
        raise ValueError(f"cannot set {sorted(unknown)} on a plan")
    sets = [sql.SQL("status = {}").format(sql.Placeholder("status")), sql.SQL("updated_at = {}").format(sql.Placeholder("at"))]
    sets += [sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in columns]
    values: dict[str, Any] = {k: (Jsonb(v) if k == "verification" else v) for k, v in columns.items()}
    values.update(plan_id=plan_id, status=status, at=at, only=list(only_from or ()))
    query = sql.SQL("UPDATE governance.erasure_plans SET {} WHERE plan_id = {}{}").format(
        sql.SQL(", ").join(sets),
        sql.Placeholder("plan_id"),
        sql.SQL(" AND status = ANY({})").format(sql.Placeholder("only")) if only_from else sql.SQL(""),
    )
    return conn.execute(query, values).rowcount == 1


def progress(conn: psycopg.Connection[Any], plan_id: str) -> dict[str, dict[str, Any]]:
    """Steps done: ``{step: {"affected", "detail", "completed_at"}}``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT step, affected, detail, completed_at FROM governance.erasure_progress WHERE plan_id = %s", (plan_id,)
        ).fetchall()
    return {r["step"]: {"affected": int(r["affected"]), "detail": r["detail"], "completed_at": r["completed_at"]} for r in rows}


def record_progress(
    conn: psycopg.Connection[Any], plan_id: str, step: str, *, affected: int, at: datetime,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record a step as done (first record wins: a repeated step never overwrites its count)."""
    conn.execute(
        "INSERT INTO governance.erasure_progress (plan_id, step, affected, detail, completed_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (plan_id, step) DO NOTHING",
        (plan_id, step, max(0, int(affected)), Jsonb(dict(detail or {})), at),
    )


def record_progress_many(
    conn: psycopg.Connection[Any], plan_id: str, steps: Mapping[str, tuple[int, Mapping[str, Any]]], *, at: datetime
) -> None:
    """Record several steps as done in one statement (``{step: (affected, detail)}``)."""
    if not steps:
        return
    names = list(steps)
    conn.execute(
        "INSERT INTO governance.erasure_progress (plan_id, step, affected, detail, completed_at)"
        " SELECT %s, u.step, u.affected, u.detail::jsonb, %s"
        " FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS u(step, affected, detail)"
        " ON CONFLICT (plan_id, step) DO NOTHING",
        (plan_id, at, names, [max(0, int(steps[n][0])) for n in names],
         [json.dumps(dict(steps[n][1]), default=str) for n in names]),
    )  # fmt: skip


def latest_dry_run_summary(conn: psycopg.Connection[Any], request_id: str, *, other_than: str) -> dict[str, Any] | None:
    """The summary of the request's newest dry-run plan other than ``other_than`` (None: no dry run)."""
    row = conn.execute(
        "SELECT summary FROM governance.erasure_plans WHERE request_id = %s AND dry_run AND plan_id <> %s"
        " ORDER BY created_at DESC LIMIT 1",
        (request_id, other_than),
    ).fetchone()
    return dict(row[0]) if row else None


def last_work_at(conn: psycopg.Connection[Any], request_id: str) -> datetime | None:
    """When a run last did erasure work on the request: a step recorded as done, or a plan being
    carried out changing status (a run's own ``run:`` marker is not work). A claim whose holder
    has done nothing for long is stale (:mod:`governance.erasure.claims`)."""
    row = conn.execute(
        """
        SELECT greatest(
            (SELECT max(updated_at) FROM governance.erasure_plans
              WHERE request_id = %(r)s AND status IN ('executing', 'executed', 'verified', 'verification_failed')),
            (SELECT max(pr.completed_at) FROM governance.erasure_progress pr
               JOIN governance.erasure_plans p USING (plan_id)
              WHERE p.request_id = %(r)s AND pr.step NOT LIKE 'run:%%'))
        """,
        {"r": request_id},
    ).fetchone()
    return row[0] if row else None
