"""The maintenance pass forgets the erasure keys no run will use (row ids of heavy subjects'
tables, kept in the app database until the run that carried the plan out closes): those of a
finished plan whose run never closed, of a plan left waiting for an approval its run no longer
waits for, and of a plan whose run ended before saving it. It keeps the keys of a plan being
carried out and of one a running run waits on or is still making. A plan whose keys were lost is
set aside and its request planned and approved again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.dags.test_run_conf_scrub import synced_dags  # noqa: F401 - fixture
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import conf_for, run_erasure, run_id_for

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=40)]


def _stored(plan_id: str) -> int:
    from governance.datamap import load_datamap
    from governance.db import conninfo_for
    from governance.erasure.keys import stored_key_count

    return stored_key_count(load_datamap(), conninfo_for, plan_id)


def _airflow_run(run_id: str, state: str) -> None:
    """The Airflow run a plan was made in, in ``state`` (created, or its state changed)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == "dsr_erasure", DagRun.run_id == run_id).one_or_none()
        if run is None:
            at = datetime.now(UTC)
            run = DagRun(dag_id="dsr_erasure", run_id=run_id, run_type="manual", conf={}, state=state,
                         logical_date=None, run_after=at, start_date=at)  # fmt: skip
            session.add(run)
        else:
            run.state = state
            run.end_date = datetime.now(UTC)


def _status(url: str, plan_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_maintenance_pass_forgets_keys_of_finished_and_abandoned_plans_and_keeps_those_a_run_can_still_use(
    reference_clone: Deployment, airflow_db: str, synced_dags: None, s3: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from governance.maintenance import forget_unused_erasure_keys
    from governance.workflows import dsr_erasure as wf

    # The reference people have tens of usage events and sessions: store keys from 10 rows up
    # (10,000 in production) so their plans keep keys in the app and warehouse databases.
    monkeypatch.setattr(wf, "INLINE_KEYS", 10)
    url = reference_clone.app_url
    # Verified, but its run was killed before the close that removes the keys.
    finished = run_erasure(conf_for("both_user_and_caller"), "sweep_finished", until="verify").summary["plan_id"]
    # Waiting for an approval in a run Airflow is still running.
    waiting = run_erasure(conf_for("call_handler"), "sweep_waiting", until="plan").summary["plan_id"]
    _airflow_run(run_id_for("sweep_waiting"), "running")
    # Approved and part-way through: the request's next run continues it.
    carried_run = run_erasure(conf_for("payer"), "sweep_carried", until="database")
    carried = carried_run.summary["plan_id"]
    # Keys stored by a planning task still running that has not saved its plan yet.
    unsaved = run_erasure(conf_for("shared_business_user_1"), "sweep_unsaved", until="plan").summary["plan_id"]
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM governance.erasure_plans WHERE plan_id = %s", (unsaved,))
    _airflow_run(run_id_for("sweep_unsaved"), "running")
    statuses = {_status(url, p) for p in (finished, waiting, carried)}
    assert statuses == {"verified", "planned", "executing"}, statuses
    stored = {plan: _stored(plan) for plan in (finished, waiting, carried, unsaved)}
    assert all(stored.values()), stored

    plans, removed = forget_unused_erasure_keys(url)
    assert (plans, removed) == (1, stored[finished])
    assert {p: _stored(p) for p in stored} == {**stored, finished: 0}

    # Both runs ended (without the approval; before the plan was saved): nothing will use those
    # keys any more.
    _airflow_run(run_id_for("sweep_waiting"), "failed")
    _airflow_run(run_id_for("sweep_unsaved"), "failed")
    assert forget_unused_erasure_keys(url) == (2, stored[waiting] + stored[unsaved])
    assert {p: _stored(p) for p in stored} == {finished: 0, waiting: 0, unsaved: 0, carried: stored[carried]}
    assert forget_unused_erasure_keys(url) == (0, 0)  # idempotent

    # The request's next run (once the killed one is stale) continues the carried plan with its
    # keys, and its close removes them.
    monkeypatch.setenv("GOVERNANCE_CLAIM_STALE_AFTER_S", "0.01")
    run = run_erasure(conf_for("payer"), "sweep_carried_on", handle=carried_run.handle)
    assert run.summary["continued"] and run.summary["plan_id"] == carried
    assert _status(url, carried) == "verified" and _stored(carried) == 0
    assert forget_unused_erasure_keys(url) == (0, 0)


def test_a_plan_whose_stored_keys_were_lost_is_set_aside_unchanged_and_the_next_run_erases_with_a_new_plan(
    reference_clone: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database crash empties the UNLOGGED key tables. The approved plan is continued by every
    # later run of its request, so unless it is set aside each of them would fail the same way.
    from airflow.sdk.exceptions import AirflowFailException

    from governance.datamap import load_datamap
    from governance.db import conninfo_for
    from governance.erasure.keys import forget_plan_keys
    from governance.workflows import dsr_erasure as wf
    from governance_dev.seed import cast_member
    from tests.integration.test_erasure_support import APPROVAL

    monkeypatch.setattr(wf, "INLINE_KEYS", 10)
    url = reference_clone.app_url
    user_id = cast_member("both_user_and_caller").user_id

    def events() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = %s", (user_id,)).fetchone()
        return int(row[0]) if row else -1

    before = events()
    first = run_erasure(conf_for("both_user_and_caller"), "lost_keys", until="plan")
    plan_id = first.summary["plan_id"]
    assert _stored(plan_id) > 0 and before > 10
    assert forget_plan_keys(load_datamap(), [plan_id], conninfo_for) > 0  # what the crash leaves: none

    with pytest.raises(AirflowFailException, match="is set aside"):
        wf.execute_database(first.summary, approval=APPROVAL, run_id=run_id_for("lost_keys"))
    assert _status(url, plan_id) == "refused" and events() == before
    with psycopg.connect(url) as conn:
        refusal = conn.execute("SELECT refusal FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    assert refusal is not None and str(refusal[0]).startswith("stored keys lost: ")

    # The approval was of the plan set aside: the new plan waits for one of its own.
    with psycopg.connect(url) as conn:
        approval = conn.execute("SELECT approved_at, approved_by FROM governance.privacy_requests WHERE request_id = %s",
                                (first.handle["request_id"],)).fetchone()  # fmt: skip
    assert approval == (None, None)

    monkeypatch.setenv("GOVERNANCE_CLAIM_STALE_AFTER_S", "0.01")  # the failed run holds no claim any more
    again = run_erasure(conf_for("both_user_and_caller"), "lost_keys_again", handle=first.handle)
    assert not again.summary["continued"] and again.summary["plan_id"] != plan_id
    assert again.summary["needs_approval"]
    assert again.results["verify"]["passed"] and events() == 0
    assert _status(url, again.summary["plan_id"]) == "verified" and _stored(again.summary["plan_id"]) == 0
