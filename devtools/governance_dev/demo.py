"""``make demo``: the reference deployment end to end on embedded services.

Starts the services, migrates Airflow's metadata database and the governance schema, seeds the
reference deployment (small), runs every DAG in ``dags/`` once with ``dag.test()``, prints what
each run did (task states and their small JSON results: counts, ids, locations; never personal
data) and stops the services. Airflow reads its configuration at import, so the DAG runs happen
in a child process started with the stack's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap, phone_region
from governance.db import connect, conninfo_for
from governance.identity import SubjectIdentities
from governance.privacy_requests import create_request
from governance.workflows.request_intake import mark_verified
from governance_dev.seed import cast_member
from governance_dev.services import STATE_DIR, start_stack, stop_stack

if TYPE_CHECKING:
    from governance.privacy_requests import RequestKind

from governance.config import PROJECT_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-running", action="store_true", help="leave the services up afterwards")
    parser.add_argument("--scale", choices=["small", "large"], default="small")
    parser.add_argument("--dag", action="append", default=None, help="run only these DAG ids")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(cmd[1:])}` failed with exit code {result.returncode}")


def run(args: argparse.Namespace) -> int:
    if args.inside:
        return run_dags(args.dag)

    started = time.monotonic()
    _step("starting embedded services (PostgreSQL, S3 API, processor stand-ins)")
    env = {**os.environ, **start_stack()}
    try:
        _step("migrating Airflow's metadata database and the governance schema")
        _run([sys.executable, "-m", "airflow", "db", "migrate"], env)
        _run([sys.executable, "-m", "governance", "migrate"], env)
        _step(f"seeding the reference deployment ({args.scale})")
        _run([sys.executable, "-m", "governance_dev", "seed", "--scale", args.scale, "--replace"], env)
        _step("running every DAG once")
        cmd = [sys.executable, "-m", "governance_dev", "demo", "--inside"]
        for dag_id in args.dag or []:
            cmd += ["--dag", dag_id]
        # Task logs stay in $AIRFLOW_HOME/logs; the console shows warnings and the summary.
        _run(cmd, {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
        _step("maintenance pass: scrub ended runs' identities, reconcile and anchor the audit ledger")
        _run([sys.executable, "-m", "governance", "maintain", "--once", "--anchor-interval", "0s", "--lookback", "1h"],
             {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})  # fmt: skip
    finally:
        if args.keep_running:
            print(f"\nservices left running; `source {STATE_DIR / 'airflow.env'}` to use them, `make services-stop` to stop")
        else:
            stop_stack()
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s")
    return 0


def run_dags(only: list[str] | None) -> int:
    """Inside the stack's environment: dag.test() every DAG, print a summary; 1 if any failed."""
    import logging

    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    logging.getLogger("airflow").setLevel(logging.WARNING)
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"import error in {path}:\n{error}")
        return 1
    failed = 0
    for dag_id in sorted(bag.dags):
        if only and dag_id not in only:
            continue
        dag = bag.dags[dag_id]
        began = time.monotonic()
        dag_run = dag.test(run_conf=demo_conf(dag_id))
        seconds = time.monotonic() - began
        ok = dag_run.state == DagRunState.SUCCESS
        failed += not ok
        print(f"\n{dag_id}: {dag_run.state} in {seconds:.1f} s (run {dag_run.run_id})")
        for line in summarise_run(dag_run):
            print(f"  {line}")
    return 1 if failed else 0


# The cast members the demo's request DAGs serve (see governance_dev.seed.cast).
DEMO_EXPORT_SUBJECT = "caller_only"
DEMO_ERASURE_SUBJECT = "both_user_and_caller"


def demo_conf(dag_id: str) -> dict[str, Any]:
    """Run configuration the demo gives each DAG (the workflows' own defaults otherwise).

    The request DAGs serve requests recorded and verified the way intake would (so no one has to
    answer the verification step in the UI, and no identity sits in a run configuration):
    dsr_export builds a bundle for one cast member; dsr_erasure runs as the trigger form's
    default, a dry run, for another (its request left unverified, so the intake never dispatches
    it as a real erasure): it stores and shows the plan and changes nothing.
    """
    from datetime import UTC, datetime

    if dag_id == "dsr_export":
        return {"request_id": _verified_request("export", DEMO_EXPORT_SUBJECT, datetime.now(UTC)),
                "formats": ["json", "csv", "html"]}  # fmt: skip
    if dag_id == "dsr_erasure":
        # Not verified: a verified erasure is approved, and the intake (privacy_request_intake)
        # would dispatch it as a real erasure; a dry run needs no approval.
        return {"request_id": _verified_request("erasure", DEMO_ERASURE_SUBJECT, datetime.now(UTC), verify=False),
                "dry_run": True}
    if dag_id == "business_offboarding":
        return {"business_id": _smallest_business(), "reason": "demo: what leaving would erase (dry run)",
                "dry_run": True, "override_guard": True}  # fmt: skip  (a business is always beyond the guard)
    if dag_id == "aggregate_anonymisation":
        # The seed's last three full ISO weeks (its activity ends on 2026-11-28).
        return {"period_start": "2026-11-02", "period_end": "2026-11-22"}
    return {}


def _smallest_business() -> int:
    """The business client with the fewest users and callers outside the cast's businesses (1..7):
    the demo's offboarding is a dry run of it (the plan, nothing changed)."""

    app = load_datamap().postgres_systems[0]
    with connect(conninfo_for(app.connection_id)) as conn:
        row = conn.execute(
            "SELECT b.id FROM app.businesses b WHERE b.id > 7 ORDER BY"
            " (SELECT count(*) FROM app.users u WHERE u.business_id = b.id)"
            " + (SELECT count(*) FROM app.callers c WHERE c.business_id = b.id), b.id LIMIT 1"
        ).fetchone()
    if row is None:
        raise SystemExit("demo: the reference deployment holds no business client to offboard")
    return int(row[0])


def _verified_request(kind: RequestKind, cast_key: str, now: Any, *, verify: bool = True) -> str:
    """Record a request for a cast member and (``verify``) mark it verified, as staff would."""

    member = cast_member(cast_key)
    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    with connect(conninfo) as conn:
        request_id = create_request(
            conn,
            kind=kind,
            identities=SubjectIdentities.parse(email=member.email, phone=member.phone, region=phone_region()),
            hasher=hasher_from_airflow(),
            cipher=cipher_from_airflow(),
            received_at=now,
            source="intake",
        )
    if verify:
        mark_verified(request_id, method="demo: identities of a seeded test subject", verified_by="make demo", at=now,
                      conninfo=conninfo)  # fmt: skip
    return request_id


def summarise_run(dag_run: Any) -> list[str]:
    """One line per task: state and its XCom result (small JSON by the project's rules)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    lines = []
    with create_session() as session:
        # In order of start; tasks that never ran (no start or end date) last.
        tis = dag_run.get_task_instances(session=session)
        never = [t for t in tis if (t.start_date or t.end_date) is None]
        ran = sorted((t for t in tis if t not in never), key=lambda t: t.start_date or t.end_date)
        for ti in [*ran, *never]:
            value = (
                session.query(XComModel.value)
                .filter_by(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index, key="return_value")
                .scalar()
            )
            result = "" if value is None else " " + json.dumps(XComModel.deserialize_value(_Row(value)), default=str)
            lines.append(f"{ti.task_id:<32} {ti.state}{result}")
    return lines


class _Row:
    """Adapter: XComModel.deserialize_value reads ``.value`` from a row."""

    def __init__(self, value: Any) -> None:
        self.value = value
