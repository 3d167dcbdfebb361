"""A heavy subject (#12 item 4): a user with 50,000 usage events is erased completely while the
stored plan holds no per-row keys of them (a count and the plan id: the keys stay in the app
database's key table), and once the run is closed no stored key of the plan is left."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    APPROVAL,
    AS_OF,
    conf_for,
    plan_keys,
    run_erasure,
    run_id_for,
    shared_clone,  # noqa: F401 - fixture
)

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=90)]

EVENTS = 50_000


def _plant_usage_events(url: str, user_id: int, count: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO app.usage_events (id, user_id, occurred_at, ip_address, user_agent, device_id, path, geo_country)"
            " SELECT base.id + g, %(user)s, %(at)s - make_interval(secs => g * 31.5), '203.0.113.7'::inet,"
            " 'test-agent', 'test-device-' || (g %% 7), '/app/calls/' || (g %% 997), 'US'"
            " FROM (SELECT coalesce(max(id), 0) AS id FROM app.usage_events) AS base, generate_series(1, %(n)s) AS g",
            {"user": user_id, "n": count, "at": datetime(2026, 11, 27, 12, tzinfo=UTC)},
        )
        conn.execute("ANALYZE app.usage_events")


def _stored_keys(url: str, plan_id: str) -> int:
    from governance.datamap import load_datamap
    from governance.db import conninfo_for
    from governance.erasure.keys import stored_key_count

    return stored_key_count(load_datamap(), conninfo_for, plan_id)


def test_a_user_with_fifty_thousand_usage_events_is_erased_with_a_plan_of_counts_and_no_stored_key_left(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    from governance.workflows import dsr_erasure as wf

    subject = cast_member("both_user_and_caller")
    assert subject.user_id is not None
    url = shared_clone.app_url
    _plant_usage_events(url, subject.user_id, EVENTS)
    with psycopg.connect(url) as conn:
        other_events = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id <> %s", (subject.user_id,)).fetchone()
        own = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone()
    assert own and own[0] > EVENTS and other_events

    # The small reference seed makes 50,000 events most of the table: the guard is overridden, as reviewed.
    run = run_erasure(conf_for("both_user_and_caller"), "heavy_subject", until="verify", override=True)
    plan_id = run.summary["plan_id"]
    plan = plan_keys(url, plan_id)
    events = [s for s in plan["database"] if s["table"] == "usage_events"]
    # The plan names the rows by count and plan id only: no key of the 50,000 events is in it.
    assert [(s["effect"], s["keys"], s["key_set"], s["stored_rows"]) for s in events] == [
        ("delete_rows", [], plan_id, own[0])
    ]
    assert run.summary["tables"]["aircalls_app.usage_events"] == {"delete_rows": own[0]}
    assert len(json.dumps(plan)) < 100_000  # a few hundred rows of the person's other tables, not 50,000 keys
    assert _stored_keys(url, plan_id) == own[0]  # the keys wait in the app database until the run ends

    # Every event of the person is gone, everyone else's untouched; verification passed.
    with psycopg.connect(url) as conn:
        left = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone()
        others = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id <> %s", (subject.user_id,)).fetchone()
        user = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone()
    assert left == (0,) and others == other_events and user == (0,)
    assert run.results["database"] and run.results["verify"]["passed"]

    # The certificate counts them; closing the run removes the stored keys.
    run_id = run_id_for("heavy_subject")
    wf.issue_certificate(run.handle, dag_id="dsr_erasure", run_id=run_id)
    with psycopg.connect(url) as conn:
        certified = conn.execute("SELECT certificate FROM governance.erasure_certificates WHERE plan_id = %s",
                                 (plan_id,)).fetchone()  # fmt: skip
    assert certified is not None and f'"planned": {own[0]}' in json.dumps(certified[0])
    closed = wf.close_erasure_request(run.handle, run_id=run_id)
    assert closed["status"] == "completed"
    assert _stored_keys(url, plan_id) == 0


def test_a_table_hold_keeps_every_stored_usage_event_and_the_plan_lists_them_as_kept(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    """The stored path applies legal holds as the in-memory one does: a hold on the whole table
    keeps each of the person's 12,000 events (marked held in the key table), and the plan says so."""
    subject = cast_member("payer")
    assert subject.user_id is not None
    url = shared_clone.app_url
    _plant_usage_events(url, subject.user_id, 12_000)
    with psycopg.connect(url) as conn:
        own = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone()
        hold_id = conn.execute(
            "INSERT INTO governance.legal_holds (scope, table_name, reason, starts_at, created_by)"
            " VALUES ('table', 'app.usage_events', 'Litigation: every usage event preserved', %s, 'legal')"
            " RETURNING hold_id", (datetime(2026, 10, 1, tzinfo=UTC),),
        ).fetchone()[0]  # fmt: skip
    try:
        run = run_erasure(conf_for("payer"), "heavy_table_hold", dry_run=True, override=True)
    finally:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE governance.legal_holds SET released_at = %s WHERE hold_id = %s", (AS_OF, hold_id))
    assert own is not None and own[0] > 10_000
    plan_id = run.summary["plan_id"]
    plan = plan_keys(url, plan_id)
    events = [s for s in plan["database"] if s["table"] == "usage_events"]
    assert [(s["keys"], s["key_set"], s["stored_rows"]) for s in events] == [([], plan_id, 0)]
    kept = [k for k in run.summary["kept"] if k["where"] == "aircalls_app.usage_events"]
    assert [(k["count"], k["reason"], k["hold_ids"]) for k in kept] == [(own[0], "legal_hold", [hold_id])]
    assert _stored_keys(url, plan_id) == own[0]  # stored, every one marked held
    with psycopg.connect(url) as conn:  # nothing changed: a dry run
        assert conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone() == own


def test_an_approved_plan_whose_stored_keys_were_lost_changes_nothing_and_says_to_plan_again(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    """An ``UNLOGGED`` key table is emptied by a database crash: the executor finds fewer keys
    than the plan stored, fails the step and rolls the whole database transaction back."""
    from governance.workflows import dsr_erasure as wf

    subject = cast_member("shared_business_user_1")
    assert subject.user_id is not None
    url = shared_clone.app_url
    _plant_usage_events(url, subject.user_id, 12_000)
    run = run_erasure(conf_for("shared_business_user_1"), "heavy_lost_keys", until="plan", override=True)
    plan_id = run.summary["plan_id"]
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone()
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'governance_erasure' AND relkind = 'r'").fetchall()]  # fmt: skip
    assert before is not None and before[0] > 10_000 and _stored_keys(url, plan_id) == before[0]
    with psycopg.connect(url) as conn:
        for name in tables:  # what a crash does to an UNLOGGED table (here: this plan's keys only)
            conn.execute(sql.SQL("DELETE FROM {} WHERE __plan_id = %s").format(sql.Identifier("governance_erasure", name)),
                         (plan_id,))  # fmt: skip
    with pytest.raises(Exception, match="keys in its database and 0 are there"):
        wf.execute_database(run.summary, approval=APPROVAL, run_id=run_id_for("heavy_lost_keys"))
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (subject.user_id,)).fetchone() == before
        assert conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone() == (1,)
