"""`python -m governance maintain --once`: one maintenance pass beside the scheduler (scrub,
close superseded runs, forget unused erasure keys, reconcile, anchor), its heartbeat for the compose healthcheck, and its exit code on a failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.cli import main
from governance.ledger import ANCHOR_PREFIX, LedgerEntry, LedgerWriter, ledger_keyring
from tests.dags.test_run_conf_scrub import synced_dags  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
# The runs these tests plant are dated 2020: keep Airflow's records of them (the metadata clean-up
# has its own test).
KEEP_2020_RUNS = ["--metadata-max-age", "36500d"]


def test_one_pass_anchors_new_ledger_rows_prints_counts_and_touches_the_heartbeat(
    airflow_db: str, ledger_db: str, anchor_bucket: str, s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LedgerWriter.connect(ledger_db, ledger_keyring()) as writer:
        writer.append([LedgerEntry(dag_id="dsr_export", run_id="manual__1", task_id="open_request", map_index=-1,
                                   try_number=1, state="success", started_at=datetime.now(UTC))])  # fmt: skip
    heartbeat = tmp_path / "maintenance.heartbeat"
    assert main(["maintain", "--once", "--lookback", "0s", "--heartbeat", str(heartbeat)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["errors"] == [] and report["anchored_seq"] == 1
    assert heartbeat.exists()
    # No connection to the map's databases here: their erasure key tables are named as unswept,
    # not an error.
    assert report["erasure_keys_unswept_systems"] == ["aircalls_app", "aircalls_warehouse"]
    assert report["erasure_keys_forgotten"] == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=anchor_bucket, Prefix=ANCHOR_PREFIX).get("Contents", [])]
    assert keys == [f"{ANCHOR_PREFIX}{1:020d}.json"]
    # A second pass right away adds nothing: no new rows.
    assert main(["maintain", "--once", "--lookback", "0s"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["anchored_seq"] is None


def test_a_pass_that_cannot_reach_the_ledger_exits_non_zero_and_leaves_the_heartbeat_stale(
    airflow_db: str, ledger_db: str, anchor_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with psycopg.connect(ledger_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE governance.audit_ledger RENAME TO audit_ledger_moved")
    heartbeat = tmp_path / "maintenance.heartbeat"
    assert main(["maintain", "--once", "--lookback", "0s", "--heartbeat", str(heartbeat)]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["errors"] == ["ledger: UndefinedTable"]
    assert not heartbeat.exists()


@pytest.mark.parametrize("bad", [["--every", "0"], ["--anchor-interval", "soon"], ["--lookback=-1d"]])
def test_impossible_settings_are_refused_before_anything_runs(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["maintain", "--once", *bad]) == 2
    assert "maintain:" in capsys.readouterr().err


def test_a_pass_closes_a_superseded_run_still_running_as_failed_with_a_note_and_leaves_ended_runs_as_they_are(
    airflow_db: str, ledger_db: str, anchor_bucket: str, synced_dags: None, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.identity import SubjectIdentities
    from governance.privacy_requests import create_request
    from governance.workflows.request_intake import claim_request, record_run
    from tests.dags.test_run_conf_scrub import _add_run

    opened = datetime(2020, 5, 4, 9, 0, tzinfo=UTC)
    with psycopg.connect(ledger_db) as conn:
        request_id = create_request(conn, kind="erasure", identities=SubjectIdentities.parse(email="killed@example.org"),
                                    hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=opened)  # fmt: skip
    _, killed = _add_run("dsr_erasure", "running", {"request_id": request_id}, ended=None)  # a kill -9 leaves it so
    _, ended = _add_run("dsr_erasure", "failed", {"request_id": request_id})
    _, newer = _add_run("dsr_erasure", "running", {"request_id": request_id}, ended=None)
    with psycopg.connect(ledger_db) as conn:
        for minute, run_id in enumerate((ended, killed, newer)):
            record_run(conn, request_id, dag_run_id=run_id, dag_id="dsr_erasure", at=opened.replace(minute=minute))
        conn.execute("UPDATE governance.privacy_requests SET status = 'in_progress', dag_run_id = %s, updated_at = %s"
                     " WHERE request_id = %s", (killed, opened, request_id))  # fmt: skip
    claim = claim_request(request_id, dag_run_id=newer, at=datetime.now(UTC), stale_after_s=60, conninfo=ledger_db)
    assert claim.took_over == killed and set(claim.superseded) == {killed, ended}

    assert main(["maintain", "--once", "--lookback", "0s", *KEEP_2020_RUNS]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs_closed"] == 1
    with create_session() as session:
        runs = {r.run_id: r for r in session.query(DagRun).filter(DagRun.run_id.in_([killed, ended, newer]))}
        states = {run_id: str(r.state) for run_id, r in runs.items()}
        killed_note, killed_end, ended_end = runs[killed].note, runs[killed].end_date, runs[ended].end_date
    assert states == {killed: "failed", ended: "failed", newer: "running"}
    assert killed_end is not None and ended_end.year == 2020, "an ended run keeps its end"
    assert f"run {newer} took over privacy request {request_id}" in killed_note
    with psycopg.connect(ledger_db) as conn:
        records = dict(conn.execute("SELECT dag_run_id, run_close_note FROM governance.request_runs"
                                    " WHERE request_id = %s AND run_closed_at IS NOT NULL", (request_id,)).fetchall())  # fmt: skip
    assert set(records) == {killed, ended}
    assert "Closed as failed" in records[killed] and "ended failed: left as it is" in records[ended]
    # Each superseded run is handled once: the next pass closes nothing.
    assert main(["maintain", "--once", "--lookback", "0s", *KEEP_2020_RUNS]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs_closed"] == 0


def test_a_pass_removes_airflow_records_log_files_and_lineage_events_older_than_the_age_and_keeps_younger_ones(
    airflow_db: str, ledger_db: str, anchor_bucket: str, synced_dags: None, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import os
    from datetime import timedelta

    from airflow.models.dagrun import DagRun
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    from governance.lineage import openlineage_transport
    from tests.dags.test_run_conf_scrub import _add_run

    now = datetime.now(UTC)
    old, young = now - timedelta(days=45), now - timedelta(days=3)
    # Runs (with what was typed into the form) and action-log rows, one older than 30 days, one younger.
    old_run = _add_run("dsr_export", "success", {"email": "old@example.org"}, ended=old)[1]
    young_run = _add_run("dsr_export", "success", {"email": "young@example.org"}, ended=young)[1]
    with create_session() as session:
        for run_id, at in ((old_run, old), (young_run, young)):
            session.query(DagRun).filter(DagRun.run_id == run_id).update(
                {DagRun.start_date: at, DagRun.run_after: at, DagRun.end_date: at}
            )
            entry = Log(event="trigger_dag_run", owner="staff", dag_id="dsr_export", run_id=run_id,
                        extra=json.dumps({"conf": {"email": "typed@example.org"}}))  # fmt: skip
            session.add(entry)
            session.flush()
            session.query(Log).filter(Log.id == entry.id).update({Log.dttm: at})  # the model stamps "now"
    # Task log files and lineage events of both ages.
    logs = tmp_path / "logs"
    for name, at in (("old", old), ("young", young)):
        path = logs / f"dag_id=dsr_export/run_id={name}/task_id=open_request/attempt=1.log"
        path.parent.mkdir(parents=True)
        path.write_text("task log\n")
        os.utime(path, (at.timestamp(), at.timestamp()))
    events = tmp_path / "lineage" / "openlineage-events.jsonl"
    events.parent.mkdir()
    events.write_text("".join(json.dumps({"eventTime": at.isoformat(), "run": {"runId": name}}) + "\n"
                              for name, at in (("old", old), ("young", young))))  # fmt: skip
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(openlineage_transport(events_dir=events.parent)))

    assert main(["maintain", "--once", "--lookback", "0s", "--metadata-max-age", "30d"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["errors"] == [] and "dag_run" in report["metadata_cleanup"]["tables_cleaned"]
    with create_session() as session:
        runs = {r.run_id for r in session.query(DagRun).filter(DagRun.run_id.in_([old_run, young_run]))}
        entries = {e.run_id for e in session.query(Log).filter(Log.run_id.in_([old_run, young_run]))}
        older = session.query(DagRun).filter(DagRun.start_date < now - timedelta(days=30)).count()
    assert runs == {young_run} and entries == {young_run} and older == 0
    assert [p.parts[-3] for p in logs.rglob("*.log")] == ["run_id=young"]
    assert not (logs / "dag_id=dsr_export" / "run_id=old").exists()
    kept = [json.loads(line)["run"]["runId"] for p in events.parent.iterdir() for line in p.read_text().splitlines()]
    assert kept == ["young"] and report["metadata_cleanup"]["lineage_events_deleted"] == 1
    # The next event goes to a new live file; the lineage folder holds nothing older than the age.
    assert not events.exists()


def test_a_metadata_age_under_a_day_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["maintain", "--once", "--metadata-max-age", "1h"]) == 2
    assert "--metadata-max-age must be at least 1d" in capsys.readouterr().err
