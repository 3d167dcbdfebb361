"""Intake, export and erasure end to end under the CeleryExecutor (``make celery-check``).

Airflow runs as in docker-compose, on loopback: api-server, scheduler, dag-processor and two
``airflow celery worker`` processes (:class:`governance_dev.celery_cluster.CeleryAirflow`), its
metadata database and Celery's result backend each a PostgreSQL database of this test's own, the
broker the Redis on 127.0.0.1:6379 (a queue of this test's own). A verified export and a verified
erasure are recorded as staff would; one triggered run of ``privacy_request_intake`` dispatches
both, and the workers run every task. The results are those ``dag.test()`` gives
(tests/dags/test_dsr_export.py, test_dsr_erasure.py, test_privacy_request_intake.py): the bundle
published and downloadable from the object store, the person's rows gone with a passed
certificate, both requests completed through the lifecycle; and every task instance ran on a
Celery worker (each worker's log names the tasks it executed). Every process is stopped after,
also when the test fails.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.dispatch import dispatch_run_id
from governance.identity import SubjectIdentities
from governance.privacy_requests import create_request, verify_request
from governance_dev.celery_cluster import CeleryAirflow, dags_folder_of, redis_answers
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment

WORKFLOWS = {"privacy_request_intake", "dsr_export", "dsr_erasure"}

pytestmark = [
    pytest.mark.slow(seconds=330),
    pytest.mark.integration,
    pytest.mark.dagrun,
    pytest.mark.skipif(not redis_answers(), reason="no Redis answers on 127.0.0.1:6379 (the Celery broker)"),
]
# What a Celery worker logs for each workload it runs (Airflow's celery provider).
EXECUTED = re.compile(r"Executing workload in Celery: .*?id=UUID\('(?P<ti>[0-9a-f-]{36})'\)")


def _record_verified(url: str, kind: str, email: str, at: datetime) -> str:
    with psycopg.connect(url) as conn:
        request_id = create_request(conn, kind=kind, identities=SubjectIdentities.parse(email=email),  # type: ignore[arg-type]
                                    hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at,
                                    source="cli")  # fmt: skip
    # For an erasure the verification at intake is its approval (not by its recorder).
    verify_request(url, request_id, method="id_document", by="privacy.officer", at=at)
    return request_id


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, cluster: CeleryAirflow) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        cluster._check_alive()
        time.sleep(2)
    tails = "\n".join(f"--- {n}\n{cluster.log(n).read_text(errors='replace')[-2500:]}" for n in cluster.processes)
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{tails}")


def test_intake_export_and_erasure_on_two_celery_workers_give_the_results_of_dag_test(
    reference_clone: Deployment, make_db: Callable[[str], str], tmp_path: Path
) -> None:
    deployment = reference_clone
    url = deployment.app_url
    exported, erased = cast_member("caller_only"), cast_member("call_handler")
    assert exported.email and erased.email and erased.user_id is not None
    at = datetime.now(UTC)
    export_id = _record_verified(url, "export", exported.email, at)
    erasure_id = _record_verified(url, "erasure", erased.email, at)

    cluster = CeleryAirflow(metadata_url=make_db("celery_metadata"), result_backend_url=make_db("celery_results"),
                            dags_folder=dags_folder_of([f"{d}.py" for d in WORKFLOWS], tmp_path / "dags"),
                            home=tmp_path / "airflow")  # fmt: skip
    try:
        cluster.start(WORKFLOWS)
        cluster.trigger("privacy_request_intake")

        def finished() -> dict[str, str] | None:
            with psycopg.connect(url) as conn:
                rows = dict(conn.execute("SELECT request_id, status FROM governance.privacy_requests WHERE request_id"
                                         " = ANY(%s)", ([export_id, erasure_id],)).fetchall())  # fmt: skip
            if not all(s in ("completed", "failed", "rejected") for s in rows.values()):
                return None
            with psycopg.connect(cluster.metadata_url) as meta:  # the run ends after its last task
                ended = meta.execute("SELECT count(*) FROM dag_run WHERE run_id = ANY(%s) AND state IN ('success', 'failed')",
                                     ([dispatch_run_id(export_id), dispatch_run_id(erasure_id)],)).fetchone()  # fmt: skip
            return rows if ended == (2,) else None

        statuses = _wait(finished, 420, "the requests were not served", cluster)
        with psycopg.connect(cluster.metadata_url) as meta:
            tis = meta.execute("SELECT id::text, dag_id, run_id, task_id, state, queue FROM task_instance"
                               " WHERE dag_id = ANY(%s)", (sorted(WORKFLOWS),)).fetchall()  # fmt: skip
            runs = dict(meta.execute("SELECT dag_id || '/' || run_id, state FROM dag_run").fetchall())
        worker_logs = {name: cluster.worker_log_text(name) for name in cluster.worker_names}
    finally:
        killed = cluster.stop()

    # The data results dag.test() gives.
    assert statuses == {export_id: "completed", erasure_id: "completed"}, statuses
    assert runs[f"dsr_export/{dispatch_run_id(export_id)}"] == "success"
    assert runs[f"dsr_erasure/{dispatch_run_id(erasure_id)}"] == "success"
    with psycopg.connect(url) as conn:
        export = conn.execute("SELECT r.result_uri, b.status FROM governance.privacy_requests r JOIN governance.export_bundles b"
                              " USING (request_id) WHERE request_id = %s", (export_id,)).fetchone()  # fmt: skip
        certificate = conn.execute("SELECT verification_passed FROM governance.erasure_certificates WHERE request_id = %s",
                                   (erasure_id,)).fetchone()  # fmt: skip
        left = conn.execute("SELECT (SELECT count(*) FROM app.users WHERE id = %s),"
                            " (SELECT count(*) FROM app.callers WHERE id = ANY(%s))",
                            (erased.user_id, list(erased.caller_ids))).fetchone()  # fmt: skip
        transitions = conn.execute("SELECT request_id, string_agg(to_status, ',' ORDER BY transition_id) FROM"
                                   " governance.request_transitions WHERE request_id = ANY(%s) GROUP BY request_id",
                                   ([export_id, erasure_id],)).fetchall()  # fmt: skip
    assert export is not None and export[1] == "published" and export[0]
    assert requests.get(export[0], timeout=30).status_code == 200, "the bundle downloads from the object store"
    assert certificate == (True,) and left == (0, 0), "the person is erased and the erasure verified"
    for _request_id, path in transitions:
        assert path.endswith("dispatched,in_progress,completed"), path

    # Every task instance that ran, ran on one of the Celery workers (queue of this cluster).
    ran = {ti_id: (dag_id, task_id) for ti_id, dag_id, _run, task_id, state, _q in tis if state in ("success", "failed")}
    assert {q for *_x, state, q in tis if state in ("success", "failed")} == {cluster.queue}
    executed = {name: {m.group("ti") for m in EXECUTED.finditer(text)} for name, text in worker_logs.items()}
    on_workers = set().union(*executed.values())
    assert set(ran) <= on_workers, f"tasks not seen on a Celery worker: {[ran[i] for i in set(ran) - on_workers]}"
    assert {dag for dag, _t in ran.values()} == WORKFLOWS
    print(f"celery-check: {len(ran)} task instances; per worker: {({n: len(v) for n, v in executed.items()})}")
    assert killed == [], f"components that had to be killed: {killed}"
