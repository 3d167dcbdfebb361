"""The erasure planner, guard, narrowing and statements, from the shipped data map alone (pure:
no database). Resolutions are built by hand: the rows a person would have in the reference
deployment, so each rule can be seen on its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import sql

from governance.config import INCLUDE_DIR
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMap, PrefixRef, TableRef
from governance.datamap.plans import (
    Statement,
    build_erasure_plan,
    build_resolution_plan,
    field_rewrite,
    keyed_hash_params,
)
from governance.erasure.executor import PlanOutdated, approved_statements
from governance.erasure.guard import evaluate_guard, guard_limits, refusal_message
from governance.erasure.holds import ActiveHolds, LegalHold
from governance.erasure.planner import ErasureWork, approval_markdown, build_work
from governance.erasure.resolve import (
    DIFFERS,
    FEWER_IDENTITIES,
    KEPT_UNTIL,
    MATCHES,
    OTHER_IDENTITY,
    STILL_KEPT,
    MentionRows,
    SubjectResolution,
    TableRows,
    _narrow,
)

APP = "aircalls_app"
AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
BUCKETS = {"aircalls_objects": "bucket"}


def t(name: str) -> TableRef:
    return TableRef(APP, name)


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(INCLUDE_DIR / "datamap.yaml")


def resolution(datamap: DataMap, *, payments: list[tuple[int, bool]] | None = None) -> SubjectResolution:
    """A user (id 1, business 10) who is also a caller (id 5, business 20) with two calls (one
    recorded), one handled call of someone else, usage events and payments."""
    plan = build_resolution_plan(datamap, ["email", "phone"])
    tables = {step.table: TableRows(step.table, step.primary_key, datamap.table(step.table).scope_column, step.owned_via)
              for step in plan.steps}  # fmt: skip
    tables[t("users")].rows = {1: {"id": 1, "business_id": 10}}
    tables[t("callers")].rows = {5: {"id": 5, "business_id": 20}}
    tables[t("calls")].rows = {
        50: {"id": 50, "business_id": 20, "caller_id": 5, "recording_key": "recordings/20/50.wav"},
        51: {"id": 51, "business_id": 20, "caller_id": 5, "recording_key": None},
    }
    tables[t("usage_events")].rows = {900: {"id": 900, "user_id": 1}, 901: {"id": 901, "user_id": 1}}
    tables[t("marketing_preferences")].rows = {1: {"user_id": 1}}
    tables[t("payments")].rows = {
        pid: {"id": pid, "business_id": 10, "user_id": 1, STILL_KEPT: kept,
              KEPT_UNTIL: datetime(2027 if kept else 2025, 1, pid % 28 + 1, tzinfo=UTC)}
        for pid, kept in (payments or [(70, True), (71, False)])
    }  # fmt: skip
    mentions = []
    for step in plan.mentions:
        found = MentionRows(step.edge, "id", datamap.table(step.edge.child).scope_column)
        if step.edge.child == t("calls"):
            found.rows = {77: {"id": 77, "handled_by_user_id": 1, "business_id": 10}}
        mentions.append(found)
    return SubjectResolution(plan, tables, mentions, params={}, ambiguities=[])


def work_for(datamap: DataMap, res: SubjectResolution, holds: ActiveHolds | None = None) -> ErasureWork:
    return build_work(
        datamap, build_erasure_plan(datamap, res.plan), res, holds or ActiveHolds(), plan_id="epl-" + "0" * 20,
        request_id="era-20261128-0123456789ab", as_of=AS_OF, business_id=None, buckets=BUCKETS,
        request_folders={PrefixRef("aircalls_objects", "exports"): ["exports/exp-20261101-0123456789ab/"]},
        processor_records={"crm": ["c-1"], "payments_processor": []},
    )  # fmt: skip


def steps(work: ErasureWork) -> dict[tuple[str, str], list[Any]]:
    return {(s.table, s.effect): s.keys for s in work.database}


def hold(hold_id: int, scope: str, **kw: Any) -> LegalHold:
    return LegalHold(hold_id, scope, "Litigation", "CASE-1", datetime(2027, 6, 30, tzinfo=UTC), **kw)


def test_plan_deletes_owned_rows_children_first_and_clears_the_mention(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap))
    by = steps(work)
    assert by[("calls", "delete_rows")] == [50, 51] and by[("callers", "delete_rows")] == [5]
    assert by[("calls", "clear_mention")] == [77] and by[("users", "delete_rows")] == [1]
    order = [s.table for s in work.database]
    assert order.index("calls") < order.index("callers") and order.index("usage_events") < order.index("users")
    assert order.index("payments") < order.index("users")  # the kept payments stop pointing at the user first
    mention = next(s for s in work.database if s.effect == "clear_mention" and s.table == "calls")
    assert mention.reference_field == "handled_by_user_id" and mention.reference_values == [1]
    objects = {o.prefix: o for o in work.objects}
    # Keys come from the map's template for every erased call (deleting a missing object is a no-op).
    assert objects["recordings"].keys == ["recordings/20/50.wav", "recordings/20/51.wav"]
    assert objects["transcripts"].keys == ["transcripts/20/50.json", "transcripts/20/51.json"]
    assert objects["exports"].folders == ["exports/exp-20261101-0123456789ab/"]
    assert [(p.processor, p.record_ids) for p in work.processors] == [
        ("payments_processor", []), ("crm", ["c-1"]), ("support_desk", [])
    ]


def test_payments_within_the_legal_period_are_minimised_with_their_end_date_the_rest_deleted(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap, payments=[(70, True), (72, True), (71, False)]))
    by = steps(work)
    assert by[("payments", "minimise_kept_rows")] == [70, 72] and by[("payments", "delete_expired_kept_rows")] == [71]
    [kept] = [k for k in work.kept if k.reason == "legal_exception"]
    assert kept.count == 2 and kept.until == "2027-01-15T00:00:00+00:00" and kept.until_latest == "2027-01-17T00:00:00+00:00"
    assert kept.fields_kept == ["amount_cents", "processor_charge_id", "paid_at"]
    assert set(kept.fields_cleared) == {"user_id", "card_last4", "billing_address"}
    assert "seven years" in kept.basis


def test_business_hold_keeps_that_business_rows_with_what_they_own_and_their_objects(datamap: DataMap) -> None:
    holds = ActiveHolds()
    holds.businesses[20].append(hold(3, "business", business_id=20))
    work = work_for(datamap, resolution(datamap), holds)
    by = steps(work)
    assert by[("callers", "delete_rows")] == [] and by[("calls", "delete_rows")] == []
    assert by[("users", "delete_rows")] == [1]  # business 10 is not held
    kept = {(k.where, k.kind): k for k in work.kept}
    assert kept[("aircalls_app.calls", "rows")].keys == [50, 51] and kept[("aircalls_app.calls", "rows")].hold_ids == [3]
    assert kept[("aircalls_objects.recordings", "objects")].keys == ["recordings/20/50.wav", "recordings/20/51.wav"]
    assert {o.prefix: o.keys for o in work.objects}["recordings"] == []
    assert work.verification_exclude["aircalls_app.callers"] == [5]


def test_a_held_row_keeps_the_rows_it_points_at_so_no_foreign_key_breaks(datamap: DataMap) -> None:
    holds = ActiveHolds()
    holds.tables["app.calls"].append(hold(4, "table", table_name="app.calls"))
    work = work_for(datamap, resolution(datamap), holds)
    by = steps(work)
    assert by[("calls", "delete_rows")] == [] and by[("calls", "clear_mention")] == []
    assert by[("callers", "delete_rows")] == []  # its calls still point at it
    assert by[("users", "delete_rows")] == []  # a held call still names the user as handler
    reasons = {(k.where, k.reason) for k in work.kept}
    assert ("aircalls_app.callers", "referenced_by_held_row") in reasons
    assert ("aircalls_app.users", "referenced_by_held_row") in reasons
    assert ("aircalls_app.calls.handled_by_user_id", "mentions") in {(k.where, k.kind) for k in work.kept}
    assert by[("usage_events", "delete_rows")] == [900, 901]  # what nothing held points at still goes


def test_person_hold_keeps_everything_including_objects_exports_and_processor_records(datamap: DataMap) -> None:
    holds = ActiveHolds(person=[hold(9, "person")])
    work = work_for(datamap, resolution(datamap), holds)
    assert work.person_held and not work.has_changes
    assert all(not s.keys for s in work.database)
    kinds = {(k.where, k.kind) for k in work.kept}
    assert {("crm", "processor_records"), ("aircalls_objects.exports", "objects"), ("aircalls_app.users", "rows")} <= kinds
    assert all(k.hold_ids == [9] for k in work.kept if k.reason == "legal_hold")


def test_plan_survives_json_and_its_summary_holds_counts_only(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap))
    again = ErasureWork.from_json(json.loads(json.dumps(work.to_json(), default=str)))
    assert again == work
    summary = json.dumps(work.summary())
    assert "recordings/20/50.wav" not in summary and "c-1" not in summary and '"keys"' not in summary
    assert work.summary()["tables"]["aircalls_app.calls"] == {"clear_mention": 1, "delete_rows": 2}
    text = approval_markdown(work.summary())
    assert "| aircalls_app.calls | delete rows | 2 |" in text and "Kept" in text


def test_guard_refuses_a_share_beyond_the_limit_but_not_mentions_or_small_tables(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap))
    sizes = {"aircalls_app.usage_events": 1000, "aircalls_app.users": 5, "aircalls_app.calls": 3}
    ok = evaluate_guard(work, sizes, max_table_share=0.001, min_rows=2, override=False)
    assert not ok.refused and ok.reasons == []  # 2 usage events <= 2 rows always allowed; mentions uncounted
    strict = evaluate_guard(work, sizes, max_table_share=0.001, min_rows=1, override=False)
    assert strict.refused and any(r.startswith("aircalls_app.usage_events: 2 of about 1000 rows") for r in strict.reasons)
    assert "override_guard" in refusal_message(strict) and "narrower identity" in refusal_message(strict)
    overridden = evaluate_guard(work, sizes, max_table_share=0.001, min_rows=1, override=True)
    assert not overridden.refused and overridden.overridden and overridden.reasons == strict.reasons


def test_guard_refuses_several_people_behind_one_identity(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap))
    work.ambiguities = [{"where": "aircalls_app.callers", "business_id": 4, "rows": 2}]
    decision = evaluate_guard(work, {}, max_table_share=0.5, min_rows=1000, override=False)
    assert decision.refused and "2 rows in business 4" in decision.reasons[0]


def test_guard_limits_come_from_the_environment_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert guard_limits() == (0.001, 1000)
    monkeypatch.setenv("GOVERNANCE_ERASURE_MAX_TABLE_SHARE", "0.01")
    monkeypatch.setenv("GOVERNANCE_ERASURE_GUARD_MIN_ROWS", "50")
    assert guard_limits() == (0.01, 50)
    monkeypatch.setenv("GOVERNANCE_ERASURE_MAX_TABLE_SHARE", "2")
    with pytest.raises(ValueError, match="must be in"):
        guard_limits()


def test_narrowing_leaves_out_another_person_and_settles_a_household_by_the_email() -> None:
    rows = TableRows(t("callers"), "id", "business_id", ())
    candidates = {
        3: {"id": 3, "business_id": 4, "__id_phone": MATCHES, "__id_email": MATCHES},  # the person
        4: {"id": 4, "business_id": 4, "__id_phone": MATCHES, "__id_email": 0},  # same phone, no e-mail
        6: {"id": 6, "business_id": 9, "__id_phone": MATCHES, "__id_email": DIFFERS},  # someone else's e-mail
        8: {"id": 8, "business_id": 5, "__id_phone": MATCHES, "__id_email": 0},  # another business
    }
    rows.by_identity = set(candidates)
    assert _narrow(rows, candidates, ["phone", "email"], groups=True) == []
    assert rows.excluded == {4: FEWER_IDENTITIES, 6: OTHER_IDENTITY}

    tie = TableRows(t("callers"), "id", "business_id", ())
    both = {3: {"id": 3, "business_id": 4, "__id_phone": MATCHES}, 4: {"id": 4, "business_id": 4, "__id_phone": MATCHES}}
    tie.by_identity = set(both)
    [ambiguity] = _narrow(tie, both, ["phone"], groups=True)
    assert (ambiguity.table, ambiguity.scope, ambiguity.rows) == (t("callers"), 4, 2) and tie.excluded == {}


def test_statements_are_keyed_by_primary_keys_and_idempotent(datamap: DataMap) -> None:
    work = work_for(datamap, resolution(datamap))
    statements = approved_statements(datamap, work)
    by = {(s.table, s.effect): statements[s.step_id] for s in work.database}
    assert by[("calls", "delete_rows")].text == 'DELETE FROM "app"."calls" WHERE "id" = ANY(%(keys)s)'
    minimise = by[("payments", "minimise_kept_rows")]
    assert minimise.text.startswith(
        'UPDATE "app"."payments" SET "user_id" = NULL, "card_last4" = %(mask_payments_card_last4)s'
    )
    assert '"id" = ANY(%(keys)s) AND ("user_id" IS NOT NULL OR "card_last4" IS DISTINCT FROM' in minimise.text
    assert minimise.params == {"mask_payments_card_last4": "****"} and minimise.input_params == ("keys",)
    clear = by[("calls", "clear_mention")]
    assert clear.text.endswith('"id" = ANY(%(keys)s) AND "handled_by_user_id" = ANY(%(reference_values)s)')
    assert clear.input_params == ("keys", "reference_values")
    # The plan records exactly what runs: the SQL shown (dry run, approval) is the statement's.
    for step in work.database:
        assert step.sql == statements[step.step_id].text and step.statement_sha256 == statements[step.step_id].sha256
    shown = {s["step"]: s["sql"] for s in work.summary()["statements"]}
    assert shown == {s.step_id: s.sql for s in work.database}
    assert "```sql" in approval_markdown(work.summary())


def test_a_changed_data_map_refuses_the_approved_plan(datamap: DataMap) -> None:
    work = ErasureWork.from_json(json.loads(json.dumps(work_for(datamap, resolution(datamap)).to_json(), default=str)))
    approved_statements(datamap, work)  # unchanged: fine
    data = datamap.model_dump(by_alias=True)
    payments = next(t for t in data["systems"][0]["tables"] if t["name"] == "payments")
    for field in payments["fields"]:
        if field["name"] == "card_last4":
            field["mask_value"] = "XXXX"  # same statement text, other constant: still another erasure
    with pytest.raises(PlanOutdated, match=r"aircalls_app.payments minimise_kept_rows.*plan the erasure again"):
        approved_statements(DataMap.model_validate(data), work)
    data = datamap.model_dump(by_alias=True)
    usage = next(t for t in data["systems"][0]["tables"] if t["name"] == "usage_events")
    for field in usage["fields"]:
        if field.get("erasure") == "delete_row":
            field["erasure"] = "nullify"
    with pytest.raises(PlanOutdated, match="usage_events delete_rows"):
        approved_statements(DataMap.model_validate(data), work)


def test_a_keyed_hash_rewrite_binds_digests_the_client_computed_never_the_key_pads(datamap: DataMap) -> None:
    data = datamap.model_dump(by_alias=True)
    for field in data["systems"][0]["tables"][1]["fields"]:  # users
        if field["name"] == "job_title":
            field["erasure"] = "keyed_hash"
    hashed = DataMap.model_validate(data)
    spec = hashed.table(t("users")).field("job_title")
    assert spec is not None
    rewrite = field_rewrite(t("users"), spec, primary_key="id")
    assert rewrite.keyed_hash and rewrite.input_params == ("kh_values_job_title",)
    assert "sha256" not in rewrite.assignment.as_string() and "!~ '^[0-9a-f]{64}$'" in rewrite.pending.as_string()
    statement = Statement("rewrite_rows", t("users"), sql.SQL("UPDATE x SET {}").format(rewrite.assignment), {},
                          ("keys", *rewrite.input_params))  # fmt: skip
    with pytest.raises(KeyError, match="kh_values_job_title"):
        statement.bind({"keys": [1], **keyed_hash_params(b"k" * 32)})


def test_the_guard_counts_dynamodb_items_like_rows_and_refuses_a_plan_deleting_too_large_a_share() -> None:
    from governance.erasure.planner import ItemWork

    work = ErasureWork(plan_id="epl-x", request_id="era-x", as_of=AS_OF.isoformat(), business_id=None,
                       identity_kinds=["phone"], datamap_version="v", datamap_sha256="s")  # fmt: skip
    work.items.append(ItemWork(system="aircalls_events", table="call_events", table_name="t", index=None,
                               by="identity:phone", found=40))  # fmt: skip
    assert work.owned_rows_by_table() == {"aircalls_events.call_events": 40}
    assert work.summary()["items"] == {"aircalls_events.call_events": 40}
    ok = evaluate_guard(work, {"aircalls_events.call_events": 200_000}, max_table_share=0.001, min_rows=10, override=False)
    assert not ok.refused and ok.shares == {"aircalls_events.call_events": 0.0002}
    refused = evaluate_guard(work, {"aircalls_events.call_events": 1_000}, max_table_share=0.001, min_rows=10, override=False)
    assert refused.refused and refused.reasons == [
        "aircalls_events.call_events: 40 of about 1000 rows (4.00%) is more than 0.10% of the table"]  # fmt: skip
