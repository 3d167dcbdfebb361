"""The public building blocks (governance.airflow) and the business-rooted plan, without a
database: what a DAG built from the blocks looks like, what the approval offers, and which
statements a business's offboarding runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from governance.airflow import BUSINESS_VERIFICATION_CHOICES, PERSON_VERIFICATION_CHOICES
from governance.config import INCLUDE_DIR
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import (
    SCOPE_IDS,
    build_business_resolution_plan,
    build_erasure_plan,
    build_resolution_plan,
)
from governance.erasure.business import BUSINESS_METHODS, InvalidOffboarding, parse_offboarding_form
from governance.workflows.dsr_erasure import NOT_VERIFIED, VERIFICATION_METHODS

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(INCLUDE_DIR / "datamap.yaml")


@pytest.fixture(scope="module")
def dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags


def test_the_blocks_name_the_task_ids_and_options_the_workflow_functions_use() -> None:
    from governance.airflow import blocks
    from governance.workflows import dsr_erasure, dsr_export

    assert (blocks.APPROVE_ERASURE, blocks.ALREADY_APPROVED) == (dsr_erasure.APPROVAL_TASK, dsr_erasure.PRE_APPROVED_TASK)
    assert (blocks.VERIFY_IDENTITY, blocks.RECORD_VERIFICATION) == (dsr_export.HITL_TASK_ID,
                                                                     dsr_export.RECORD_VERIFICATION_TASK_ID)  # fmt: skip
    assert blocks.EXPORT_VERIFICATION_OPTIONS == dsr_export.HITL_OPTIONS


def test_importing_the_blocks_imports_no_workflow_module_drivers_or_clients() -> None:
    """DAG files import governance.airflow at parse time: it must not pull in the task modules."""
    import subprocess
    import sys

    code = ("import sys, governance.airflow; heavy = [m for m in ('governance.workflows.dsr_erasure', "
            "'governance.workflows.dsr_export', 'psycopg', 'boto3', 'pandas', 'governance.datamap') if m in sys.modules]; "
            "print(heavy)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_approval_choices_are_the_methods_the_workflow_records(dags: dict[str, Any]) -> None:
    assert set(PERSON_VERIFICATION_CHOICES) == {*VERIFICATION_METHODS, NOT_VERIFIED}
    assert set(BUSINESS_VERIFICATION_CHOICES) == {*BUSINESS_METHODS, NOT_VERIFIED}
    param = dags["business_offboarding"].get_task("approve_erasure").params.get_param("verification_method")
    assert set(param.schema["enum"]) == {None, *BUSINESS_METHODS, NOT_VERIFIED} and param.value is None


@pytest.mark.parametrize("dag_id", ["dsr_erasure", "dsr_export", "business_offboarding"])
def test_request_outcome_is_the_only_leaf_and_waits_for_every_other_task(dags: dict[str, Any], dag_id: str) -> None:
    dag = dags[dag_id]
    leaves = [t.task_id for t in dag.tasks if not t.downstream_task_ids]
    assert leaves == ["request_outcome"]
    assert dag.get_task("request_outcome").upstream_task_ids == {t.task_id for t in dag.tasks} - {"request_outcome"}


def test_business_offboarding_is_the_erasure_dag_with_another_opening(dags: dict[str, Any]) -> None:
    erasure, offboarding = dags["dsr_erasure"], dags["business_offboarding"]
    assert {t.task_id: t.upstream_task_ids for t in offboarding.tasks} == {t.task_id: t.upstream_task_ids for t in erasure.tasks}
    assert set(offboarding.params) == {"business_id", "reason", "dry_run", "override_guard"}
    source = (DAGS / "business_offboarding.py").read_text()
    code = source[source.index("from __future__") :]
    assert len([line for line in code.splitlines() if line.strip()]) < 60
    assert "task_id" not in code and "xcom_pull" not in code


def test_the_business_plan_starts_from_every_person_row_of_the_business(datamap: DataMap) -> None:
    plan = build_business_resolution_plan(datamap)
    roots = {s.table.table: s for s in plan.steps if not s.owned_via}
    assert set(roots) == {"users", "callers", "marketing_audience"}  # the last in the analytics warehouse
    for step in roots.values():
        assert step.select.input_params == (SCOPE_IDS,) and not step.identity_matches
        assert '"business_id" = ANY(%(scope_ids)s)' in step.select.text
    assert {"email", "phone_e164"} <= set(roots["users"].columns)  # looked up at the processors
    owned = {s.table.table for s in plan.steps if s.owned_via}
    assert {"calls", "messages", "appointments", "support_tickets", "payments", "usage_events",
            "marketing_preferences", "call_facts", "user_sessions"} <= owned  # fmt: skip
    assert plan.request_objects == () and plan.identity_kinds == () and plan.matching == "business"
    assert {p.processor for p in plan.processors} >= {"crm", "payments_processor"}
    # Rebuilt the same way from a stored plan (no identity kinds, a business scope).
    again = build_resolution_plan(datamap, (), business_scope=True, matching="business")
    assert [s.select.sha256 for s in again.steps] == [s.select.sha256 for s in plan.steps]


def test_the_business_erasure_deletes_children_first_minimises_payments_and_clears_mentions(datamap: DataMap) -> None:
    erasure = build_erasure_plan(datamap, build_business_resolution_plan(datamap))
    order = erasure.table_order
    assert order.index(TableRef("aircalls_app", "calls")) < order.index(TableRef("aircalls_app", "callers"))
    effects = {(s.table.table, s.effect) for s in erasure.statements}
    assert ("payments", "minimise_kept_rows") in effects and ("calls", "clear_mention") in effects
    assert ("users", "delete_rows") in effects and ("callers", "delete_rows") in effects


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "Business client id is empty"),
        ({"business_id": "abc"}, "whole number"),
        ({"business_id": 0}, "positive"),
        ({"business_id": 3, "reason": "x" * 501}, "Reason is longer"),
    ],
)
def test_the_offboarding_form_names_the_field_it_refuses(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOffboarding, match=message):
        parse_offboarding_form(conf)
    assert parse_offboarding_form({"business_id": 12, "reason": "  contract ended "}) == (12, "contract ended")
