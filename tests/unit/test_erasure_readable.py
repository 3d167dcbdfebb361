"""The erasure plan in plain language: the data map's words, not table names or effect codes."""

from __future__ import annotations

import copy

import pytest

from governance.config import INCLUDE_DIR
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMap
from governance.erasure.holds import ActiveHolds
from governance.erasure.readable import plan_changes, plan_markdown, readable_plan
from tests.unit.test_erasure_planning import hold, resolution, work_for


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(INCLUDE_DIR / "datamap.yaml")


def test_plan_lines_use_the_data_map_descriptions_and_say_what_happens(datamap: DataMap) -> None:
    summary = work_for(datamap, resolution(datamap)).summary()
    plan = readable_plan(summary, datamap)
    by_what = {(line.outcome, line.what): line for line in plan.lines}
    calls = "Calls answered by the AI receptionist"
    assert by_what[("deleted", calls)].count == 2
    mention = by_what[("cleared", calls)]
    assert mention.count == 1 and "handled by user id" in mention.detail and "records stay" in mention.detail
    assert by_what[("deleted", "Audio of the call")].unit == "files"
    assert any(line.outcome == "deleted" and "CRM" in line.what.upper() for line in plan.lines)
    payments = [line for line in plan.lines if line.where == "aircalls_app.payments"]
    kept = [line for line in payments if line.outcome == "kept"]
    assert kept and "Tax law requires us to keep" in kept[0].detail and kept[0].until
    assert "billing address" in kept[0].detail
    assert any(line.outcome == "deleted" and "period" in line.detail for line in payments)  # an expired one


def test_markdown_has_no_technical_names_as_main_text(datamap: DataMap) -> None:
    summary = work_for(datamap, resolution(datamap)).summary()
    text = plan_markdown(summary, datamap, dry_run=True)
    assert text.startswith("**Erasure plan for request era-20261128-0123456789ab**")
    assert "nothing has changed" in text
    assert "| What | Outcome | How many | Why, and until when |" in text
    words = text.split("**Statements that run**")[0]  # the SQL for engineers comes after the words
    for technical in ("aircalls_app.", "clear mention", "clear_mention", "delete_rows", "choose how below"):
        assert technical not in words
    assert "| Calls answered by the AI receptionist | Deleted | 2 records |" in text


def test_a_person_hold_is_explained(datamap: DataMap) -> None:
    summary = work_for(datamap, resolution(datamap), ActiveHolds(person=[hold(9, "person")])).summary()
    text = plan_markdown(summary, datamap)
    assert "legal hold" in text and "Litigation" in text and "2027-06-30" in text


def test_changes_between_the_dry_run_and_the_approved_plan_are_named(datamap: DataMap) -> None:
    before = work_for(datamap, resolution(datamap)).summary()
    after = copy.deepcopy(before)
    after["plan_id"] = "epl-" + "1" * 20
    assert plan_changes(before, after, datamap) == []  # only the id differs: nothing to explain
    after["tables"]["aircalls_app.usage_events"]["delete_rows"] += 3
    changes = plan_changes(before, after, datamap)
    assert changes[0].startswith("Product usage events") and "deleted 2 -> 5 records" in changes[0]
    assert "data changed" in changes[-1]
    assert "What changed since the dry run" in plan_markdown(after, datamap, changes=changes)


def test_without_a_data_map_names_are_still_words() -> None:
    summary = {"plan_id": "epl-x", "request_id": "era-x", "as_of": "2026-11-28T00:00:00+00:00",
               "tables": {"aircalls_app.usage_events": {"delete_rows": 4}}, "objects": {}, "processors": {},
               "kept": [], "excluded": [], "guard": {}}  # fmt: skip
    assert readable_plan(summary, None).lines[0].what == "Usage events"


def test_statements_follow_the_plain_words_when_the_summary_has_them(datamap: DataMap) -> None:
    summary = work_for(datamap, resolution(datamap)).summary()
    summary["statements"] = [{"step": "db:aircalls_app:001:calls:delete_rows", "rows": 2, "sql": "DELETE FROM app.calls WHERE id = ANY(%(keys)s)"},
                             {"step": "db:aircalls_app:002:users:delete_rows", "rows": 0, "sql": "DELETE FROM app.users"}]  # fmt: skip
    text = plan_markdown(summary, datamap)
    assert text.index("| What | Outcome") < text.index("**Statements that run**")
    assert "DELETE FROM app.calls WHERE id = ANY(%(keys)s);" in text and "DELETE FROM app.users" not in text
