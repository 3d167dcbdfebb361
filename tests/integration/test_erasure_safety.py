"""What keeps erasure safe, on one shared copy of the reference deployment: legal holds win, the
guard refuses over-broad plans before any change, shared household phones are refused or
narrowed, verification names residue it finds, and a run stopped after the database step
continues on a re-run without doing anything twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from governance.crypto import hasher_from_airflow
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    APPROVAL,
    AS_OF,
    all_versions,
    conf_for,
    diff,
    plan_keys,
    planned,
    recording_keys_of_callers,
    run_erasure,
    run_id_for,
    shared_clone,  # noqa: F401 - fixture
    snapshot,
)

pytestmark = pytest.mark.integration
UNCHANGED = {"deleted": set(), "changed": set(), "added": set()}


@pytest.fixture
def holds(shared_clone: Deployment) -> Iterator[Any]:  # noqa: F811
    """Add legal holds for one test; they are released when it ends."""
    created: list[int] = []

    def add(scope: str, *, person: str | None = None, business_id: int | None = None, table: str | None = None) -> int:
        values: dict[str, Any] = {"scope": scope, "business_id": business_id, "table_name": table, "kind": None,
                                  "hash": None, "key_id": None}  # fmt: skip
        if person is not None:
            hasher = hasher_from_airflow()
            values.update(kind="phone", hash=hasher.hash("phone", cast_member(person).e164 or ""), key_id=hasher.key_id)
        with psycopg.connect(shared_clone.app_url) as conn:
            hold_id = conn.execute(
                """INSERT INTO governance.legal_holds (scope, identity_kind, subject_hash, hash_key_id, business_id,
                       table_name, reason, case_reference, starts_at, ends_at, created_by)
                   VALUES (%(scope)s, %(kind)s, %(hash)s, %(key_id)s, %(business_id)s, %(table_name)s,
                       'Litigation: preserve records', 'CASE-2026-7', %(start)s, %(end)s, 'legal')
                   RETURNING hold_id""",
                {**values, "start": AS_OF - timedelta(days=30), "end": datetime(2027, 6, 30, tzinfo=UTC)},
            ).fetchone()[0]  # fmt: skip
        created.append(hold_id)
        return int(hold_id)

    yield add
    with psycopg.connect(shared_clone.app_url) as conn:
        conn.execute("UPDATE governance.legal_holds SET released_at = %s WHERE hold_id = ANY(%s)", (AS_OF, created))


def test_person_under_legal_hold_keeps_everything_and_the_plan_says_why(
    shared_clone: Deployment, holds: Any  # noqa: F811
) -> None:
    subject = cast_member("caller_only")
    hold_id = holds("person", person="caller_only")
    before = snapshot(shared_clone.app_url)
    contacts = len(shared_clone.crm.contacts())
    run = run_erasure(conf_for("caller_only"), "personhold")
    assert diff(before, snapshot(shared_clone.app_url)) == {t: UNCHANGED for t in before}
    assert len(shared_clone.crm.contacts()) == contacts
    assert run.summary["person_held"] is True
    kept = {(k["where"], k["kind"]): k for k in run.summary["kept"]}
    assert kept[("aircalls_app.callers", "rows")]["hold_ids"] == [hold_id]
    assert kept[("aircalls_app.callers", "rows")]["until"].startswith("2027-06-30")
    assert kept[("crm", "processor_records")]["count"] == 1
    assert kept[("aircalls_objects.recordings", "objects")]["count"] == 6
    assert run.results["verify"]["passed"] and run.results["suppression"]["recorded"] == 0
    assert subject.caller_ids


def test_held_business_keeps_its_rows_and_a_held_table_is_not_touched(
    shared_clone: Deployment, holds: Any, s3: Any  # noqa: F811
) -> None:
    url = shared_clone.app_url
    subject = cast_member("multi_business_caller")
    at_b = subject.caller_ids[subject.caller_business_ids.index(2)]
    holds("business", business_id=2)
    before = snapshot(url)
    run = run_erasure(conf_for("multi_business_caller"), "businesshold")
    d = diff(before, snapshot(url))
    assert d["callers"]["deleted"] == set(subject.caller_ids) - {at_b}
    with psycopg.connect(url) as conn:
        calls_at_b = {r[0] for r in conn.execute("SELECT id FROM app.calls WHERE caller_id = %s", (at_b,))}
    assert calls_at_b and not calls_at_b & d["calls"]["deleted"]
    assert any(k["where"] == "aircalls_app.callers" and k["reason"] == "legal_hold" and k["count"] == 1
               for k in run.summary["kept"])  # fmt: skip

    heavy = cast_member("heavy_subject")
    recordings = recording_keys_of_callers(url, heavy.caller_ids)
    holds("table", table="app.calls")
    before = snapshot(url)
    run = run_erasure(conf_for("heavy_subject"), "tablehold")
    d = diff(before, snapshot(url))
    assert d["calls"] == UNCHANGED
    # Its calls still point at the caller, so the caller row stays too (kept because of the hold).
    assert d["callers"]["deleted"] == set() and len(d["messages"]["deleted"]) == 10 and d["appointments"]["deleted"]
    reasons = {(k["where"], k["reason"]) for k in run.summary["kept"]}
    assert ("aircalls_app.calls", "legal_hold") in reasons
    assert ("aircalls_app.callers", "referenced_by_held_row") in reasons
    assert all(all_versions(s3, shared_clone.bucket, key) for key in recordings)
    assert run.results["verify"]["passed"]


def test_guard_refuses_a_plan_touching_too_much_of_a_table_before_any_change(
    shared_clone: Deployment, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("GOVERNANCE_ERASURE_GUARD_MIN_ROWS", "20")  # the payer has 96 of 1,379 payments
    before = snapshot(shared_clone.app_url)
    with pytest.raises(AirflowFailException, match=r"aircalls_app.payments: 96 of about 1379 rows .* override"):
        run_erasure(conf_for("payer"), "guard")
    assert diff(before, snapshot(shared_clone.app_url)) == {t: UNCHANGED for t in before}
    with psycopg.connect(shared_clone.app_url) as conn:
        status, refusal = conn.execute(
            "SELECT status, refusal FROM governance.erasure_plans WHERE dag_run_id = %s", (run_id_for("guard"),)
        ).fetchone()  # fmt: skip
    assert status == "refused" and "payments" in refusal


def test_shared_household_phone_is_refused_alone_and_narrowed_by_the_email(shared_clone: Deployment) -> None:  # noqa: F811
    a, b = cast_member("household_a"), cast_member("household_b")
    url = shared_clone.app_url
    before = snapshot(url)
    with pytest.raises(AirflowFailException, match=r"aircalls_app.callers: 2 rows in business 4 .*narrower identity"):
        run_erasure(conf_for("household_b"), "household_phone")
    assert diff(before, snapshot(url)) == {t: UNCHANGED for t in before}

    run = run_erasure(conf_for("household_a"), "household_narrowed")  # e-mail and the shared phone
    d = diff(before, snapshot(url))
    assert d["callers"]["deleted"] == set(a.caller_ids)
    assert not set(b.caller_ids) & (d["callers"]["deleted"] | d["callers"]["changed"])
    # The call-event store is keyed by the phone alone: events under a phone that is also another
    # person's cannot be told apart, so they are left out (as shared) rather than erased for both.
    assert run.summary["excluded"] == [
        {"where": "aircalls_app.callers", "count": 1, "reason": "fewer_identities"},
        {"where": "aircalls_events.call_events", "count": 12, "reason": "shared_identity"},
    ]
    with psycopg.connect(url) as conn:
        calls_b = conn.execute("SELECT count(*) FROM app.calls WHERE caller_id = ANY(%s)", (list(b.caller_ids),)).fetchone()[0]
    assert calls_b == 3
    assert run.results["verify"]["passed"]


def test_verification_fails_and_names_residue_planted_after_execution(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    from governance.workflows import dsr_erasure as wf

    subject = cast_member("both_user_and_caller")
    url = shared_clone.app_url
    recording = next(k for k in recording_keys_of_callers(url, subject.caller_ids) if k.startswith("recordings/"))
    body = s3.get_object(Bucket=shared_clone.bucket, Key=recording)["Body"].read()
    run = run_erasure(conf_for("both_user_and_caller"), "residue", until="processors")
    with psycopg.connect(url) as conn:  # the person calls another business; a restored recording
        conn.execute("INSERT INTO app.callers (id, business_id, phone, full_name, first_seen_at)"
                     " VALUES (1999000001, 5, %s, 'Planted', %s)", (subject.e164, AS_OF))  # fmt: skip
    s3.put_object(Bucket=shared_clone.bucket, Key=recording, Body=body)
    with pytest.raises(AirflowFailException) as failure:
        wf.verify_erasure(run.summary)
    message = str(failure.value)
    assert "aircalls_app.callers (1 rows)" in message and "aircalls_objects.recordings (1 objects)" in message
    for text in (subject.e164 or "", subject.email or "", "Planted"):
        assert text not in message
    result = wf.close_erasure_request(run.handle, run_id=run_id_for("residue"))
    assert result["status"] == "failed" and "aircalls_app.callers" in result["detail"]


def test_run_stopped_after_the_database_step_continues_on_a_rerun_without_double_effects(
    shared_clone: Deployment, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from governance.workflows import dsr_erasure as wf

    # The first run is killed (it never closes the request): the re-run takes its claim over once
    # it is stale, configured near zero here (governance.erasure.claims).
    monkeypatch.setenv("GOVERNANCE_CLAIM_STALE_AFTER_S", "0.01")

    subject = cast_member("shared_business_user_2")
    url = shared_clone.app_url
    shared_clone.crm.set_fault("error", status=409, methods=["DELETE"], count=1)  # the crm refuses once
    first = run_erasure(conf_for("shared_business_user_2"), "killed", until="objects")
    with pytest.raises(Exception, match="crm erase: unexpected HTTP 409"):
        wf.erase_processors(first.summary)
    after_first = snapshot(url)
    progress_first = _progress(url, first.summary["plan_id"])
    assert subject.user_id not in after_first["users"]

    # A new run for the same request continues the plan: nothing done twice, nothing fails.
    second = run_erasure({"request_id": first.handle["request_id"]}, "killed_rerun")
    assert second.summary["continued"] and second.summary["plan_id"] == first.summary["plan_id"]
    assert second.results["database"]["done_before"] == ["aircalls_app", "aircalls_warehouse"]
    assert snapshot(url) == after_first
    progress_second = _progress(url, first.summary["plan_id"])
    assert {k: v for k, v in progress_second.items() if k in progress_first} == progress_first
    assert second.results["processors"]["processors"]["crm"]["erased"] == 1
    assert second.results["close"]["status"] == "completed"
    assert not [c for c in shared_clone.crm.contacts() if c["email"].lower() == (subject.email or "").lower()]
    plan = plan_keys(url, first.summary["plan_id"])
    assert planned(plan, "users", "delete_rows") == {subject.user_id}


def _progress(url: str, plan_id: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT step, affected FROM governance.erasure_progress WHERE plan_id = %s"
                                 " AND step NOT LIKE 'run:%%'", (plan_id,)).fetchall())  # fmt: skip


def test_a_form_request_is_not_executed_without_approval(shared_clone: Deployment) -> None:  # noqa: F811
    before = snapshot(shared_clone.app_url)
    with pytest.raises(AirflowFailException, match="was not approved: nothing was changed"):
        run_erasure(conf_for("call_handler"), "unapproved", approval=None)
    assert diff(before, snapshot(shared_clone.app_url)) == {t: UNCHANGED for t in before}
    with pytest.raises(AirflowFailException, match="does not say how the person's identity was verified"):
        run_erasure(conf_for("call_handler"), "unverified", approval={"chosen_options": ["Approve"], "params_input": {}})
    assert diff(before, snapshot(shared_clone.app_url)) == {t: UNCHANGED for t in before}


def test_the_plan_shows_the_statements_that_run_and_a_changed_data_map_stops_execution(
    shared_clone: Deployment, tmp_path: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import json

    from governance.config import datamap_path
    from governance.datamap import load_datamap
    from governance.erasure.executor import approved_statements
    from governance.erasure.planner import ErasureWork
    from governance.workflows import dsr_erasure as wf

    subject = cast_member("payer")
    # The dry run's plan carries every statement as it runs: SQL with placeholders, no values.
    dry = run_erasure(conf_for("payer"), "sql_dry_run", dry_run=True)
    shown = [s for s in dry.summary["statements"] if s["rows"]]
    assert {s["step"].split(":")[3] for s in shown} >= {"users", "payments"}
    assert any(s["sql"].startswith('DELETE FROM "app"."users" WHERE "id" = ANY(%(keys)s)') for s in shown)
    text = json.dumps(dry.summary) + dry.summary["approval_markdown"]
    for value in (subject.email or "", (subject.email or "").lower(), subject.e164 or "", subject.phone or ""):
        assert value not in text
    assert "```sql" in dry.summary["approval_markdown"]

    # What was planned (and would be approved) is what the executor runs.
    planned_run = run_erasure(conf_for("payer"), "sql_changed_map", until="plan")
    work = ErasureWork.from_json(plan_keys(shared_clone.app_url, planned_run.summary["plan_id"]))
    statements = approved_statements(load_datamap(), work)
    assert {s.step_id: s.sql for s in work.database} == {k: v.text for k, v in statements.items()}

    # The map changes before the approval is acted on: nothing runs, the message says why.
    changed = tmp_path / "datamap.yaml"
    changed.write_text(datamap_path().read_text().replace("    schema: app\n", "    schema: app_moved\n", 1))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(changed))
    before = snapshot(shared_clone.app_url)
    with pytest.raises(AirflowFailException, match=r"statements differ .*plan the erasure again"):
        wf.execute_database(planned_run.summary, approval=APPROVAL, run_id=run_id_for("sql_changed_map"))
    assert diff(before, snapshot(shared_clone.app_url)) == {t: UNCHANGED for t in before}
    with psycopg.connect(shared_clone.app_url) as conn:
        status = conn.execute("SELECT status FROM governance.erasure_plans WHERE plan_id = %s",
                              (planned_run.summary["plan_id"],)).fetchone()  # fmt: skip
    assert status == ("planned",)


def test_an_erasure_blocked_by_a_row_lock_gives_up_after_the_configured_lock_timeout_with_nothing_changed(
    shared_clone: Deployment, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """GOVERNANCE_PG_LOCK_TIMEOUT_S bounds the erasure's wait for a row lock (the executor once
    set a fixed 60 s of its own over it): the transaction gives up, whole."""
    import time

    monkeypatch.setenv("GOVERNANCE_PG_LOCK_TIMEOUT_S", "1")
    subject = cast_member("call_handler")
    url = shared_clone.app_url
    before = snapshot(url)
    with psycopg.connect(url) as holder:  # the app holds the person's account row
        holder.execute("SELECT id FROM app.users WHERE id = %s FOR UPDATE", (subject.user_id,))
        started = time.monotonic()
        with pytest.raises(Exception, match="LockNotAvailable"):
            run_erasure(conf_for("call_handler"), "locktimeout", until="database")
        waited = time.monotonic() - started
    assert waited < 45, f"the erasure waited {waited:.0f} s for the lock: the configured 1 s was not applied"
    assert snapshot(url) == before
