"""Shared helpers of the erasure tests (no tests here): a module-scoped clone of the reference
deployment, snapshots of everyone's data, and the erasure workflow run task by task."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment, cloned_deployment

APP_TABLES = (
    "businesses", "users", "callers", "calls", "messages", "appointments", "support_tickets", "payments",
    "marketing_preferences", "usage_events",
)  # fmt: skip
PK = {"marketing_preferences": "user_id"}
APPROVAL = {
    "chosen_options": ["Approve"],
    "params_input": {"verification_method": "id_document"},
    "responded_by_user": {"id": "7", "name": "privacy-officer"},
}
AS_OF = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def shared_clone(reference_deployment: Deployment, s3: Any, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One writable copy of the reference deployment for a whole module: its tests erase
    different people and each checks only what its own erasure did."""
    with cloned_deployment(reference_deployment, s3, request.module.__name__.rsplit(".", 1)[-1][5:]) as (clone, _):
        yield clone


def snapshot(url: str) -> dict[str, dict[Any, str]]:
    """Every row of every app table as a digest, by table and primary key."""
    out: dict[str, dict[Any, str]] = {}
    with psycopg.connect(url) as conn:
        for table in APP_TABLES:
            pk = PK.get(table, "id")
            rows = conn.execute(f"SELECT {pk}, md5(row_to_json(t)::text) FROM app.{table} t")  # noqa: S608 - fixed names
            out[table] = {r[0]: r[1] for r in rows}
    return out


def diff(before: dict[str, dict[Any, str]], after: dict[str, dict[Any, str]]) -> dict[str, dict[str, set[Any]]]:
    """Per table: keys deleted, changed and added between two snapshots."""
    out: dict[str, dict[str, set[Any]]] = {}
    for table in APP_TABLES:
        b, a = before[table], after[table]
        out[table] = {
            "deleted": set(b) - set(a),
            "changed": {k for k in set(b) & set(a) if b[k] != a[k]},
            "added": set(a) - set(b),
        }
    return out


def conf_for(key: str, *, email: bool = True, phone: bool = True, **extra: Any) -> dict[str, Any]:
    subject = cast_member(key)
    conf: dict[str, Any] = {}
    if email and subject.email:
        conf["email"] = subject.email
    if phone and subject.phone:
        conf["phone"] = subject.phone
    conf.update(extra)
    return conf


def run_id_for(label: str) -> str:
    return f"manual__test_{label}_{hashlib.sha256(label.encode()).hexdigest()[:6]}"


@dataclass
class ErasureRun:
    handle: dict[str, Any]
    summary: dict[str, Any]
    results: dict[str, Any]


def run_erasure(
    conf: dict[str, Any],
    label: str,
    *,
    dry_run: bool = False,
    override: bool = False,
    approval: dict[str, Any] | None = APPROVAL,
    until: str = "close",
    as_of: datetime = AS_OF,
    handle: dict[str, Any] | None = None,
) -> ErasureRun:
    """The DAG's tasks in order, as functions (what dag.test does, minus Airflow): stops after
    ``until`` (plan, database, objects, processors, verify, close)."""
    from governance.workflows import dsr_erasure as wf

    run_id = run_id_for(label)
    handle = handle or wf.open_erasure_request(conf, run_id=run_id, received_at=as_of)
    summary = wf.plan_erasure(handle, dry_run=dry_run, override=override, dag_id="dsr_erasure", run_id=run_id,
                              as_of=as_of)  # fmt: skip
    results: dict[str, Any] = {}
    run = ErasureRun(handle, summary, results)
    if until == "plan" or dry_run:
        return run
    results["database"] = wf.execute_database(summary, approval=approval, run_id=run_id)
    results["suppression"] = wf.record_suppression(summary)
    if until == "database":
        return run
    results["objects"] = wf.delete_objects(summary)
    if until == "objects":
        return run
    results["processors"] = wf.erase_processors(summary)
    if until == "processors":
        return run
    results["verify"] = wf.verify_erasure(summary)
    if until == "verify":
        return run
    results["certificate"] = wf.issue_certificate(handle, dag_id="dsr_erasure", run_id=run_id)
    results["close"] = wf.close_erasure_request(handle, run_id=run_id)
    return run


def plan_keys(url: str, plan_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT plan FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    assert row is not None
    return dict(row[0])


def planned(plan: dict[str, Any], table: str, *effects: str) -> set[Any]:
    """Keys the plan lists for ``app``-table ``table`` under ``effects``."""
    return {k for s in plan["database"] if s["table"] == table and s["effect"] in effects for k in s["keys"]}


def all_versions(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        keys += [v["Key"] for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
    return keys


def recording_keys_of_callers(url: str, caller_ids: tuple[int, ...]) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT business_id, id, recording_key FROM app.calls WHERE caller_id = ANY(%s) AND recording_key IS NOT NULL",
            (list(caller_ids),),
        ).fetchall()
    return [r[2] for r in rows] + [f"transcripts/{r[0]}/{r[1]}.json" for r in rows]


def identities_text(key: str) -> list[str]:
    """Strings that must never appear in logs, XCom or documents for cast member ``key``."""
    subject = cast_member(key)
    values = [v for v in (subject.email, subject.phone, subject.e164, subject.full_name, subject.caller_email) if v]
    return sorted({v for v in values} | {v.lower() for v in values})


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
