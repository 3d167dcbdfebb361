"""The intake at volume: N verified small requests (half exports, half erasures) recorded at once,
dispatched by ``privacy_request_intake`` and completed, under LocalExecutor (``airflow
standalone``) and under the CeleryExecutor with two workers, metadata on PostgreSQL both times.

The reference deployment is seeded once (small scale: PostgreSQL app database and warehouse, an S3
API server (moto, child process), the processor stand-ins); each executor gets its own copy of the
databases and the bucket (``CREATE DATABASE ... TEMPLATE``, objects copied), so both serve the same
people from the same state. The people are callers of the seed with an e-mail address and few rows
(the smallest first), different people for exports and erasures, each request recorded and
verified as staff would (``request new`` + ``request verify``: for an erasure that is its approval).
Airflow then runs with a DAGs folder of the three workflows only; its scheduled intake pass (and
one triggered) dispatch everything. Printed per executor:

* requests per hour: N / (last completion - first dispatch);
* per kind, the median and 95th percentile from dispatch (the request's run created) to completion
  (that run ended), read from Airflow's metadata database;
* the peak resident memory of all of Airflow's processes together (sampled every second) and of
  this process;
* the bottleneck: task-instance seconds per request (each a process of its own) against the
  wall time, and the time the intake's one-task-per-request dispatch took.

Fides, for comparison (measured on this machine the same week, its eager mode, no workers): an
83-row subject erased in about 5 s, i.e. about 720 requests per hour one after the other.

    .venv/bin/python benchmarks/intake.py [--requests 200] [--executors local,celery] [--workers 2]

Redis must answer on 127.0.0.1:6379 for the Celery run (it is skipped otherwise). Needs PostgreSQL
at ``GOVERNANCE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKFLOWS = ("privacy_request_intake", "dsr_export", "dsr_erasure")
FIDES_ERASURE_S = 5.0  # Fides eager mode, an 83-row subject, this machine


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@dataclass
class MemorySampler:
    """Peak summed RSS (MiB) of the process trees rooted at ``pids``, sampled every second."""

    pids: list[int]
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        try:
                            total += proc.memory_info().rss
                        except psutil.Error:
                            pass
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(1.0)

    def __enter__(self) -> MemorySampler:
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def pick_people(url: str, n: int) -> tuple[list[str], list[str]]:
    """E-mail addresses of ``n`` different callers with the fewest calls: half to export, half to erase."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT lower(c.email) FROM app.callers c LEFT JOIN app.calls k ON k.caller_id = c.id"
            " WHERE c.email IS NOT NULL AND lower(c.email) NOT IN (SELECT lower(email) FROM app.users WHERE email IS NOT NULL)"
            " GROUP BY lower(c.email) ORDER BY count(k.id), lower(c.email) LIMIT %s", (n,),
        ).fetchall()  # fmt: skip
    emails = [r[0] for r in rows]
    if len(emails) < n:
        raise SystemExit(f"only {len(emails)} callers with an e-mail in the seed; ask for fewer --requests")
    half = (n + 1) // 2
    return emails[:half], emails[half:]


def record_verified(url: str, exports: list[str], erasures: list[str]) -> list[str]:
    import psycopg

    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.identity import SubjectIdentities
    from governance.privacy_requests import create_request, verify_request

    now = datetime.now(UTC)
    ids: list[str] = []
    hasher, cipher = hasher_from_airflow(), cipher_from_airflow()
    with psycopg.connect(url) as conn:
        for kind, emails in (("export", exports), ("erasure", erasures)):
            for email in emails:
                ids.append(create_request(conn, kind=kind, identities=SubjectIdentities.parse(email=email),  # type: ignore[arg-type]
                                          hasher=hasher, cipher=cipher, received_at=now, source="cli"))  # fmt: skip
    for request_id in ids:
        verify_request(url, request_id, method="id_document", by="bench-intake", at=now)
    return ids


def copy_bucket(s3: Any, source: str, target: str) -> int:
    s3.create_bucket(Bucket=target)
    copied = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source):
        for item in page.get("Contents", []):
            s3.copy_object(Bucket=target, Key=item["Key"], CopySource={"Bucket": source, "Key": item["Key"]})
            copied += 1
    return copied


def wait_served(url: str, ids: list[str], timeout_s: float, alive: Any) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            done = conn.execute("SELECT count(*) FROM governance.privacy_requests WHERE request_id = ANY(%s)"
                                " AND status IN ('completed', 'failed', 'rejected')", (ids,)).fetchone()[0]  # fmt: skip
        if done != last:
            print(f"    {done}/{len(ids)} served", flush=True)
            last = done
        if done == len(ids):
            return
        alive()
        time.sleep(5)
    raise RuntimeError(f"only {last} of {len(ids)} requests were served within {timeout_s:.0f} s")


def figures(url: str, ids: list[str], metadata_url: str) -> dict[str, Any]:
    """Per request: dispatch = when its run was created (``dag_run.queued_at``), completion = when
    that run ended (``end_date``). (The lifecycle's own times are the intake and workflow runs'
    logical times, up to an intake interval earlier than the wall clock.)"""
    import psycopg

    from governance.dispatch import dispatch_run_id

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT request_id, kind, status FROM governance.privacy_requests WHERE request_id = ANY(%s)",
                            (ids,)).fetchall()  # fmt: skip
    kinds = {r: k for r, k, _s in rows}
    with psycopg.connect(metadata_url) as meta:
        runs = {r: (q, e) for r, q, e in meta.execute(
            "SELECT run_id, queued_at, end_date FROM dag_run WHERE dag_id IN ('dsr_export', 'dsr_erasure') AND run_id = ANY(%s)",
            ([dispatch_run_id(i) for i in ids],)).fetchall()}  # fmt: skip
        task_rows = meta.execute(
            "SELECT dag_id, task_id, count(*), sum(extract(epoch FROM end_date - start_date)) FROM task_instance"
            " WHERE dag_id = ANY(%s) AND start_date IS NOT NULL AND end_date IS NOT NULL GROUP BY dag_id, task_id",
            (list(WORKFLOWS),),
        ).fetchall()  # fmt: skip
    statuses: dict[str, int] = {}
    for _r, _kind, status in rows:
        statuses[status] = statuses.get(status, 0) + 1
    per_kind: dict[str, list[float]] = {}
    starts, ends = [], []
    for request_id in ids:
        queued, ended = runs.get(dispatch_run_id(request_id), (None, None))
        if queued is None or ended is None:
            continue
        starts.append(queued)
        ends.append(ended)
        per_kind.setdefault(kinds[request_id], []).append((ended - queued).total_seconds())
    span = (max(ends) - min(starts)).total_seconds() if starts else float("nan")
    tasks = {f"{d}.{t}": (int(n), float(s or 0)) for d, t, n, s in task_rows}
    return {"statuses": statuses, "per_kind": per_kind, "span_s": span,
            "per_hour": len(ids) / span * 3600 if span and span > 0 else float("nan"), "tasks": tasks}  # fmt: skip


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))] if ordered else float("nan")


def run_executor(executor: str, *, admin_url: str, template: str, warehouse: str, bucket: str, s3: Any, n: int,
                 workers: int, timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """One executor's run on fresh copies of the seeded databases and bucket."""
    erasure = _module("erasure")
    helpers = _module("seed")
    from governance.crypto import generate_key_connection
    from governance_dev.celery_cluster import CeleryAirflow, dags_folder_of, redis_answers
    from governance_dev.services import create_database, drop_database

    app_db = erasure.copy_database(admin_url, template)
    wh_db = erasure.copy_database(admin_url, warehouse)
    copy = f"{bucket}-{executor}"
    url = helpers.database_url(admin_url, app_db)
    print(f"  {executor}: copying the bucket ...", flush=True)
    copy_bucket(s3, bucket, copy)
    app = json.loads(os.environ["AIRFLOW_CONN_AIRCALLS_APP"])
    env = {"AIRFLOW_CONN_AIRCALLS_APP": json.dumps({**app, "schema": app_db}),
           "AIRFLOW_CONN_GOVERNANCE_DB": json.dumps({**app, "schema": app_db}),
           "AIRFLOW_CONN_AIRCALLS_WAREHOUSE": json.dumps({**app, "schema": wh_db}),
           "AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY": os.environ.get("AIRFLOW_CONN_GOVERNANCE_LEDGER_KEY")
           or json.dumps(generate_key_connection("hash", "bench-ledger")),
           "GOVERNANCE_OBJECTS_BUCKET": copy}  # fmt: skip
    exports, erasures = pick_people(url, n)
    home = Path(tempfile.mkdtemp(prefix=f"bench-intake-{executor}-"))
    dags = dags_folder_of([f"{d}.py" for d in WORKFLOWS], home / "dags")
    meta_dbs: list[str] = []
    cluster: Any
    try:
        if executor == "celery":
            meta, results = f"bench_intake_meta_{uuid.uuid4().hex[:6]}", f"bench_intake_results_{uuid.uuid4().hex[:6]}"
            for name in (meta, results):
                create_database(admin_url, name)
                meta_dbs.append(name)
            cluster = CeleryAirflow(metadata_url=helpers.database_url(admin_url, meta),
                                    result_backend_url=helpers.database_url(admin_url, results), dags_folder=dags,
                                    workers=workers, concurrency=4, env_extra=env, home=home / "airflow")  # fmt: skip
            if not redis_answers():
                raise RuntimeError("no Redis on 127.0.0.1:6379")
            started = time.perf_counter()
            cluster.start(set(WORKFLOWS))
            metadata_url = cluster.metadata_url
            pids = [p.pid for p in cluster.processes.values()]
            alive = cluster._check_alive
        else:
            harness = _module("airflow_standalone")
            cluster = harness.StandaloneAirflow(admin_url, dags, ROOT / "plugins", executor="LocalExecutor", env_extra=env,
                                                home=home / "airflow")  # fmt: skip
            (home / "airflow").mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            cluster.start(set(WORKFLOWS))
            metadata_url = cluster.metadata_url
            pids = [cluster.proc.pid]

            def alive() -> None:
                if cluster.proc.poll() is not None:
                    raise RuntimeError(f"airflow standalone exited; log {cluster.log}")

        print(f"  {executor}: Airflow up in {time.perf_counter() - started:.0f} s; recording {n} verified requests",
              flush=True)  # fmt: skip
        ids = record_verified(url, exports, erasures)
        with MemorySampler(pids) as memory:
            began = time.perf_counter()
            cluster.trigger("privacy_request_intake")
            wait_served(url, ids, timeout_s, alive)
            wall = time.perf_counter() - began
        result = figures(url, ids, metadata_url)
        result.update({"executor": executor, "requests": n, "wall_s": wall, "airflow_peak_mb": memory.peak_mb})
        return result
    finally:
        cluster.stop()
        for name in (*meta_dbs, app_db, wh_db):
            try:
                drop_database(admin_url, name)
            except Exception as exc:  # a component still connected: report, go on
                print(f"  could not drop {name}: {exc}", flush=True)


def print_result(r: dict[str, Any]) -> None:
    print(f"\n{r['executor']}: {r['requests']} requests ({r['statuses']}) in {r['wall_s']:.0f} s wall; "
          f"{r['per_hour']:.0f} requests/hour (first dispatch to last completion {r['span_s']:.0f} s); "
          f"Airflow peak RSS {r['airflow_peak_mb']:.0f} MiB")  # fmt: skip
    for kind, values in sorted(r["per_kind"].items()):
        print(f"  {kind:8} dispatch -> completed: median {statistics.median(values):.0f} s, p95 {p95(values):.0f} s "
              f"(n={len(values)})")  # fmt: skip
    task_s = sum(s for _n, s in r["tasks"].values())
    task_n = sum(n for n, _s in r["tasks"].values())
    dispatch = r["tasks"].get("privacy_request_intake.dispatch_runs", (0, 0.0))
    print(f"  {task_n} task instances, {task_s:.0f} task-seconds ({task_s / max(r['requests'], 1):.1f} per request, "
          f"{task_s / task_n if task_n else float('nan'):.1f} s per task); the intake's dispatch: {dispatch[0]} mapped "
          f"trigger tasks, {dispatch[1]:.0f} task-seconds")  # fmt: skip
    slowest = sorted(r["tasks"].items(), key=lambda kv: -kv[1][1])[:5]
    print("  most task-seconds: " + ", ".join(f"{k} {s:.0f} s/{n}" for k, (n, s) in slowest))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests in all, half exports, half erasures")
    parser.add_argument("--executors", default="local,celery")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds to wait for every request")
    args = parser.parse_args(argv)

    def interrupted(signum: int, _frame: object) -> None:  # Ctrl-C or SIGTERM: stop Airflow, drop the copies
        raise SystemExit(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    if args.requests < 2:
        parser.error("--requests: at least 2 (one export, one erasure)")

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-intake-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    helpers, erasure = _module("seed"), _module("erasure")
    from governance.migrations import migrate
    from governance_dev.seed import SeedTargets, seed_reference_deployment
    from governance_dev.services import create_database, drop_database
    from governance_dev.standins import start_standins, start_support_desk

    admin_url = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    name = f"bench_intake_{uuid.uuid4().hex[:8]}"
    results: list[dict[str, Any]] = []
    with helpers.moto_server() as s3:
        create_database(admin_url, name)
        create_database(admin_url, f"{name}_wh")
        url, wh_url = helpers.database_url(admin_url, name), helpers.database_url(admin_url, f"{name}_wh")
        payments, crm = start_standins(api_key="bench-key")
        desk = start_support_desk(api_key="bench-key")
        bucket = f"bench-intake-{uuid.uuid4().hex[:6]}"
        try:
            t0 = time.perf_counter()
            seed_reference_deployment(SeedTargets(app_conninfo=url, s3=s3, bucket=bucket, payments_url=payments.url,
                                                  payments_api_key=payments.api_key, crm_url=crm.url, crm_api_key=crm.api_key,
                                                  support_desk_url=desk.url, warehouse_conninfo=wh_url), scale="small")  # fmt: skip
            migrate(url)
            erasure._configure(url, s3.meta.endpoint_url, payments, crm, bucket, desk, wh_url)
            print(f"seeded (small) in {time.perf_counter() - t0:.0f} s", flush=True)
            for executor in [e for e in args.executors.split(",") if e]:
                try:
                    results.append(run_executor(executor, admin_url=admin_url, template=name, warehouse=f"{name}_wh",
                                                bucket=bucket, s3=s3, n=args.requests, workers=args.workers,
                                                timeout_s=args.timeout))  # fmt: skip
                    print_result(results[-1])
                except RuntimeError as exc:
                    print(f"  {executor}: {str(exc)[:3000]}", flush=True)
        finally:
            payments.stop()
            crm.stop()
            desk.stop()
            drop_database(admin_url, name)
            drop_database(admin_url, f"{name}_wh")
    print(f"\nFides (eager mode, this machine): an 83-row subject erased in about {FIDES_ERASURE_S:.0f} s "
          f"= about {3600 / FIDES_ERASURE_S:.0f} requests/hour one after the other")  # fmt: skip
    print(f"this process: peak RSS {helpers.peak_rss_mb():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
