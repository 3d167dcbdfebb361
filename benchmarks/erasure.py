"""Erasure of one person: the database phase next to hand-written indexed statements for the
same rows, at the small and the large scale, and an end-to-end run.

For each scale a fresh database is seeded (``seed_reference_deployment``, with an S3 API server
(moto, child process) and the processor stand-ins) on the server of ``GOVERNANCE_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``). Then, per person of the cast:

* **project**: the plan is computed and stored as ``dsr_erasure`` does, then its database phase
  (``run_database_steps``: statements keyed by the planned primary keys, in batches, with the
  per-step progress rows) runs in one transaction that is rolled back;
* **baseline**: the same rows changed by hand-written statements on the indexed foreign keys
  (``DELETE FROM app.calls WHERE caller_id = ANY(...)``, ...), in one transaction, rolled back.

Both sides cover the analytics warehouse too (a second database, seeded from the app's rows): the
project runs the plan's warehouse steps in that database's own transaction (its progress rows in
the governance schema); the baseline deletes the same facts, sessions and audience rows by the
app's call and user ids and the e-mail. Each side's time is the sum over both databases.

Both sides cover the call-event store too (DynamoDB on moto's server, seeded from the app's calls:
about 200,000 items at ``large``): the project Queries the person's partition key and deletes with
``delete_keys`` (BatchWriteItem, 25 a call, the retries of the connector); the baseline is the
hand-written Query and BatchWriteItem loop. Deletes cannot be rolled back, so the person's items
are put back (untimed) before each side's run. moto keeps every item in its process's memory and
answers one request at a time: a store of millions of items needs DynamoDB itself (or DynamoDB
Local with its on-disk SQLite), where a Query costs the same at any table size; the figure that
matters here is that the project's item phase does not grow with the table (Query, never Scan).

Both sides alternate and the medians of ``--repeat`` runs are printed with the ratio
project/baseline (goal <= 2) and, across scales, large/small for the project's phase (goal <= 1.5:
the cost follows the person's rows, not the tables). Last, one person is erased end to end for
real (plan, database, objects, processors, verification with Great Expectations, certificate),
phase by phase, at the last scale. Ratios are printed, not asserted. Databases are dropped at the end.

**Verification's share** (goal: at most 20% of the approved run's time). Great Expectations, the
engine verification records its expectations with, costs 5-14 s to import here and milliseconds to
run. Deployments load it once in the scheduler before LocalExecutor forks its workers
(``governance.executors.PreloadingLocalExecutor``), so task processes start with it. The in-process
run mirrors that: it preloads GX first and prints that one-off cost apart (``--no-preload``: each
run pays it inside ``verify``, as every task process did before). Then it prints verification's
share of the run next to the database phase.

``--standalone`` also erases the end-to-end person under a real ``airflow standalone`` (LocalExecutor
task processes; a request verified and approved at intake, so no one has to click), once per
executor in ``--executors`` (default ``preloading,local``: the project's preloading LocalExecutor,
then Airflow's own), each on a copy of the seeded database (``CREATE DATABASE ... TEMPLATE``) made
before anything was erased. Object and processor records are not copied: the in-process run (or,
with ``--no-e2e``, the first standalone run) erased them, so the standalone runs' object and
processor tasks mostly find nothing left; their database and verification tasks do the full work. Per run it prints the run's wall time, the database task, the verification task, its
share, and whether the verification task imported GX itself (its log says so).

**Heavy subject** (``--heavy-events N``, #12 item 4): before the people are measured, N usage
events of ``both_user_and_caller``'s user are added (``generate_series``, then ANALYZE), and for
each person (measured in a fresh spawned process) the peak RSS growth over the plan (resolution, the stored plan), its
reload and the database phase is printed: the goal is under 200 MB at N = 1,000,000, with the
database phase still within 2x of the hand-written statements.

    .venv/bin/python benchmarks/erasure.py [--scales small,large] [--repeat 7] [--people both_user_and_caller,payer]
                                           [--warehouse-facts 5000000]
                                           [--no-preload] [--standalone [--executors preloading,local]]
                                           [--heavy-events 1000000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_GOAL, SCALE_GOAL = 2.0, 1.5
HEAVY_MEMORY_GOAL_MB = 200

# The hand-written baseline: what an engineer would type for one person, on the indexed foreign
# keys, in reference order (children first). ``users`` / ``callers`` are the person's ids.
BASELINE = [
    ("appointments", "DELETE FROM app.appointments WHERE caller_id = ANY(%(callers)s)"),
    ("calls mention", "UPDATE app.calls SET handled_by_user_id = NULL WHERE handled_by_user_id = ANY(%(users)s)"),
    ("calls", "DELETE FROM app.calls WHERE caller_id = ANY(%(callers)s)"),
    ("marketing_preferences", "DELETE FROM app.marketing_preferences WHERE user_id = ANY(%(users)s)"),
    ("messages mention", "UPDATE app.messages SET user_id = NULL WHERE user_id = ANY(%(users)s)"),
    ("messages", "DELETE FROM app.messages WHERE caller_id = ANY(%(callers)s)"),
    ("callers", "DELETE FROM app.callers WHERE id = ANY(%(callers)s)"),
    ("payments expired", "DELETE FROM app.payments WHERE user_id = ANY(%(users)s) AND paid_at + interval '7 years' <= %(as_of)s"),
    ("payments kept", "UPDATE app.payments SET user_id = NULL, card_last4 = '****', billing_address = NULL"
                      " WHERE user_id = ANY(%(users)s)"),
    ("support_tickets", "DELETE FROM app.support_tickets WHERE user_id = ANY(%(users)s)"),
    ("usage_events", "DELETE FROM app.usage_events WHERE user_id = ANY(%(users)s)"),
    ("users", "DELETE FROM app.users WHERE id = ANY(%(users)s)"),
]  # fmt: skip


def _seed_helpers() -> Any:
    spec = importlib.util.spec_from_file_location("bench_seed", ROOT / "benchmarks" / "seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configure(app_url: str, s3_endpoint: str, payments: Any, crm: Any, bucket: str, desk: Any, warehouse_url: str,
               events_table: str) -> None:  # fmt: skip
    """Airflow connections for the workflow functions (before Airflow is imported)."""
    from urllib.parse import urlsplit

    from governance.crypto import generate_key_connection

    parts = urlsplit(app_url)
    app = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port or 5432,
           "login": parts.username or "postgres", "schema": parts.path.lstrip("/")}  # fmt: skip
    if parts.password:
        app["password"] = parts.password
    os.environ.update({
        "AIRFLOW_CONN_AIRCALLS_APP": json.dumps(app),
        "AIRFLOW_CONN_GOVERNANCE_DB": json.dumps(app),
        "AIRFLOW_CONN_AIRCALLS_WAREHOUSE": json.dumps({**app, "schema": urlsplit(warehouse_url).path.lstrip("/")}),
        "AIRFLOW_CONN_AIRCALLS_OBJECTS": json.dumps({"conn_type": "aws", "login": "bench", "password": "bench",
                                                     "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}),
        "AIRFLOW_CONN_PAYMENTS_PROCESSOR": json.dumps({"conn_type": "http", "host": payments.url, "password": payments.api_key}),
        "AIRFLOW_CONN_CRM": json.dumps({"conn_type": "http", "host": crm.url, "password": crm.api_key}),
        "AIRFLOW_CONN_SUPPORT_DESK": json.dumps({"conn_type": "http", "host": desk.url, "login": "governance",
                                                 "password": desk.api_key}),
        "GOVERNANCE_OBJECTS_BUCKET": bucket,
        "AIRFLOW_CONN_AIRCALLS_EVENTS": json.dumps({"conn_type": "aws", "login": "bench", "password": "bench",
                                                    "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}),
        "GOVERNANCE_CALL_EVENTS_TABLE": events_table,
    })  # fmt: skip
    os.environ.setdefault("AIRFLOW_CONN_GOVERNANCE_HASH_KEY", json.dumps(generate_key_connection("hash", "bench-hash")))
    os.environ.setdefault("AIRFLOW_CONN_GOVERNANCE_ENCRYPTION_KEY",
                          json.dumps(generate_key_connection("encryption", "bench-enc")))  # fmt: skip


def _median_pair(project: Callable[[], float], baseline: Callable[[], float], repeat: int) -> tuple[float, float]:
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(repeat):  # alternate which side goes first, so cache warmth favours neither
        if i % 2:
            theirs.append(baseline())
            ours.append(project())
        else:
            ours.append(project())
            theirs.append(baseline())
    return statistics.median(ours), statistics.median(theirs)


# The same rows in the analytics warehouse (another database), by hand: through the app's ids the
# hand-written app statements use, and by e-mail.
WAREHOUSE_BASELINE = [
    ("call_facts", "DELETE FROM analytics.call_facts WHERE call_id = ANY(%(calls)s)"),
    ("user_sessions", "DELETE FROM analytics.user_sessions WHERE user_id = ANY(%(users)s)"),
    ("marketing_audience", "DELETE FROM analytics.marketing_audience WHERE lower(normalize(email, NFC)) = %(email)s"),
]  # fmt: skip


def measure_person(app_url: str, key: str, repeat: int, as_of: datetime, warehouse_url: str, dynamodb: Any) -> dict[str, Any]:
    """Plan the person's erasure (stored), then time both database phases (rolled back): the app's
    transaction and the warehouse's, each side in both databases, and the person's DynamoDB items
    (put back before each run)."""
    import psycopg

    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.datamap import load_datamap, phone_region
    from governance.db import conninfo_for
    from governance.erasure import store
    from governance.erasure.executor import approved_statements, run_database_steps
    from governance.identity import SubjectIdentities
    from governance.privacy_requests import create_request
    from governance.workflows.dsr_erasure import _processor_client, compute_work
    from governance_dev.seed import cast_member

    subject = cast_member(key)
    identities = SubjectIdentities.parse(email=subject.email, phone=subject.phone, region=phone_region())
    datamap = load_datamap()
    hasher = hasher_from_airflow()
    with psycopg.connect(app_url) as conn:
        request_id = create_request(conn, kind="erasure", identities=identities, hasher=hasher,
                                    cipher=cipher_from_airflow(), received_at=as_of, source="cli")  # fmt: skip
    plan_id = store.plan_id_for(request_id, f"bench-{key}")
    memory = _benchmark_module("export")
    base_mb = memory._rss_mb()
    sampler = memory.PeakSampler()
    sampler.__enter__()
    started = time.perf_counter()
    work = compute_work(
        datamap, identities, request_id=request_id, plan_id=plan_id, business_id=None, as_of=as_of, override=True,
        governance_conninfo=app_url, system_conninfo=conninfo_for, processor_client=_processor_client(datamap),
        hasher=hasher,
    )  # fmt: skip
    plan_s = time.perf_counter() - started
    with psycopg.connect(app_url) as conn:
        store.save_plan(conn, work, status="approved", dag_id="bench", dag_run_id=f"bench-{key}", dry_run=False,
                        as_of=as_of, override=True, refusal=None, at=as_of)  # fmt: skip
    with psycopg.connect(app_url) as conn:  # every erasure task reloads the stored plan
        work, _row = store.load_plan(conn, plan_id)
    steps = work.steps_of("aircalls_app")
    warehouse_steps = work.steps_of("aircalls_warehouse")
    rows = sum(s.planned for s in [*steps, *warehouse_steps])
    # The executor rebuilds the plan's statements from the map and checks them against the
    # approved plan once, before its transaction: timed apart from the database phase.
    checks = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        statements = approved_statements(datamap, work)
        checks.append(time.perf_counter() - t0)

    def project() -> float:
        with psycopg.connect(app_url) as conn:
            t0 = time.perf_counter()  # what the executor does: statements, then the progress rows
            affected = run_database_steps(conn, statements, steps, batch_size=datamap.settings.erasure_batch_size)
            records = {sid: (n, {}) for sid, n in affected.items()}
            records["db:aircalls_app"] = (sum(affected.values()), {"rows": affected})
            store.record_progress_many(conn, plan_id, records, at=as_of)
            elapsed = time.perf_counter() - t0
            conn.rollback()
        with psycopg.connect(warehouse_url) as wh, psycopg.connect(app_url) as gov:
            t0 = time.perf_counter()  # the warehouse's own transaction, its progress in the governance schema
            affected = run_database_steps(wh, statements, warehouse_steps, batch_size=datamap.settings.erasure_batch_size)
            records = {sid: (n, {}) for sid, n in affected.items()}
            records["db:aircalls_warehouse"] = (sum(affected.values()), {"rows": affected})
            store.record_progress_many(gov, plan_id, records, at=as_of)
            elapsed += time.perf_counter() - t0
            wh.rollback()
            gov.rollback()
        return elapsed

    params = {"users": [subject.user_id] if subject.user_id else [], "callers": list(subject.caller_ids), "as_of": as_of,
              "email": identities.email or ""}  # fmt: skip
    baseline_rows: dict[str, int] = {}

    def baseline() -> float:
        with psycopg.connect(app_url) as conn:
            t0 = time.perf_counter()
            calls = [r[0] for r in conn.execute("SELECT id FROM app.calls WHERE caller_id = ANY(%(callers)s)", params)]
            for name, statement in BASELINE:
                baseline_rows[name] = conn.execute(statement, params).rowcount  # type: ignore[arg-type]
            elapsed = time.perf_counter() - t0
            conn.rollback()
        with psycopg.connect(warehouse_url) as wh:
            t0 = time.perf_counter()
            for name, statement in WAREHOUSE_BASELINE:
                baseline_rows[f"warehouse.{name}"] = wh.execute(statement, {**params, "calls": calls}).rowcount  # type: ignore[arg-type]
            elapsed += time.perf_counter() - t0
            wh.rollback()
        return elapsed

    # The call-event store: the person's items, saved whole so each run starts with them present.
    from governance.connectors.dynamodb import delete_keys, item_keys, person_queries

    table = os.environ["GOVERNANCE_CALL_EVENTS_TABLE"]
    phone = identities.phone or ""
    condition = {"TableName": table, "KeyConditionExpression": "caller_phone = :p",
                 "ExpressionAttributeValues": {":p": {"S": phone}}}  # fmt: skip
    saved = [i for page in dynamodb.get_paginator("query").paginate(**condition) for i in page["Items"]]
    queries = person_queries(datamap, ["phone"])

    def put_back() -> None:
        for start in range(0, len(saved), 25):
            dynamodb.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": i}} for i in saved[start:start + 25]]})

    def project_items() -> float:
        put_back()
        t0 = time.perf_counter()  # what delete_planned_items does: the plan's Query, then batched deletes
        for query in queries:
            keys, _kept = item_keys(dynamodb, query, [phone])
            delete_keys(dynamodb, query.table_name, keys)
        return time.perf_counter() - t0

    def baseline_items() -> float:
        put_back()
        t0 = time.perf_counter()  # by hand: Query the keys, BatchWriteItem 25 at a time
        keys = [{"caller_phone": i["caller_phone"], "occurred_at": i["occurred_at"]}
                for page in dynamodb.get_paginator("query").paginate(**condition, ProjectionExpression="caller_phone, occurred_at")
                for i in page["Items"]]  # fmt: skip
        for start in range(0, len(keys), 25):
            pending: dict[str, Any] = {table: [{"DeleteRequest": {"Key": k}} for k in keys[start:start + 25]]}
            while pending:
                pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        return time.perf_counter() - t0

    ours, theirs = _median_pair(lambda: project() + project_items(), lambda: baseline() + baseline_items(), repeat)
    items_ours, items_theirs = _median_pair(project_items, baseline_items, repeat)
    sql_ours, sql_theirs = _median_pair(project, baseline, repeat)  # the SQL databases alone
    put_back()
    sampler.__exit__()
    return {"person": key, "rows": rows, "baseline_rows": sum(baseline_rows.values()), "plan_s": plan_s,
            "statements_check_s": statistics.median(checks), "items": len(saved), "growth_mb": sampler.peak - base_mb,
            "items_project_s": items_ours, "items_baseline_s": items_theirs, "sql_project_s": sql_ours, "sql_baseline_s": sql_theirs,
            "project_s": ours, "baseline_s": theirs, "ratio": ours / theirs if theirs else float("inf")}  # fmt: skip


def _measure_child(app_url: str, key: str, repeat: int, as_of: datetime, warehouse_url: str, endpoint: str) -> dict[str, Any]:
    import boto3

    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                            region_name="us-east-1")  # fmt: skip
    return measure_person(app_url, key, repeat, as_of, warehouse_url, dynamodb)


def measure_in_child(app_url: str, key: str, repeat: int, as_of: datetime, warehouse_url: str, endpoint: str) -> dict[str, Any]:
    """:func:`measure_person` in a fresh (spawned) process, so its peak RSS growth is the person's
    plan, reload and database phase, not under memory the seeder already raised this process to."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_child, (app_url, key, repeat, as_of, warehouse_url, endpoint))  # type: ignore[no-any-return]


VERIFY_SHARE_GOAL = 0.20
VERIFY = "verify"
EXECUTORS = {"preloading": "governance.executors.PreloadingLocalExecutor", "local": "LocalExecutor"}


def preload_like_the_scheduler() -> float:
    """What ``PreloadingLocalExecutor`` does once in the scheduler before forking workers; seconds."""
    from governance.executors import preload_modules, preload_names

    t0 = time.perf_counter()
    preload_modules(preload_names())
    return time.perf_counter() - t0


def end_to_end(key: str, as_of: datetime) -> dict[str, float]:
    """Erase ``key`` for real, task function by task function; seconds per phase."""
    from governance.workflows import dsr_erasure as wf
    from governance_dev.seed import cast_member

    subject = cast_member(key)
    run_id = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    approval = {"chosen_options": ["Approve"], "params_input": {"verification_method": "id_document"},
                "responded_by_user": {"id": "1", "name": "bench"}}  # fmt: skip
    times: dict[str, float] = {}

    def timed(name: str, call: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = call()
        times[name] = time.perf_counter() - t0
        return result

    handle = timed("open_request", lambda: wf.open_erasure_request({"email": subject.email, "phone": subject.phone},
                                                                   run_id=run_id, received_at=as_of))  # fmt: skip
    summary = timed("plan", lambda: wf.plan_erasure(handle, dry_run=False, override=False, dag_id="dsr_erasure",
                                                    run_id=run_id, as_of=as_of))  # fmt: skip
    timed("database", lambda: wf.execute_database(summary, approval=approval, run_id=run_id))
    timed("suppression", lambda: wf.record_suppression(summary))
    timed("objects", lambda: wf.delete_objects(summary))
    timed("processors", lambda: wf.erase_processors(summary))
    timed(VERIFY, lambda: wf.verify_erasure(summary))
    timed("certificate", lambda: wf.issue_certificate(handle, dag_id="dsr_erasure", run_id=run_id))
    close = timed("close", lambda: wf.close_erasure_request(handle, run_id=run_id))
    times["total"] = sum(times.values())
    assert close.get("status") == "completed", close
    return times


def copy_database(admin_url: str, template: str) -> str:
    """A copy of ``template`` (file level, fast), for a run that must start from the seeded state."""
    import psycopg
    from psycopg import sql

    name = f"{template}_copy_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return name


def standalone_run(admin_url: str, database: str, key: str, executor: str) -> dict[str, Any]:
    """Erase ``key`` in ``database`` through ``dsr_erasure`` under a real ``airflow standalone``."""
    import psycopg

    from governance.crypto import cipher_from_airflow, generate_key_connection, hasher_from_airflow
    from governance.datamap import phone_region
    from governance.identity import SubjectIdentities
    from governance.privacy_requests import create_request
    from governance.workflows.request_intake import mark_approved, mark_verified
    from governance_dev.seed import cast_member

    harness = _benchmark_module("airflow_standalone")
    url = _seed_helpers().database_url(admin_url, database)
    conn_json = json.loads(os.environ["AIRFLOW_CONN_AIRCALLS_APP"])
    conn_json["schema"] = database
    env = {"AIRFLOW_CONN_AIRCALLS_APP": json.dumps(conn_json), "AIRFLOW_CONN_GOVERNANCE_DB": json.dumps(conn_json),
           "AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY": os.environ.get("AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY")
           or json.dumps(generate_key_connection("hash", "bench-ledger"))}  # fmt: skip
    subject = cast_member(key)
    identities = SubjectIdentities.parse(email=subject.email, phone=subject.phone, region=phone_region())
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        request_id = create_request(conn, kind="erasure", identities=identities, hasher=hasher_from_airflow(),
                                    cipher=cipher_from_airflow(), received_at=now, source="cli")  # fmt: skip
    mark_verified(request_id, method="id_document", verified_by="bench-intake", at=now, conninfo=url)
    mark_approved(request_id, approved_by="bench-intake", at=now, conninfo=url)
    airflow = harness.StandaloneAirflow(admin_url, ROOT / "dags", ROOT / "plugins", executor=EXECUTORS[executor],
                                        env_extra=env)  # fmt: skip
    try:
        print(f"  airflow standalone ({executor} executor) starting ...", flush=True)
        airflow.start({"dsr_erasure"})
        run_id = airflow.trigger("dsr_erasure", {"request_id": request_id, "dry_run": False})
        state = airflow.wait_run("dsr_erasure", run_id)
        tasks = {t: (st, a, b) for t, st, a, b in airflow.task_times("dsr_erasure", run_id)}
        logs = airflow.task_logs()
    finally:
        airflow.stop()

    def took(task_id: str) -> float:
        _state, began, ended = tasks.get(task_id, ("", None, None))
        return (ended - began).total_seconds() if began and ended else float("nan")

    starts = [b for _s, b, _e in tasks.values() if b]
    ends = [e for _s, _b, e in tasks.values() if e]
    run_s = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    verify_log = [line for line in logs.splitlines() if "Great Expectations imported in this process" in line]
    return {"executor": executor, "state": state, "run_s": run_s, "database_s": took("execute_database"),
            "verify_s": took("verify_erasure"), "tasks_s": sum(took(t) for t in tasks if tasks[t][1]),
            "gx_imported_in_task": bool(verify_log)}  # fmt: skip


_MODULES: dict[str, Any] = {}


def _benchmark_module(name: str) -> Any:
    if name in _MODULES:
        return _MODULES[name]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    _MODULES[name] = module
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="small,large")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--people", default="both_user_and_caller,payer")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run")
    # heavy_subject (1,000 recordings of 256 KiB at large) exhausts moto's memory: the S3 stand-in
    # keeps every version in RAM. Against MinIO, pass --e2e-person heavy_subject.
    parser.add_argument("--e2e-person", default="both_user_and_caller", help="who is erased end to end (last scale)")
    parser.add_argument("--no-preload", action="store_true",
                        help="do not preload Great Expectations (verify pays its import, as before)")  # fmt: skip
    parser.add_argument("--standalone", action="store_true", help="also erase under a real airflow standalone")
    parser.add_argument("--executors", default="preloading,local", help="executors for --standalone, in order")
    parser.add_argument("--warehouse-facts", type=int, default=0,
                        help="pad the warehouse's call facts to this many rows (other callers) at every scale")
    parser.add_argument("--heavy-events", type=int, default=0,
                        help="usage events added to both_user_and_caller's user before measuring (#12: 1000000)")  # fmt: skip
    args = parser.parse_args(argv)

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-erasure-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    helpers = _seed_helpers()
    admin_url = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    as_of = datetime(2026, 11, 28, 12, tzinfo=UTC)
    people = [p for p in args.people.split(",") if p]
    results: dict[str, list[dict[str, Any]]] = {}
    e2e: dict[str, dict[str, float]] = {}
    standalone: list[dict[str, Any]] = []
    scales = [s for s in args.scales.split(",") if s]
    if not args.no_preload and not args.no_e2e:
        e2e["preload"] = {"preload_s": preload_like_the_scheduler()}
        print(f"Great Expectations preloaded in {e2e['preload']['preload_s']:.1f} s (once, as the scheduler does "
              "before forking LocalExecutor's workers)", flush=True)  # fmt: skip
    try:
        _run_scales(helpers, args, scales, people, admin_url, as_of, results, e2e, standalone)
    except subprocess.TimeoutExpired:  # the S3 stand-in was slow to stop after a large run
        pass
    _print_summary(args, results, e2e, standalone, helpers.peak_rss_mb())
    return 0


def pad_call_facts(warehouse_url: str, total: int) -> int:
    """Bring ``analytics.call_facts`` to ``total`` rows with facts of calls the app no longer holds
    (ids past the app's, callers from a reserved +1 555 range nobody in the cast has), spread over
    three years, as a warehouse's history outgrows the app. Returns how many were added."""
    import psycopg

    with psycopg.connect(warehouse_url) as conn:
        have, top = conn.execute("SELECT count(*), coalesce(max(call_id), 0) FROM analytics.call_facts").fetchone()  # type: ignore[misc]
        missing = max(0, total - have)
        conn.execute(
            "INSERT INTO analytics.call_facts (call_id, business_id, caller_phone, started_at, duration_s, outcome, loaded_at)"
            " SELECT %(top)s + g, 1 + g %% 997, '+1555' || lpad((g %% 9000000)::text, 7, '0'),"
            " now() - make_interval(secs => g %% 94608000), 30 + g %% 600, (ARRAY['answered','missed','voicemail'])[1 + g %% 3], now()"
            " FROM generate_series(1, %(n)s) AS g",
            {"top": top, "n": missing},
        )
        conn.commit()
        conn.execute("ANALYZE analytics.call_facts")
    return missing


def _run_scales(
    helpers: Any, args: argparse.Namespace, scales: list[str], people: list[str], admin_url: str, as_of: datetime,
    results: dict[str, list[dict[str, Any]]], e2e: dict[str, dict[str, float]], standalone: list[dict[str, Any]],
) -> None:
    import boto3

    from governance.migrations import migrate
    from governance_dev.seed import SeedTargets, seed_reference_deployment
    from governance_dev.services import create_database, drop_database
    from governance_dev.standins import start_standins, start_support_desk

    with helpers.moto_server() as s3:
        endpoint = s3.meta.endpoint_url
        dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                                region_name="us-east-1")  # fmt: skip
        for scale in scales:
            name = f"bench_erasure_{scale}_{uuid.uuid4().hex[:8]}"
            create_database(admin_url, name)
            create_database(admin_url, f"{name}_wh")  # the analytics warehouse: a second database
            url = helpers.database_url(admin_url, name)
            warehouse_url = helpers.database_url(admin_url, f"{name}_wh")
            payments, crm = start_standins(api_key="bench-key")
            desk = start_support_desk(api_key="bench-key")
            bucket = f"bench-erasure-{scale}-{uuid.uuid4().hex[:6]}"
            events_table = f"bench-events-{scale}-{uuid.uuid4().hex[:6]}"
            try:
                print(f"seeding {scale} into {name} ...", flush=True)
                t0 = time.perf_counter()
                seed_reference_deployment(
                    SeedTargets(app_conninfo=url, s3=s3, bucket=bucket, payments_url=payments.url,
                                payments_api_key=payments.api_key, crm_url=crm.url, crm_api_key=crm.api_key,
                                support_desk_url=desk.url, warehouse_conninfo=warehouse_url, dynamodb=dynamodb,
                                call_events_table=events_table),
                    scale=scale,
                )  # fmt: skip
                items = dynamodb.describe_table(TableName=events_table)["Table"].get("ItemCount", 0)
                print(f"  seeded in {time.perf_counter() - t0:.0f} s (call-event store: {items:,} items)", flush=True)
                migrate(url)
                _configure(url, endpoint, payments, crm, bucket, desk, warehouse_url, events_table)
                copies: dict[str, str] = {}
                if args.standalone and scale == scales[-1]:  # before anything of the person is erased
                    for executor in [e for e in args.executors.split(",") if e]:
                        t0 = time.perf_counter()
                        copies[executor] = copy_database(admin_url, name)
                        print(f"  copied the seeded database for the {executor} run in {time.perf_counter() - t0:.0f} s",
                              flush=True)  # fmt: skip
                if args.warehouse_facts:
                    t0 = time.perf_counter()
                    added = pad_call_facts(warehouse_url, args.warehouse_facts)
                    print(f"  added {added:,} call facts of other callers (warehouse now {args.warehouse_facts:,} facts) "
                          f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
                if args.heavy_events:
                    t0 = time.perf_counter()
                    _benchmark_module("export").plant_usage_events(url, "both_user_and_caller", args.heavy_events)
                    print(f"  planted {args.heavy_events:,} usage events in {time.perf_counter() - t0:.0f} s", flush=True)
                results[scale] = []
                for key in people:
                    result = measure_in_child(url, key, args.repeat, as_of, warehouse_url, endpoint)
                    results[scale].append(result)
                    print(f"  {key}: {result['items']} DynamoDB items; item phase project {result['items_project_s'] * 1000:.1f} ms, "
                          f"hand-written {result['items_baseline_s'] * 1000:.1f} ms", flush=True)  # fmt: skip
                    print(f"  {key}: SQL databases only: project {result['sql_project_s'] * 1000:.1f} ms, "
                          f"hand-written {result['sql_baseline_s'] * 1000:.1f} ms", flush=True)  # fmt: skip
                    print(f"  {key}: {result['rows']} rows; database phase project {result['project_s'] * 1000:.1f} ms, "
                          f"hand-written {result['baseline_s'] * 1000:.1f} ms ({result['baseline_rows']} rows), "
                          f"ratio {result['ratio']:.2f}; plan {result['plan_s']:.2f} s; "
                          f"statements checked against the plan {result['statements_check_s'] * 1000:.1f} ms; "
                          f"peak RSS growth {result['growth_mb']:.0f} MB", flush=True)  # fmt: skip
                if not args.no_e2e and scale == scales[-1]:
                    e2e[scale] = end_to_end(args.e2e_person, as_of)
                    print(f"  end to end ({args.e2e_person}): "
                          + ", ".join(f"{k} {v:.2f} s" for k, v in e2e[scale].items()), flush=True)  # fmt: skip
                for executor, copy in copies.items():
                    try:
                        standalone.append({"scale": scale, **standalone_run(admin_url, copy, args.e2e_person, executor)})
                        print(f"  standalone: {standalone[-1]}", flush=True)
                    finally:
                        drop_database(admin_url, copy)
            finally:
                payments.stop()
                crm.stop()
                desk.stop()
                drop_database(admin_url, name)
                drop_database(admin_url, f"{name}_wh")
                try:  # moto holds the items in memory: free them before the next scale
                    dynamodb.delete_table(TableName=events_table)
                except Exception:
                    pass


def _print_summary(
    args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], e2e: dict[str, dict[str, float]],
    standalone: list[dict[str, Any]], rss: float,
) -> None:
    print()
    print(f"{'person':24} {'scale':6} {'rows':>8} {'project ms':>11} {'hand ms':>9} {'ratio':>6} {'RSS +MB':>8}"
          f"  (goal <= {DB_GOAL}; heavy subject: growth < {HEAVY_MEMORY_GOAL_MB} MB)")  # fmt: skip
    for scale, rows in results.items():
        for r in rows:
            print(f"{r['person']:24} {scale:6} {r['rows']:>8} {r['project_s'] * 1000:>11.1f} {r['baseline_s'] * 1000:>9.1f} "
                  f"{r['ratio']:>6.2f} {r['growth_mb']:>8.0f}  {'met' if r['ratio'] <= DB_GOAL else 'NOT met'}")  # fmt: skip
    if "small" in results and "large" in results:
        large_by_person = {r["person"]: r for r in results["large"]}
        for small in results["small"]:
            large = large_by_person.get(small["person"])
            if large is None:  # the large run stopped before measuring this person
                print(f"{small['person']:24} large: not measured")
                continue
            ratio = large["project_s"] / small["project_s"] if small["project_s"] else float("inf")
            print(f"{small['person']:24} large/small database phase {ratio:.2f}  (goal <= {SCALE_GOAL}: "
                  f"{'met' if ratio <= SCALE_GOAL else 'NOT met'})")  # fmt: skip
            sql_ratio = large["sql_project_s"] / small["sql_project_s"] if small["sql_project_s"] else float("inf")
            print(f"{small['person']:24} large/small SQL databases only (app + warehouse) {sql_ratio:.2f}  (goal <= {SCALE_GOAL}: "
                  f"{'met' if sql_ratio <= SCALE_GOAL else 'NOT met'}); the DynamoDB item phase is apart: on moto a "
                  "Query's time grows with the table, the hand-written Query's alike")  # fmt: skip
            if small.get("items") and small["items_project_s"]:
                item_ratio = large["items_project_s"] / small["items_project_s"]
                print(f"{small['person']:24} large/small DynamoDB item phase {item_ratio:.2f} ({small['items']} items; "
                      "Query by partition key, so the table's size should not show)")  # fmt: skip
    print(f"\n{'person':24} {'scale':6} {'project ms':>11} {'hand ms':>9} {'ratio':>6}  (SQL databases only: app + warehouse)")
    for scale, rows in results.items():
        for r in rows:
            ratio = r["sql_project_s"] / r["sql_baseline_s"] if r["sql_baseline_s"] else float("inf")
            print(f"{r['person']:24} {scale:6} {r['sql_project_s'] * 1000:>11.1f} {r['sql_baseline_s'] * 1000:>9.1f} {ratio:>6.2f}")
    print(f"\n{'person':24} {'scale':6} {'items':>6} {'project ms':>11} {'hand ms':>9} {'ratio':>6}  (DynamoDB, included above)")
    for scale, rows in results.items():
        for r in rows:
            if r.get("items"):
                ratio = r["items_project_s"] / r["items_baseline_s"] if r["items_baseline_s"] else float("inf")
                print(f"{r['person']:24} {scale:6} {r['items']:>6} {r['items_project_s'] * 1000:>11.1f} "
                      f"{r['items_baseline_s'] * 1000:>9.1f} {ratio:>6.2f}")  # fmt: skip
    for scale, times in e2e.items():
        if scale == "preload":
            continue
        print(f"\nend to end, {args.e2e_person} at {scale}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        share = times[VERIFY] / times["total"]
        preload = e2e.get("preload", {}).get("preload_s")
        print(f"approved run {times['total']:.2f} s (database phase {times['database']:.2f} s); verification "
              f"{times[VERIFY]:.2f} s = {share:.0%} of the run (goal <= {VERIFY_SHARE_GOAL:.0%}: "
              f"{'met' if share <= VERIFY_SHARE_GOAL else 'NOT met'}); "
              + (f"Great Expectations preloaded once beforehand in {preload:.1f} s" if preload is not None
                 else "Great Expectations imported inside verification (--no-preload)"))  # fmt: skip
    for run in standalone:
        share = run["verify_s"] / run["run_s"]
        print(f"airflow standalone, {run['executor']} executor, {args.e2e_person} at {run['scale']}: run {run['state']}, "
              f"approved run {run['run_s']:.1f} s (tasks {run['tasks_s']:.1f} s; database task {run['database_s']:.1f} s); "
              f"verification task {run['verify_s']:.1f} s = {share:.0%} (goal <= {VERIFY_SHARE_GOAL:.0%}: "
              f"{'met' if share <= VERIFY_SHARE_GOAL else 'NOT met'}); Great Expectations imported by the task: "
              f"{'yes' if run['gx_imported_in_task'] else 'no (preloaded)'}")  # fmt: skip
    print(f"peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
