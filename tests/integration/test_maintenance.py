"""`python -m governance maintain --once`: one maintenance pass beside the scheduler (scrub,
reconcile, anchor), its heartbeat for the compose healthcheck, and its exit code on a failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.cli import main
from governance.ledger import ANCHOR_PREFIX, LedgerEntry, LedgerWriter, ledger_keyring

pytestmark = pytest.mark.integration


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
