"""Lineage for every task, end to end: the lineage probe DAG run with ``dag.test()`` (every task
in one process) and again with each task in its own process, asserting per task the exact input
and output datasets on its OpenLineage terminal event and its audit-ledger row, the rows the
scheduler settles (skipped, upstream_failed), the anchor in the object store, and that an e-mail
address in the run configuration reaches no event and no ledger row."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.lineage import (
    LineageEventRedactor,
    openlineage_dataset,
    postgres_table_uri,
    redact_event,
    s3_prefix_uri,
)
from tests.fixtures.lineage import LineageEvents, ProbeDeployment

pytestmark = [pytest.mark.slow(seconds=50), pytest.mark.integration, pytest.mark.dagrun]

DAG_ID = "lineage_probe"
REQUEST_ID = "exp-20260115-0123456789ab"
REQUESTER_EMAIL = "Alice.Probe@Example.com"
RUN_CONF = {"request_id": REQUEST_ID, "requester_email": REQUESTER_EMAIL, "note": "call back +14155550123"}

# (task_id, try_number, state, source) of every task instance final state the run leaves.
EXPECTED_STATES = {
    ("summarise_calls", 1, "success", "listener"),
    ("export_stats", 1, "success", "listener"),
    ("publish_manifest", 1, "success", "listener"),
    ("flaky", 1, "up_for_retry", "listener"),
    ("flaky", 2, "success", "listener"),
    ("skip_me", 1, "skipped", "listener"),
    ("after_skip", 0, "skipped", "reconciled"),
    ("explode", 1, "failed", "listener"),
    ("after_explode", 0, "upstream_failed", "reconciled"),
}


def expected_datasets(d: ProbeDeployment) -> dict[str, tuple[set[str], set[str]]]:
    calls = postgres_table_uri(d.host, d.port, d.app_database, "app", "calls")
    stats = postgres_table_uri(d.host, d.port, d.app_database, "app", "call_stats")
    return {
        "summarise_calls": ({calls}, {stats}),
        "export_stats": ({stats}, {s3_prefix_uri(d.bucket, "exports/lineage-probe")}),
        "publish_manifest": (set(), {f"s3://{d.bucket}/manifests/lineage-probe.json"}),
        "flaky": (set(), set()),
        "skip_me": (set(), set()),
        "explode": (set(), set()),
        "after_skip": (set(), set()),
        "after_explode": (set(), set()),
    }


def expected_rows_affected(d: ProbeDeployment) -> dict[str, int | None]:
    return {"summarise_calls": d.businesses, "export_stats": 1}


@pytest.fixture(scope="module")
def probe_dag(airflow_metadata_db: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "lineage_probe.py"
    bag = DagBag(dag_folder=str(path))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def ledger_rows(url: str, run_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT * FROM governance.audit_ledger WHERE dag_id = %s AND run_id = %s ORDER BY seq",
                           (DAG_ID, run_id))  # fmt: skip
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def ledger_text(url: str) -> str:
    with psycopg.connect(url) as conn:
        return "\n".join(r[0] for r in conn.execute("SELECT row_to_json(l)::text FROM governance.audit_ledger l"))


def wait_for_dag_event(events: LineageEvents, run_id: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """DAG-level events go out through the provider's process pool, after the run returns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [e for e in events.dag_events(DAG_ID, run_id) if e["eventType"] in ("COMPLETE", "FAIL")]
        if found:
            return found
        time.sleep(0.2)
    return []


def maintenance_pass(run_started: datetime) -> None:
    """What the governance-maintenance service does beside the scheduler after a run ends."""
    from governance.maintenance import Maintainer

    report = Maintainer(timedelta(0), timedelta(0), ended_after=run_started - timedelta(seconds=1)).run_once()
    assert report.ok, report.errors
    assert report.runs_reconciled >= 1 and report.anchored_seq is not None


def assert_lineage_and_ledger(run_id: str, d: ProbeDeployment, events: LineageEvents, s3: Any) -> None:
    from governance.ledger import ANCHOR_PREFIX, ledger_keyring, read_anchors, verify_ledger

    datasets = expected_datasets(d)
    rows = ledger_rows(d.ledger_url, run_id)

    # One ledger row per final state, no more, no less; the request id and nothing else of conf.
    assert {(r["task_id"], r["try_number"], r["state"], r["source"]) for r in rows} == EXPECTED_STATES
    assert len(rows) == len(EXPECTED_STATES)
    assert {r["request_id"] for r in rows} == {REQUEST_ID}
    for row in rows:
        inputs, outputs = datasets[row["task_id"]]
        where = f"ledger row of {row['task_id']} try {row['try_number']}"
        assert (set(row["inputs"]), set(row["outputs"])) == (inputs, outputs), where
        assert row["rows_affected"] == expected_rows_affected(d).get(row["task_id"]), where
        if row["source"] == "listener":
            assert row["started_at"] is not None and row["ended_at"] >= row["started_at"], where

    # Every task that ran has a terminal event naming exactly its datasets.
    terminal = events.terminal_task_events(DAG_ID, run_id)
    ran = {(t, n) for t, n, _, source in EXPECTED_STATES if source == "listener"}
    assert set(terminal) == ran
    for (task_id, attempt), event in terminal.items():
        inputs, outputs = datasets[task_id]
        got = ({(i["namespace"], i["name"]) for i in event["inputs"]}, {(o["namespace"], o["name"]) for o in event["outputs"]})
        want = ({openlineage_dataset(u) for u in inputs}, {openlineage_dataset(u) for u in outputs})
        assert got == want, f"{event['eventType']} event of {task_id} try {attempt}"
        assert event["eventType"] == ("FAIL" if (task_id, attempt) in {("flaky", 1), ("explode", 1)} else "COMPLETE")
        assert event["run"]["facets"]["airflow"]["dagRun"]["conf"] == {"request_id": REQUEST_ID}

    # The head is anchored in the object store and the whole ledger verifies against it.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=d.bucket, Prefix=ANCHOR_PREFIX).get("Contents", [])]
    head = max(r["seq"] for r in rows)
    assert f"{ANCHOR_PREFIX}{head:020d}.json" in keys
    anchors = read_anchors(s3, d.bucket)
    with psycopg.connect(d.ledger_url) as conn:
        report = verify_ledger(conn, ledger_keyring(), anchors)
    assert report.ok and report.head_seq == head, report.summary()

    # The requester's e-mail (and phone) reached no lineage event and no ledger row.
    dag_events = wait_for_dag_event(events, run_id)
    assert dag_events, "the DAG-level terminal event was not emitted"
    assert all(e["run"]["facets"]["airflowDagRun"]["dagRun"]["conf"] == {"request_id": REQUEST_ID} for e in dag_events)
    everything = events.raw_text().lower()
    assert REQUESTER_EMAIL.lower() not in everything and "4155550123" not in everything
    assert "alice.probe" not in ledger_text(d.ledger_url).lower()
    explode = terminal[("explode", 1)]["run"]["facets"]["errorMessage"]
    assert explode["message"].startswith("RuntimeError") and "stackTrace" not in explode


def test_every_task_names_exactly_its_datasets_under_dag_test(
    probe_dag: Any, probe_deployment: ProbeDeployment, lineage_events: LineageEvents, s3: Any
) -> None:
    """All tasks share one process here: datasets must not leak from one task to the next."""
    from airflow.utils.state import DagRunState

    started = datetime.now(UTC)
    dag_run = probe_dag.test(run_conf=RUN_CONF)
    assert dag_run.state == DagRunState.FAILED  # explode fails on purpose
    # The task processes wrote their own rows; the scheduler-set states come from maintenance.
    assert {r["source"] for r in ledger_rows(probe_deployment.ledger_url, dag_run.run_id)} == {"listener"}
    maintenance_pass(started)
    assert_lineage_and_ledger(dag_run.run_id, probe_deployment, lineage_events, s3)


@pytest.fixture
def each_task_in_its_own_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Make ``dag.test()``'s scheduling loop run each task instance in a child process, as a
    worker does (the supervisor forks the task process), instead of in the test process.

    ``airflow tasks test`` per task would do too, but each child then pays Airflow's import
    (10 s or more on these machines). The child gets its own database engine, starts with no
    collected lineage, runs the task with its listeners and exits; the parent stays the scheduler:
    it sees the state in the metadata DB; reconciliation and the anchor come from a maintenance pass.
    """
    import airflow.sdk.definitions.dag as dag_module
    from airflow.sdk.execution_time import supervisor

    run_in_this_process = dag_module._run_task
    children: list[int] = []
    inherited: list[Any] = []
    # The in-process execution API (what a worker's supervisor talks to over HTTP) is built once
    # here, in the "scheduler": building it in every child costs seconds.
    api = supervisor.in_process_api_server()
    assert api.transport is not None

    def run_in_child(*, ti: Any, task: Any, run_triggerer: bool = False) -> None:
        pid = os.fork()
        if pid == 0:  # the task's own process
            status = 1
            try:
                from airflow import settings
                from airflow.sdk.lineage import get_hook_lineage_collector

                # Nothing that lived in the parent's threads or connections is used here: a new
                # database engine, a new event-loop thread for the execution API (the parent's
                # did not survive the fork; its transport is kept referenced so its finalizer
                # never runs here), and no collected lineage.
                settings.configure_orm(disable_connection_pool=True)
                inherited.append(api.transport)
                del api.transport
                get_hook_lineage_collector.cache_clear()
                run_in_this_process(ti=ti, task=task, run_triggerer=run_triggerer)
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"task process for {ti.task_id} crashed"

    monkeypatch.setattr(dag_module, "_run_task", run_in_child)
    yield children


def test_every_task_names_exactly_its_datasets_with_each_task_in_its_own_process(
    probe_dag: Any,
    probe_deployment: ProbeDeployment,
    lineage_events: LineageEvents,
    s3: Any,
    each_task_in_its_own_process: list[int],
) -> None:
    from airflow.utils.state import DagRunState

    started = datetime.now(UTC)
    dag_run = probe_dag.test(run_conf=RUN_CONF)
    assert dag_run.state == DagRunState.FAILED
    maintenance_pass(started)
    task_runs = sum(1 for _, _, _, source in EXPECTED_STATES if source == "listener")
    assert len(set(each_task_in_its_own_process)) == task_runs and os.getpid() not in each_task_in_its_own_process
    assert_lineage_and_ledger(dag_run.run_id, probe_deployment, lineage_events, s3)


# ------------------------------------------------------------------------------------------
# The redactor on its own (whatever the provider puts in an event)


def _event_with_identities() -> Any:
    from airflow.providers.openlineage.plugins.facets import AirflowRunFacet
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run

    facet = AirflowRunFacet(
        dag={"dag_id": "dsr_export", "owner": "privacy-engineering"},
        dagRun={"run_id": "manual__x", "conf": {**RUN_CONF, "phone": "+44 20 7946 0958"},
                "triggering_user_name": "alice.admin", "note": "asked by Bob Smith"},  # fmt: skip
        taskInstance={"try_number": 1, "rendered_map_index": "bob@example.org"},
        task={"task_id": "lookup", "parameters": {"email": "bob@example.org"}},
        taskUuid="0000",
    )
    error = error_message_run.ErrorMessageRunFacet(
        message="duplicate key value (email)=(bob@example.org)",
        programmingLanguage="python",
        stackTrace='Traceback (most recent call last):\n  File "x.py", line 1\npsycopg.errors.UniqueViolation: (bob@example.org)',
    )
    return RunEvent(
        eventType=RunState.FAIL,
        eventTime="2026-01-15T10:00:00+00:00",
        run=Run(runId="01941f29-7c00-7000-8000-000000000000", facets={"airflow": facet, "errorMessage": error}),
        job=Job(namespace="aircalls-governance", name="dsr_export.lookup"),
        producer="https://github.com/apache/airflow",
    )


def test_redactor_removes_run_configuration_users_notes_parameters_and_error_details() -> None:
    from openlineage.client.serde import Serde

    redacted = json.loads(Serde.to_json(redact_event(_event_with_identities())))
    text = json.dumps(redacted).lower()
    for identity in ("alice", "bob", "example.org", "example.com", "7946", "4155550123"):
        assert identity not in text, identity
    facets = redacted["run"]["facets"]
    assert facets["airflow"]["dagRun"]["conf"] == {"request_id": REQUEST_ID}
    assert facets["errorMessage"]["message"].startswith("psycopg.errors.UniqueViolation")
    assert facets["airflow"]["dag"]["owner"] == "privacy-engineering"  # what is not identity stays


def test_redactor_drops_an_event_it_cannot_clean() -> None:
    import attr

    @attr.define
    class Malformed:
        message: str

    event = Malformed("bob@example.org")
    del event.message  # reading it now raises: the redactor cannot vouch for the event
    assert LineageEventRedactor(properties={}).transform(event) is None


def test_dataset_naming_follows_the_openlineage_spec() -> None:
    uri = postgres_table_uri("DB.Example.internal", None, "aircalls", "app", "calls")
    assert uri == "postgres://db.example.internal:5432/aircalls/app/calls"
    assert openlineage_dataset(uri) == ("postgres://db.example.internal:5432", "aircalls.app.calls")
    assert openlineage_dataset(s3_prefix_uri("aircalls-data", "/exports/exp-1/")) == ("s3://aircalls-data", "exports/exp-1")
    with pytest.raises(ValueError, match="identifier"):
        postgres_table_uri("db", 5432, "aircalls", "app", "calls; drop")
    with pytest.raises(ValueError, match="pattern"):
        s3_prefix_uri("aircalls-data", "exports/*")
