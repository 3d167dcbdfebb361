"""retention_sweep end to end with ``dag.test()`` on copies of the reference deployment (activity
over three years up to 2026-11-28). Every expectation is hand-written SQL or a boto3 listing,
never the project's own code: what each rule removes or rewrites is gone, held rows are
untouched, no unexpired row changed, a dry run and a repeated run change nothing, an orphan object
goes only after its grace period, and a child table added to a copy of the map is swept with its
parent (a child kept by a legal exception keeps its parent)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from airflow.utils.state import DagRunState
from psycopg import sql

from governance.config import INCLUDE_DIR
from tests.dags.conftest import task_states, xcom_result
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=150), pytest.mark.integration, pytest.mark.dagrun]

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
HELD_BUSINESS = 3
# table -> (age column, shortest period of its rules): rows younger than that no rule may change
UNEXPIRED = {
    "calls": ("started_at", "90 days"),
    "messages": ("sent_at", "1 year"),
    "appointments": ("scheduled_for", "1 year"),
    "callers": ("first_seen_at", "2 years"),
    "support_tickets": ("created_at", "2 years"),
    "usage_events": ("occurred_at", "30 days"),
    "payments": ("paid_at", "7 years"),
}


def form(**values: Any) -> dict[str, Any]:
    """A whole trigger form (dag.test() keeps a run's params for the next run in one process)."""
    return {"dry_run": True, "as_of": AS_OF.isoformat(), "rules": [], "orphan_grace_days": 7, **values}


def fingerprint(url: str, where_unexpired: bool = False, as_of: datetime = AS_OF) -> dict[str, dict[Any, str]]:
    """md5 of every row (or of every unexpired row) of each swept table, by primary key."""
    out: dict[str, dict[Any, str]] = {}
    with psycopg.connect(url) as conn:
        for table, (age, period) in UNEXPIRED.items():
            query = sql.SQL("SELECT id, md5(t::text) FROM {} t").format(sql.Identifier("app", table))
            if where_unexpired:
                query += sql.SQL(" WHERE {} >= %s::timestamptz - %s::interval").format(sql.Identifier(age))
            rows = conn.execute(query, (as_of, period) if where_unexpired else ()).fetchall()
            out[table] = dict(rows)
    return out


def held_rows(url: str) -> dict[str, dict[Any, str]]:
    """Every row collected for the held business, by table."""
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT id, md5(t::text) FROM {} t WHERE business_id = %s")
        return {
            table: dict(conn.execute(query.format(sql.Identifier("app", table)), (HELD_BUSINESS,)).fetchall())
            for table in ("calls", "messages", "appointments", "callers", "payments")
        }


def versions(s3: Any, bucket: str, prefix: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            found.add((entry["Key"], entry["VersionId"]))
    return found


def violations(url: str) -> dict[str, int]:
    """For each rule, rows the sweep should have removed or rewritten and did not (held business
    aside). Hand-written from the rules' words in include/datamap.yaml."""
    checks = {
        "calls_2_years": "SELECT count(*) FROM app.calls WHERE started_at < %(as_of)s - interval '2 years' AND business_id <> %(held)s",
        "missed_calls_6_months": "SELECT count(*) FROM app.calls WHERE outcome = 'missed' AND started_at < %(as_of)s - interval '6 months' AND business_id <> %(held)s",
        "call_transcript_text_90_days": "SELECT count(*) FROM app.calls WHERE transcript IS NOT NULL AND started_at < %(as_of)s - interval '90 days' AND business_id <> %(held)s",
        "recordings_90_days": "SELECT count(*) FROM app.calls WHERE recording_key IS NOT NULL AND started_at < %(as_of)s - interval '90 days' AND business_id <> %(held)s",
        "messages_1_year": "SELECT count(*) FROM app.messages WHERE sent_at < %(as_of)s - interval '1 year' AND business_id <> %(held)s",
        "appointment_notes_1_year": "SELECT count(*) FROM app.appointments WHERE notes IS NOT NULL AND scheduled_for < %(as_of)s - interval '1 year' AND business_id <> %(held)s",
        "appointments_2_years": "SELECT count(*) FROM app.appointments WHERE scheduled_for < %(as_of)s - interval '2 years' AND business_id <> %(held)s",
        "inactive_callers_2_years": """SELECT count(*) FROM app.callers c WHERE first_seen_at < %(as_of)s - interval '2 years'
            AND business_id <> %(held)s AND NOT EXISTS (SELECT 1 FROM app.calls x WHERE x.caller_id = c.id)
            AND NOT EXISTS (SELECT 1 FROM app.messages x WHERE x.caller_id = c.id)
            AND NOT EXISTS (SELECT 1 FROM app.appointments x WHERE x.caller_id = c.id)""",
        "closed_support_tickets_2_years": "SELECT count(*) FROM app.support_tickets WHERE status IN ('solved', 'closed') AND created_at < %(as_of)s - interval '2 years'",
        "usage_ip_generalised_30_days": """SELECT count(*) FROM app.usage_events WHERE occurred_at < %(as_of)s - interval '30 days'
            AND ip_address IS NOT NULL AND masklen(ip_address) > CASE WHEN family(ip_address) = 4 THEN 24 ELSE 48 END""",
        "usage_device_details_90_days": "SELECT count(*) FROM app.usage_events WHERE occurred_at < %(as_of)s - interval '90 days' AND (user_agent IS NOT NULL OR device_id IS NOT NULL)",
        "usage_events_13_months": "SELECT count(*) FROM app.usage_events WHERE occurred_at < %(as_of)s - interval '13 months'",
        "payments_7_years": "SELECT count(*) FROM app.payments WHERE paid_at < %(as_of)s - interval '7 years' AND business_id <> %(held)s",
    }
    with psycopg.connect(url) as conn:
        return {rule: conn.execute(query, {"as_of": AS_OF, "held": HELD_BUSINESS}).fetchone()[0] for rule, query in checks.items()}  # type: ignore[index]


def old_call_object_keys(url: str) -> dict[str, set[str]]:
    """Keys of recordings and transcripts of calls older than 90 days (held business aside)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT business_id, id FROM app.calls WHERE started_at < %s - interval '90 days' AND business_id <> %s",
            (AS_OF, HELD_BUSINESS),
        ).fetchall()
    return {
        "recordings": {f"recordings/{b}/{c}.wav" for b, c in rows},
        "transcripts": {f"transcripts/{b}/{c}.json" for b, c in rows},
    }


def run_records(url: str, run_id: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT rule, dry_run, rows_affected, objects_affected, held, held_reasons, status FROM governance.retention_runs WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    return {r[0]: {"dry_run": r[1], "rows": r[2], "objects": r[3], "held": r[4], "held_reasons": r[5], "status": r[6]} for r in rows}


def hold_business(url: str, business_id: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO governance.legal_holds (scope, business_id, reason, starts_at, created_by)"
            " VALUES ('business', %s, 'Litigation: records of this client preserved', %s, 'legal-team')",
            (business_id, AS_OF - timedelta(days=400)),
        )


def test_sweep_applies_every_rule_keeps_held_rows_changes_nothing_unexpired_and_repeats_as_a_no_op(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    from governance.migrations import migrate

    url = reference_clone.app_url
    migrate(url)
    hold_business(url, HELD_BUSINESS)
    bucket = reference_clone.bucket
    # An orphan: an object of a call that does not exist (uploaded now, so within any grace period).
    orphan = "recordings/1/999999999.wav"
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"RIFF orphan")
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"RIFF orphan v2")
    everything = fingerprint(url)
    unexpired = fingerprint(url, where_unexpired=True)
    held = held_rows(url)
    objects_before = versions(s3, bucket, "")
    old_keys = old_call_object_keys(url)
    assert any(k in {key for key, _ in objects_before} for k in old_keys["recordings"])  # the seed has old recordings
    assert any(v > 0 for v in violations(url).values())

    dag = get_dag("retention_sweep")

    # 1. The form's default: a dry run. Same counts reported, nothing changed.
    dry = dag.test(run_conf=form())
    assert dry.state == DagRunState.SUCCESS, task_states(dry)
    assert fingerprint(url) == everything
    assert versions(s3, bucket, "") == objects_before
    dry_summary = xcom_result(dry, "summarise_sweep")
    assert dry_summary["dry_run"] is True and dry_summary["rows"] > 0
    dry_records = run_records(url, dry.run_id)
    assert dry_records and all(r["dry_run"] for r in dry_records.values())

    # 2. The sweep.
    run = dag.test(run_conf=form(dry_run=False))
    assert run.state == DagRunState.SUCCESS, task_states(run)
    assert violations(url) == dict.fromkeys(violations(url), 0)
    assert fingerprint(url, where_unexpired=True) == unexpired  # no unexpired row changed
    assert held_rows(url) == held  # the held business's rows untouched
    left = {key for key, _ in versions(s3, bucket, "")}
    assert not (old_keys["recordings"] | old_keys["transcripts"]) & left  # every version gone
    assert orphan in left  # younger than the grace period
    records = run_records(url, run.run_id)
    assert {r["status"] for r in records.values()} == {"done"}
    assert records["calls_2_years"]["held"] > 0
    assert records["calls_2_years"]["held_reasons"] == {"legal_hold": records["calls_2_years"]["held"]}
    assert records["usage_events_13_months"]["rows"] > 0 and records["recordings_90_days"]["objects"] > 0
    # Each dry-run count of a rule no other target and no earlier rule of its table overlaps
    # equals what the sweep did (targets run in any order).
    for rule in ("messages_1_year", "usage_ip_generalised_30_days", "appointment_notes_1_year", "closed_support_tickets_2_years"):
        assert (dry_records[rule]["rows"], dry_records[rule]["objects"]) == (records[rule]["rows"], records[rule]["objects"])

    # 3. Again the same day: nothing left to do.
    after = fingerprint(url)
    objects_after = versions(s3, bucket, "")
    again = dag.test(run_conf=form(dry_run=False))
    assert again.state == DagRunState.SUCCESS, task_states(again)
    assert fingerprint(url) == after and versions(s3, bucket, "") == objects_after
    assert all(r["rows"] == 0 and r["objects"] == 0 for r in run_records(url, again.run_id).values())

    # 4. Once the orphan is older than the grace period (as of now, with no grace), it goes.
    later = dag.test(run_conf=form(dry_run=False, as_of=datetime.now(UTC).isoformat(), orphan_grace_days=0,
                                   rules=["recordings_90_days"]))  # fmt: skip
    assert later.state == DagRunState.SUCCESS, task_states(later)
    assert not {v for v in versions(s3, bucket, orphan) if v[0] == orphan}


def test_bad_input_is_refused_naming_the_rule_before_anything_changes(
    get_dag: Callable[[str], Any], reference_clone: Deployment
) -> None:
    url = reference_clone.app_url
    before = fingerprint(url)
    dag = get_dag("retention_sweep")
    unknown = dag.test(run_conf=form(dry_run=False, rules=["calls_3_years"]))
    assert unknown.state == DagRunState.FAILED
    assert task_states(unknown)["plan_sweep"] == "failed"
    future = dag.test(run_conf=form(dry_run=False, as_of=(datetime.now(UTC) + timedelta(days=2)).isoformat()))
    assert future.state == DagRunState.FAILED and task_states(future)["plan_sweep"] == "failed"
    assert fingerprint(url) == before


CALL_NOTES = {
    "name": "call_notes",
    "description": "Notes staff wrote about a call.",
    "primary_key": "id",
    "references": [{"field": "call_id", "to": {"table": "calls"}, "kind": "ownership"}],
    "fields": [
        {"name": "id", "data_category": "system.operations", "data_use": "essential.service.operations"},
        # Under a legal exception (below): erasure minimises the note instead of deleting it.
        {"name": "call_id", "data_category": "user.unique_id", "data_use": "essential.service.operations", "erasure": "nullify"},
        {"name": "body", "data_category": "user.content.private", "data_use": "essential.service.operations", "erasure": "keep",
         "legal_basis": "recent_call_notes"},
        {"name": "written_at", "data_category": "system.operations", "data_use": "essential.service.operations"},
    ],
}


def test_a_child_table_added_to_the_map_is_swept_with_its_parent_and_an_excepted_child_keeps_its_parent(
    get_dag: Callable[[str], Any], reference_clone: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from governance.datamap import command

    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    data["systems"][0]["tables"].append(CALL_NOTES)
    data["legal_exceptions"].append({
        "name": "recent_call_notes", "system": "aircalls_app", "table": "call_notes",
        "basis": "Notes are kept a year for complaints.", "age_column": "written_at", "period": "P1Y",
    })  # fmt: skip
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    import argparse

    assert command.run(argparse.Namespace(path=path, explain=False, sql=False)) == 0  # no unreferenced demanded
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(path))

    url = reference_clone.app_url
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE app.call_notes (id bigint PRIMARY KEY, call_id bigint NOT NULL REFERENCES app.calls (id),"
            " body text, written_at timestamptz NOT NULL)"
        )
        conn.execute("CREATE INDEX ON app.call_notes (call_id)")
        old = conn.execute(
            "SELECT id FROM app.calls WHERE started_at < %s - interval '2 years' AND business_id <> %s ORDER BY id LIMIT 3",
            (AS_OF, HELD_BUSINESS),
        ).fetchall()
        young = conn.execute("SELECT id FROM app.calls WHERE started_at > %s - interval '30 days' ORDER BY id LIMIT 1", (AS_OF,)).fetchone()
        assert len(old) == 3 and young is not None
        gone_call, excepted_call, second_gone = (r[0] for r in old)
        conn.execute(
            "INSERT INTO app.call_notes VALUES (1, %s, 'old note', %s), (2, %s, 'recent note on an old call', %s),"
            " (3, %s, 'old note', %s), (4, %s, 'note on a recent call', %s)",
            (gone_call, AS_OF - timedelta(days=800), excepted_call, AS_OF - timedelta(days=20),
             second_gone, AS_OF - timedelta(days=790), young[0], AS_OF - timedelta(days=5)),
        )  # fmt: skip

    run = get_dag("retention_sweep").test(run_conf=form(dry_run=False, rules=["calls_2_years"]))
    assert run.state == DagRunState.SUCCESS, task_states(run)
    with psycopg.connect(url) as conn:
        notes = {r[0] for r in conn.execute("SELECT id FROM app.call_notes").fetchall()}
        calls = {r[0] for r in conn.execute("SELECT id FROM app.calls WHERE id = ANY(%s)", ([gone_call, excepted_call, second_gone, young[0]],)).fetchall()}
        record = conn.execute(
            "SELECT held, held_reasons, cascade FROM governance.retention_runs WHERE run_id = %s AND rule = 'calls_2_years'",
            (run.run_id,),
        ).fetchone()
    assert notes == {2, 4}  # the expired calls' notes went with them
    assert calls == {excepted_call, young[0]}  # the call whose note is still excepted stays
    assert record is not None
    assert record[1].get("owned_row_held") == 1 and record[0] >= 1
    assert record[2] == {"aircalls_app.call_notes": 2}
