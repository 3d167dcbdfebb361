"""``[governance] approvers`` restricts who may answer the approval steps: the DAGs assign them
(Airflow's HITL ``assigned_users``), and the workflows refuse an answer from anyone else before
recording anything. Unset, nothing changes (the four-eyes rules apply either way)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from governance.approvers import parse_approvers

ROOT = Path(__file__).resolve().parents[2]
APPROVERS = "privacy-officer:Privacy Officer, 42"


def _approval_tasks(monkeypatch: pytest.MonkeyPatch, value: str | None) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    if value is None:
        monkeypatch.delenv("AIRFLOW__GOVERNANCE__APPROVERS", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__GOVERNANCE__APPROVERS", value)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return {"erasure": bag.dags["dsr_erasure"].get_task("approve_erasure"),
            "export": bag.dags["dsr_export"].get_task("verify_identity")}  # fmt: skip


def test_configured_approvers_are_the_assigned_users_of_the_erasure_approval_and_the_export_identity_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks = _approval_tasks(monkeypatch, APPROVERS)
    expected = [{"id": "privacy-officer", "name": "Privacy Officer"}, {"id": "42", "name": "42"}]
    assert tasks["erasure"].assigned_users == expected
    assert tasks["export"].assigned_users == expected


def test_without_approvers_configured_the_steps_are_assigned_to_nobody_in_particular(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tasks = _approval_tasks(monkeypatch, None)
    assert tasks["erasure"].assigned_users is None and tasks["export"].assigned_users is None


def test_parse_approvers_ignores_blanks_and_defaults_the_name_to_the_id() -> None:
    assert parse_approvers(" , alice ,bob: Bob B ,") == [{"id": "alice", "name": "alice"}, {"id": "bob", "name": "Bob B"}]


def test_an_erasure_approval_by_someone_not_configured_is_refused_before_anything_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from governance.workflows import dsr_erasure

    monkeypatch.setenv("AIRFLOW__GOVERNANCE__APPROVERS", APPROVERS)
    # No governance database is configured here: the refusal must come before any is opened.
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", "postgres://nobody@127.0.0.1:1/none")
    payload = {"chosen_options": ["Approve"], "params_input": {"verification_method": "id_document"},
               "responded_by_user": {"id": "7", "name": "intern"}}  # fmt: skip
    with pytest.raises(AirflowFailException, match="intern is not one of the configured approvers"):
        dsr_erasure.record_approval("era-20261128-000000000001", "epl-000000000000000000001", payload,
                                    at=datetime(2026, 11, 28, tzinfo=UTC))  # fmt: skip


def test_an_export_identity_check_answered_by_someone_not_configured_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from governance.workflows import dsr_export

    monkeypatch.setenv("AIRFLOW__GOVERNANCE__APPROVERS", APPROVERS)
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", "postgres://nobody@127.0.0.1:1/none")
    option = next(o for o in dsr_export.VERIFICATION_OPTIONS if o.startswith("Verified"))
    response = {"chosen_options": [option], "responded_by_user": {"id": "7", "name": "intern"},
                "responded_at": "2026-11-28T12:00:00+00:00"}  # fmt: skip
    with pytest.raises(AirflowFailException, match="intern is not one of the configured approvers"):
        dsr_export.record_verification({"request_id": "exp-20261128-000000000001", "verified": False}, response)


def test_the_privacy_requests_page_offers_approval_only_to_configured_approvers(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from governance.ui.access import may, staff_of

    officer = staff_of(SimpleAuthManagerUser(username="privacy-officer", role="admin"))
    intern = staff_of(SimpleAuthManagerUser(username="intern", role="admin"))
    assert may(intern, "approve") and may(officer, "approve")  # unset: roles decide
    monkeypatch.setenv("AIRFLOW__GOVERNANCE__APPROVERS", APPROVERS)
    assert may(officer, "approve") and not may(intern, "approve")
    assert may(intern, "record") and may(intern, "reveal")  # only approving is restricted
