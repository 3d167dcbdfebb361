"""Erasures in separate processes at once: two people of one business proceed in parallel
without deadlock, while an erasure of a person whose lock is held waits for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.crypto import hasher_from_airflow
from governance.erasure.locking import subject_lock
from governance.identity import SubjectIdentities
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import conf_for

pytestmark = [pytest.mark.slow(seconds=45), pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
# The DAG's first tasks, as functions, in a child process (no test helpers: they import pandas).
SCRIPT = """
import json, sys
from datetime import datetime, timezone
from governance.workflows import dsr_erasure as wf
conf, run_id = json.loads(sys.argv[1]), sys.argv[2]
at = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
handle = wf.open_erasure_request(conf, run_id=run_id, received_at=at)
summary = wf.plan_erasure(handle, dry_run=False, override=False, dag_id="dsr_erasure", run_id=run_id, as_of=at)
approval = {"chosen_options": ["Approve"], "params_input": {"verification_method": "id_document"},
            "responded_by_user": {"id": "7", "name": "privacy-officer"}}
result = wf.execute_database(summary, approval=approval, run_id=run_id)
print("RESULT " + json.dumps({"plan_id": summary["plan_id"], "rows": result["rows"]}))
"""


def _start(key: str, label: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(conf_for(key)), f"manual__{label}"], cwd=ROOT, env=dict(os.environ), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _result(process: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


def _user_exists(url: str, user_id: int | None) -> bool:
    with psycopg.connect(url) as conn:
        return bool(conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (user_id,)).fetchone()[0])


def test_two_people_of_one_business_erase_in_parallel_while_a_held_person_waits(reference_clone: Deployment) -> None:
    one, two = cast_member("shared_business_user_1"), cast_member("shared_business_user_2")
    url = reference_clone.app_url
    gov = url  # the governance schema lives in the app database in the reference deployment
    held = SubjectIdentities.parse(email=one.email, phone=one.phone, region="US")
    with subject_lock(gov, hasher_from_airflow(), held):
        first = _start("shared_business_user_1", "parallel_one")
        second = _start("shared_business_user_2", "parallel_two")
        result_two = _result(second)  # user 2 of the same business is not held up by user 1's lock
        assert not _user_exists(url, two.user_id) and result_two["rows"]["aircalls_app.users"] == 1
        time.sleep(1.0)
        assert first.poll() is None, "the erasure of a person whose lock is held must wait"
        assert _user_exists(url, one.user_id)
    result_one = _result(first)
    assert not _user_exists(url, one.user_id) and result_one["rows"]["aircalls_app.users"] == 1
    with psycopg.connect(url) as conn:
        statuses = dict(conn.execute("SELECT plan_id, status FROM governance.erasure_plans").fetchall())
    assert statuses == {result_one["plan_id"]: "executing", result_two["plan_id"]: "executing"}
