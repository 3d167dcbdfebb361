"""Faults an operator meets during ``dsr_erasure`` runs, injected into the real processes: the S3
server frozen (SIGSTOP) while objects are deleted, the erasure's database connection terminated
in the middle of its transaction, and the run's process killed (``kill -9``) between the database
step and the certificate. Each ends with ground truth read independently (SQL, boto3, HTTP): the
person gone everywhere, nobody else changed, one certificate, one suppression entry per
identity, the audit ledger verifying. Deadlines are configured short (governance.deadlines)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from airflow.utils.state import DagRunState

from governance_dev.seed import cast_member
from governance_dev.services import free_port
from tests.dags.conftest import task_states, xcom_result
from tests.dags.test_dsr_erasure import _request, _task_logs, form
from tests.fixtures.reference import Deployment, cloned_deployment
from tests.fixtures.services import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.integration.test_erasure_support import assert_erased_exactly_once, ground_truth_before

pytestmark = [pytest.mark.slow(seconds=180), pytest.mark.integration, pytest.mark.dagrun]
ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate: Callable[[], Any], *, timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    return None


def _database_step_done(url: str, request_id: str) -> bool:
    """Whether an erasure plan of the request has committed its database step in every database
    it reaches (the app and the analytics warehouse, one transaction each)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            # One marker per database (db:<system>); the steps' own rows are db:<system>:<order>:...
            "SELECT count(*) = (SELECT count(DISTINCT s->>'system') FROM jsonb_array_elements(p.plan->'database') s)"
            " FROM governance.erasure_progress pr JOIN governance.erasure_plans p USING (plan_id)"
            " WHERE p.request_id = %s AND pr.step LIKE 'db:%%' AND pr.step NOT LIKE 'db:%%:%%'"
            " GROUP BY p.plan_id, p.plan", (request_id,)).fetchone()  # fmt: skip
    return bool(row and row[0])


def _maintenance_pass(bucket: str) -> Any:
    """What the governance-maintenance service does beside the scheduler: close superseded runs,
    reconcile the ledger, anchor its head (in ``bucket``)."""
    from governance.maintenance import Maintainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOVERNANCE_LEDGER_ANCHOR_BUCKET", bucket)
        report = Maintainer(timedelta(0), timedelta(0), ended_after=datetime.now(UTC) - timedelta(hours=1)).run_once()
    assert report.ok, report.errors
    return report


def _boto(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")  # fmt: skip


@pytest.fixture
def moto_process() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A moto S3 server of its own, in a separate process (so it can be frozen with SIGSTOP)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                _boto(endpoint).list_buckets()
                return True
            except Exception:
                return False

        assert _wait_for(answers, timeout_s=60, every_s=0.3), "the moto server did not start"
        yield process, endpoint
    finally:
        os.kill(process.pid, signal.SIGCONT)  # never leave it frozen
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _copy_bucket_across(source: Any, source_bucket: str, target: Any, target_bucket: str) -> None:
    target.create_bucket(Bucket=target_bucket)
    target.put_bucket_versioning(Bucket=target_bucket, VersioningConfiguration={"Status": "Enabled"})
    for page in source.get_paginator("list_objects_v2").paginate(Bucket=source_bucket):
        for obj in page.get("Contents", []):
            body = source.get_object(Bucket=source_bucket, Key=obj["Key"])["Body"].read()
            target.put_object(Bucket=target_bucket, Key=obj["Key"], Body=body)


def test_a_frozen_object_store_fails_the_erasure_run_within_its_deadline_and_the_rerun_after_it_thaws_completes(
    get_dag: Callable[[str], Any], reference_deployment: Deployment, s3: Any,
    moto_process: tuple[subprocess.Popen[bytes], str], capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    server, endpoint = moto_process
    store = _boto(endpoint)
    with cloned_deployment(reference_deployment, s3, "frozen_store") as (clone, patch):
        deployment = dataclasses.replace(clone, bucket=f"{clone.bucket}-own", s3_endpoint=endpoint)
        _copy_bucket_across(s3, clone.bucket, store, deployment.bucket)
        for key, value in deployment.connection_env().items():
            patch.setenv(key, value)
        deadlines = {"GOVERNANCE_S3_CONNECT_TIMEOUT_S": 1.0, "GOVERNANCE_S3_READ_TIMEOUT_S": 1.0,
                     "GOVERNANCE_S3_MAX_ATTEMPTS": 2}  # fmt: skip
        for key, seconds in deadlines.items():
            patch.setenv(key, str(seconds))
        request_id = _request("caller_only", approved=True)
        before = ground_truth_before(deployment, "caller_only")

        # Freeze the S3 server the moment the database step commits: the object deletion that
        # follows meets a server that accepts connections and never answers.
        frozen = threading.Event()

        def freeze() -> None:
            if _wait_for(lambda: _database_step_done(deployment.app_url, request_id), timeout_s=240):
                os.kill(server.pid, signal.SIGSTOP)
                frozen.set()

        freezer = threading.Thread(target=freeze, daemon=True)
        freezer.start()
        try:
            failed = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
        finally:
            freezer.join(timeout=5)
            os.kill(server.pid, signal.SIGCONT)
        assert frozen.is_set(), "the S3 server was frozen during the run"
        states = task_states(failed)
        assert failed.state == DagRunState.FAILED, states
        assert states["execute_database"] == "success" and states["delete_objects"] == "failed"
        assert states["close_request"] == "success" and states["request_outcome"] == "failed"
        # Each try of the deletion ended within the configured deadline: 2 attempts of 1 s (plus
        # botocore's backoff), not botocore's default 60 s x 5, with the endpoint named.
        tries = [ti for ti in failed.get_task_instances() if ti.task_id == "delete_objects"]
        took = (tries[0].end_date - tries[0].start_date).total_seconds()
        assert took < 30, f"delete_objects took {took:.0f} s with a frozen store"
        out, err = capfd.readouterr()
        assert f"object store not answering at {endpoint}" in _task_logs(failed.run_id, out + err)
        with psycopg.connect(deployment.app_url) as conn:
            assert conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                                (request_id,)).fetchone() == ("failed",)  # fmt: skip

        rerun = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
        assert rerun.state == DagRunState.SUCCESS, task_states(rerun)
        assert xcom_result(rerun, "execute_database")["done_before"] == ["aircalls_app", "aircalls_warehouse"]
        _maintenance_pass(deployment.bucket)
        assert_erased_exactly_once(deployment, store, "caller_only", request_id, before)


def test_a_terminated_database_connection_rolls_the_erasure_transaction_back_whole_and_the_retry_completes(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any
) -> None:
    subject = cast_member("caller_only")
    url = reference_clone.app_url
    request_id = _request("caller_only", approved=True)
    before = ground_truth_before(reference_clone, "caller_only")
    with psycopg.connect(url) as conn:
        calls_before = conn.execute("SELECT count(*) FROM app.calls WHERE caller_id = ANY(%s)",
                                    (list(subject.caller_ids),)).fetchone()[0]  # fmt: skip
    assert calls_before > 0

    # The test holds the person's caller row: the erasure transaction deletes the appointments,
    # calls and messages, then waits on the callers step; there it is cut.
    holder = psycopg.connect(url)
    holder.execute("SELECT id FROM app.callers WHERE id = ANY(%s) FOR UPDATE", (list(subject.caller_ids),))
    seen: dict[str, Any] = {}

    def cut() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as admin:
                def blocked() -> Any:
                    return admin.execute(
                        "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'governance-erasure' AND wait_event_type = 'Lock'").fetchone()  # fmt: skip

                found = _wait_for(blocked, timeout_s=240)
                if not found:
                    return
                seen["query"] = found[1]
                admin.execute("SELECT pg_terminate_backend(%s)", (found[0],))
                seen["terminated"] = True
                # Read while the retry (if it started) is still held up: nothing of the cut
                # transaction is visible, and no progress was recorded.
                seen["calls_left"] = admin.execute("SELECT count(*) FROM app.calls WHERE caller_id = ANY(%s)",
                                                   (list(subject.caller_ids),)).fetchone()[0]  # fmt: skip
                seen["database_step_done"] = _database_step_done(url, request_id)
        finally:
            holder.commit()  # let the retry through
            holder.close()

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    run = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    cutter.join(timeout=10)
    assert seen.get("terminated"), "the erasure's connection was terminated mid-transaction"
    assert seen["query"].startswith('DELETE FROM "app"."callers"'), "cut at the last step of the transaction"
    assert seen["calls_left"] == calls_before and not seen["database_step_done"], "the cut transaction rolled back whole"
    states = task_states(run)
    assert run.state == DagRunState.SUCCESS, states
    assert xcom_result(run, "execute_database")["rows"]["aircalls_app.callers"] == 1
    _maintenance_pass(reference_clone.bucket)
    assert_erased_exactly_once(reference_clone, s3, "caller_only", request_id, before)


# A run in its own process (``dag.test()``, as ``airflow dags test`` runs it), to be killed.
RUN_SCRIPT = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
bag.get_dag("dsr_erasure").test(run_conf=json.loads(sys.argv[1]))
"""


def test_a_run_killed_between_the_database_and_the_certificate_is_closed_and_the_rerun_does_nothing_twice(
    get_dag: Callable[[str], Any], reference_clone: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    url = reference_clone.app_url
    request_id = _request("both_user_and_caller", approved=True)
    before = ground_truth_before(reference_clone, "both_user_and_caller")
    conf = json.dumps(form(request_id=request_id, dry_run=False))
    process = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, conf], cwd=ROOT, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert _wait_for(lambda: _database_step_done(url, request_id), timeout_s=240), "the run reached its database step"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    with psycopg.connect(url) as conn:
        killed = conn.execute("SELECT dag_run_id FROM governance.request_runs WHERE request_id = %s",
                              (request_id,)).fetchone()[0]  # fmt: skip
        assert conn.execute("SELECT count(*) FROM governance.erasure_certificates WHERE request_id = %s",
                            (request_id,)).fetchone() == (0,)  # fmt: skip
    with create_session() as session:
        assert str(session.query(DagRun).filter_by(dag_id="dsr_erasure", run_id=killed).one().state) == "running"

    # The next run takes the killed run's claim over (it has done nothing for the configured bound).
    monkeypatch.setenv("GOVERNANCE_CLAIM_STALE_AFTER_S", "1")
    rerun = get_dag("dsr_erasure").test(run_conf=form(request_id=request_id, dry_run=False))
    assert rerun.state == DagRunState.SUCCESS, task_states(rerun)
    assert xcom_result(rerun, "execute_database")["done_before"] == ["aircalls_app", "aircalls_warehouse"], (
        "the database step ran once in each database")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT superseded_by, held_claim FROM governance.request_runs WHERE request_id = %s"
                            " AND dag_run_id = %s", (request_id, killed)).fetchone() == (rerun.run_id, True)  # fmt: skip

    # The maintenance pass closes the killed run in Airflow: failed, with a note naming the re-run.
    assert _maintenance_pass(reference_clone.bucket).runs_closed == 1
    with create_session() as session:
        closed = session.query(DagRun).filter_by(dag_id="dsr_erasure", run_id=killed).one()
        state, note = str(closed.state), closed.note
        unfinished = [ti.task_id for ti in closed.get_task_instances(session=session)
                      if str(ti.state) not in ("success", "failed", "skipped", "upstream_failed")]  # fmt: skip
    assert state == "failed" and f"run {rerun.run_id} took over privacy request {request_id}" in note
    assert unfinished == [], "no task of the closed run is left running or waiting"
    assert_erased_exactly_once(reference_clone, s3, "both_user_and_caller", request_id, before)
