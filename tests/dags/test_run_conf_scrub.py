"""``python -m governance scrub-run-confs`` against Airflow's real metadata database.

The project's DAGs are synced into the session's metadata DB as ``dag.test()`` does (so the
``privacy-request`` tags are the DAG files' own); runs and action-log entries are written as the
REST API stores a trigger-form submission. Probe runs end in 2020 and the scrub is run "as of"
2021, so runs left by other tests of the session are outside its cut-off.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request
from governance.run_confs import SCRUBBED_MARK, parse_age, scrub_run_confs
from governance.workflows.request_intake import form_request_id, open_request

EMAIL = "Scrub.Me@Example.org"
PHONE = "+1 415 555 0199"
ENDED = datetime(2020, 5, 4, 10, 0, tzinfo=UTC)
AS_OF = datetime(2021, 1, 1, tzinfo=UTC)
RECEIVED = ENDED - timedelta(minutes=5)


@pytest.fixture(scope="module")
def synced_dags(airflow_db: str) -> None:
    """The DAGs folder written to the metadata DB (DagModel, tags, serialized DAGs), as dag.test() does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert bag.import_errors == {}, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)


@pytest.fixture
def governance_url(make_db: Callable[[str], str]) -> str:
    url = make_db("scrub")
    migrate(url)
    return url


def _add_run(dag_id: str, state: str, conf: dict[str, Any], *, ended: datetime | None = ENDED) -> tuple[int, str]:
    """A manual run as the UI's trigger form creates it (no logical date; identified by run_after)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    run_id = f"manual__{uuid.uuid4().hex}"
    with create_session() as session:
        run = DagRun(
            dag_id=dag_id, run_id=run_id, run_type="manual", conf=conf, state=state, logical_date=None,
            run_after=RECEIVED, start_date=RECEIVED,
        )  # fmt: skip
        run.end_date = ended
        session.add(run)
        session.flush()
        return run.id, run_id


def _conf_of(run_pk: int) -> dict[str, Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.get(DagRun, run_pk)
        assert run is not None
        return dict(run.conf or {})


def _add_trigger_log(dag_id: str, conf: dict[str, Any]) -> int:
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        # What the API's action_logging stores for POST /dags/{dag_id}/dagRuns without masking.
        entry = Log(event="trigger_dag_run", owner="privacy-staff", dag_id=dag_id,
                    extra=json.dumps({"conf": conf, "note": None, "method": "POST"}))  # fmt: skip
        session.add(entry)
        session.flush()
        return entry.id


def _log_extra(entry_id: int) -> str:
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        entry = session.get(Log, entry_id)
        assert entry is not None and entry.extra is not None
        return entry.extra


def _form(**values: Any) -> dict[str, Any]:
    return {"request_id": "", "email": "", "phone": "", "business_id": None, "formats": ["json", "csv"], **values}


@pytest.fixture
def probe(synced_dags: None, governance_url: str) -> Iterator[dict[str, Any]]:
    """Ended and running request runs, an untagged DAG's run, and a trigger action-log entry."""
    served_pk, served_run = _add_run("dsr_export", "success", _form(email=EMAIL, phone=PHONE, business_id=7))
    request_id = form_request_id("export", served_run, RECEIVED)
    with psycopg.connect(governance_url) as conn:
        create_request(
            conn, kind="export", identities=SubjectIdentities.parse(email=EMAIL, phone=PHONE, region="US"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=RECEIVED,
            business_id=7, source="trigger_form", request_id=request_id,
        )  # fmt: skip
    refused_pk, _ = _add_run("dsr_erasure", "failed", _form(email="not-an-address@", phone=PHONE))
    running_pk, _ = _add_run("dsr_export", "running", _form(email=EMAIL), ended=None)
    untagged_pk, _ = _add_run("governance_healthcheck", "success", {"email": EMAIL})
    log_id = _add_trigger_log("dsr_export", _form(email=EMAIL, phone=PHONE))
    yield {
        "served": served_pk, "served_run": served_run, "request_id": request_id, "refused": refused_pk,
        "running": running_pk, "untagged": untagged_pk, "log": log_id, "governance_url": governance_url,
    }  # fmt: skip


def _scrub(probe: dict[str, Any], *, dry_run: bool = False) -> Any:
    return scrub_run_confs(now=AS_OF, min_age=timedelta(0), dry_run=dry_run, governance_conninfo=probe["governance_url"])


def test_scrub_removes_form_identities_from_ended_request_runs_and_names_their_request(probe: dict[str, Any]) -> None:
    report = _scrub(probe)
    assert report.runs_scrubbed >= 2 and report.runs_pointed_at_request >= 1 and report.log_entries_scrubbed >= 1
    served = _conf_of(probe["served"])
    assert "email" not in served and "phone" not in served
    assert served["request_id"] == probe["request_id"]
    assert served["business_id"] == 7 and served["formats"] == ["json", "csv"]
    assert served[SCRUBBED_MARK] == AS_OF.isoformat()
    refused = _conf_of(probe["refused"])  # invalid input never recorded a request: identities still go
    assert "email" not in refused and "phone" not in refused and refused["request_id"] == ""
    extra = _log_extra(probe["log"])
    assert "scrub.me" not in extra.lower() and "555" not in extra
    assert json.loads(extra)["conf"]["email"] == "***" and json.loads(extra)["method"] == "POST"


def test_scrub_leaves_running_runs_and_dags_not_tagged_privacy_request(probe: dict[str, Any]) -> None:
    _scrub(probe)
    assert _conf_of(probe["running"])["email"] == EMAIL
    assert _conf_of(probe["untagged"]) == {"email": EMAIL}


def test_scrub_dry_run_counts_without_changing_and_a_second_scrub_finds_nothing(probe: dict[str, Any]) -> None:
    before = _conf_of(probe["served"])
    counted = _scrub(probe, dry_run=True)
    assert counted.runs_scrubbed >= 2 and counted.log_entries_scrubbed >= 1
    assert _conf_of(probe["served"]) == before and EMAIL in _log_extra(probe["log"])
    done = _scrub(probe)
    assert (done.runs_scrubbed, done.log_entries_scrubbed) == (counted.runs_scrubbed, counted.log_entries_scrubbed)
    again = _scrub(probe)
    assert (again.runs_scrubbed, again.log_entries_scrubbed) == (0, 0)


def test_rerunning_a_scrubbed_run_serves_the_same_request_from_stored_identities(probe: dict[str, Any]) -> None:
    _scrub(probe)
    handle = open_request(
        _conf_of(probe["served"]), kind="export", run_id=probe["served_run"], received_at=AS_OF,
        conninfo=probe["governance_url"],
    )  # fmt: skip
    assert handle.request_id == probe["request_id"]
    assert handle.identity_kinds == ("email", "phone") and handle.business_id == 7


@pytest.mark.parametrize("text", ["", "1", "h", "-1h", "1w", "1.5h"])
def test_scrub_age_must_be_a_whole_number_of_seconds_minutes_hours_or_days(text: str) -> None:
    with pytest.raises(ValueError, match="s, m, h or d"):
        parse_age(text)
    assert parse_age("90m") == timedelta(minutes=90) and parse_age("2d") == timedelta(days=2)


def test_airflow_masks_form_identities_the_way_the_api_action_log_records_a_trigger(airflow_db: str) -> None:
    """The project's [core] sensitive_var_conn_names, as Airflow 3.3's action logging applies it to
    a POST /dagRuns body (``redact(value, key)`` per top-level key)."""
    from airflow._shared.secrets_masker import secrets_masker

    body = {"conf": _form(email=EMAIL, phone=PHONE, business_id=7), "note": None}
    masked = {k: secrets_masker.redact(v, k) for k, v in body.items()}
    assert masked["conf"]["email"] == "***" and masked["conf"]["phone"] == "***"
    assert masked["conf"]["business_id"] == 7 and masked["conf"]["formats"] == ["json", "csv"]
