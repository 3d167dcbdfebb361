"""Erasure across two databases: the app and the analytics warehouse (its own database and
connection), with the warehouse down while the erasure runs.

Ground truth is the test's own SQL on both databases: the person's warehouse rows are the facts of
the calls of their caller rows, the sessions of their user id and the audience rows of their
e-mail, found here by hand; everything else in the warehouse is fingerprinted before and after.
The workflow's tasks run as functions (what ``dag.test`` runs, minus Airflow).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from governance.erasure.executor import ErasureStepFailed
from governance_dev.seed import cast_member
from governance_dev.services import free_port
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    DELETING,
    conf_for,
    diff,
    planned,
    run_erasure,
    shared_clone,  # noqa: F401 - fixture
    snapshot,
)

WAREHOUSE_PK = {"call_facts": "call_id", "user_sessions": "id", "marketing_audience": "id"}


def warehouse_snapshot(url: str) -> dict[str, dict[Any, str]]:
    """Every warehouse row as a digest, by table and primary key."""
    with psycopg.connect(url) as conn:
        return {
            table: dict(conn.execute(f"SELECT {pk}, md5(row_to_json(t)::text) FROM analytics.{table} t").fetchall())  # noqa: S608 - fixed names
            for table, pk in WAREHOUSE_PK.items()
        }


def persons_warehouse_rows(d: Deployment, key: str) -> dict[str, set[Any]]:
    """The person's warehouse rows, by hand: through the app's ids (calls of their caller rows,
    their user id) and by their e-mail."""
    member = cast_member(key)
    with psycopg.connect(d.app_url) as app:
        calls = [r[0] for r in app.execute("SELECT id FROM app.calls WHERE caller_id = ANY(%s)", (list(member.caller_ids),))]
    with psycopg.connect(d.warehouse_url) as wh:
        return {
            "call_facts": {r[0] for r in wh.execute("SELECT call_id FROM analytics.call_facts WHERE call_id = ANY(%s)", (calls,))},
            "user_sessions": {r[0] for r in wh.execute("SELECT id FROM analytics.user_sessions WHERE user_id = %s", (member.user_id,))},
            "marketing_audience": {r[0] for r in wh.execute(
                "SELECT id FROM analytics.marketing_audience WHERE lower(email) = lower(%s)", (member.email or "",))},
        }  # fmt: skip


def test_warehouse_down_during_erasure_changes_nothing_there_and_a_rerun_resumes_there_once(
    shared_clone: Deployment,  # noqa: F811 - fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = shared_clone
    key = "both_user_and_caller"  # caller facts, user sessions and an audience row in the warehouse
    truth = persons_warehouse_rows(d, key)
    assert all(truth.values()), truth
    app_before, wh_before = snapshot(d.app_url), warehouse_snapshot(d.warehouse_url)

    run = run_erasure(conf_for(key), "cross_system_down", until="plan")
    plan = run.summary
    assert {t: set(v) for t, v in (("call_facts", truth["call_facts"]), ("user_sessions", truth["user_sessions"]),
                                   ("marketing_audience", truth["marketing_audience"]))} == {
        t: {int(k) for s in _plan(d, plan["plan_id"])["database"] if s["table"] == t for k in s["keys"]}
        for t in WAREHOUSE_PK
    }, "the plan holds exactly the person's warehouse rows"  # fmt: skip

    # The warehouse goes down after planning: its connection now points at a closed port.
    good = json.loads(_env("AIRFLOW_CONN_AIRCALLS_WAREHOUSE"))
    monkeypatch.setenv("AIRFLOW_CONN_AIRCALLS_WAREHOUSE", json.dumps({**good, "port": free_port()}))
    from governance.workflows import dsr_erasure as wf
    from tests.integration.test_erasure_support import APPROVAL, run_id_for

    with pytest.raises(ErasureStepFailed, match="aircalls_warehouse: the database connection was lost"):
        wf.execute_database(plan, approval=APPROVAL, run_id=run_id_for("cross_system_down"))
    # The app (first in erasure order) committed; the warehouse is exactly as it was.
    assert warehouse_snapshot(d.warehouse_url) == wh_before
    app_after_failure = diff(app_before, snapshot(d.app_url))
    assert app_after_failure["users"]["deleted"] == {cast_member(key).user_id}

    # The warehouse is back: the rerun skips the app (done) and erases the warehouse once.
    monkeypatch.setenv("AIRFLOW_CONN_AIRCALLS_WAREHOUSE", json.dumps(good))
    results = run_erasure(conf_for(key), "cross_system_down", handle=run.handle).results
    assert results["database"]["done_before"] == ["aircalls_app"]
    assert {t for t in results["database"]["rows"] if t.startswith("aircalls_warehouse.")} == {
        f"aircalls_warehouse.{t}" for t in WAREHOUSE_PK}  # fmt: skip
    assert results["verify"]["passed"], results["verify"]
    assert results["close"]["status"] == "completed"

    # Ground truth: the person's warehouse rows are gone, nobody else's changed; the app changed
    # exactly by the plan (the failed run and the rerun together, once).
    wh_after = warehouse_snapshot(d.warehouse_url)
    for table in WAREHOUSE_PK:
        assert set(wh_before[table]) - set(wh_after[table]) == truth[table], table
        assert {k: v for k, v in wh_before[table].items() if k not in truth[table]} == wh_after[table], table
    stored = _plan(d, plan["plan_id"])
    for table, change in diff(app_before, snapshot(d.app_url)).items():
        assert change["added"] == set(), table
        assert change["deleted"] == planned(stored, table, *DELETING), table
    with psycopg.connect(d.app_url) as conn:
        row = conn.execute("SELECT certificate FROM governance.erasure_certificates WHERE plan_id = %s",
                           (plan["plan_id"],)).fetchone()  # fmt: skip
    assert row is not None
    systems = {s["system"]: s for s in row[0]["systems"]}
    assert systems["aircalls_app"]["done"] and systems["aircalls_warehouse"]["done"]
    assert systems["aircalls_warehouse"]["rows"] == sum(len(v) for v in truth.values())


def _env(name: str) -> str:
    import os

    return os.environ[name]


def _plan(d: Deployment, plan_id: str) -> dict[str, Any]:
    with psycopg.connect(d.app_url) as conn:
        row = conn.execute("SELECT plan FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    assert row is not None
    return dict(row[0])
