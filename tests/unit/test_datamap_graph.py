"""Identity resolution, erasure order and the SQL plans are computed from the map alone.

Pure tests: plans are rendered with ``Composed.as_string()`` (no connection needed in psycopg
3.2+); nothing here talks to a database.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg import sql

from governance.config import INCLUDE_DIR
from governance.datamap import graph, plans
from governance.datamap.loader import load_datamap, validate_datamap
from governance.datamap.model import DataMap, DataMapError, PrefixRef, ReferenceKind, TableRef

SHIPPED = INCLUDE_DIR / "datamap.yaml"
APP = "aircalls_app"
OBJECTS = "aircalls_objects"
WAREHOUSE = "aircalls_warehouse"


def t(name: str) -> TableRef:
    return TableRef(APP, name)


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(SHIPPED)


def raw_map() -> dict[str, Any]:
    data = yaml.load(SHIPPED.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(data, dict)
    return data


def rendered(query: sql.Composable) -> str:
    return query.as_string()


def all_sql(*plan_parts: Any) -> list[str]:
    """Every SQL text of resolution, erasure and retention plans."""
    texts: list[str] = []
    for part in plan_parts:
        if isinstance(part, plans.ResolutionPlan):
            texts += [s.text for s in part.statements]
        elif isinstance(part, plans.ErasurePlan):
            texts += [s.statement.text for s in part.statements]
            texts += [s.check.text for s in part.statements if s.check is not None]
        elif isinstance(part, plans.RetentionPlan):
            texts += [s.text for s in part.all_statements]
    return texts


def all_statements(*plan_parts: Any) -> list[plans.Statement]:
    out: list[plans.Statement] = []
    for part in plan_parts:
        if isinstance(part, plans.ResolutionPlan):
            out += part.statements
        elif isinstance(part, plans.ErasurePlan):
            out += [s.statement for s in part.statements] + [s.check for s in part.statements if s.check is not None]
        elif isinstance(part, plans.RetentionPlan):
            out += part.all_statements
    return out


# -- identity resolution --------------------------------------------------------------------


def test_resolution_from_email_reaches_every_table_holding_the_persons_rows(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email"])
    assert set(plan.tables) == {
        t("users"), t("callers"),  # identity matches
        t("support_tickets"), t("marketing_preferences"), t("usage_events"), t("payments"),  # owned by the user
        t("calls"), t("messages"), t("appointments"),  # owned by the caller
        TableRef(WAREHOUSE, "marketing_audience"),  # matched by e-mail in the warehouse
        TableRef(WAREHOUSE, "call_facts"), TableRef(WAREHOUSE, "user_sessions"),  # owned across systems
    }
    assert t("businesses") not in plan.tables
    assert {o.prefix for o in plan.objects} == {PrefixRef(OBJECTS, "recordings"), PrefixRef(OBJECTS, "transcripts")}
    assert all(o.source == t("calls") for o in plan.objects)
    assert [r.prefix for r in plan.request_objects] == [PrefixRef(OBJECTS, "exports")]


def test_identity_steps_match_on_the_normalised_expression(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email", "phone"])
    users = plan.step(t("users")).select.text
    callers = plan.step(t("callers")).select.text
    assert 'lower(normalize("email", NFC)) = ANY(%(email)s)' in users
    assert '"phone_e164" = ANY(%(phone)s)' in users
    assert '"phone" = ANY(%(phone)s)' in callers and 'lower(normalize("email", NFC)) = ANY(%(email)s)' in callers
    # One state per identity column (absent 0, matches 1, differs 2): what narrowing reads.
    assert users == (
        'SELECT "id", "business_id", '
        'CASE WHEN "email" IS NULL THEN 0 WHEN lower(normalize("email", NFC)) = ANY(%(email)s) THEN 1 ELSE 2 END AS "__id_email", '
        'CASE WHEN "phone_e164" IS NULL THEN 0 WHEN "phone_e164" = ANY(%(phone)s) THEN 1 ELSE 2 END AS "__id_phone_e164" '
        'FROM "app"."users" WHERE (lower(normalize("email", NFC)) = ANY(%(email)s) OR "phone_e164" = ANY(%(phone)s)) ORDER BY "id"'
    )
    assert plan.step(t("users")).count.text == (
        'SELECT count(*) FROM "app"."users" WHERE (lower(normalize("email", NFC)) = ANY(%(email)s) OR "phone_e164" = ANY(%(phone)s)) '
        'AND "id" <> ALL(%(excluded_aircalls_app_users)s)'
    )


def test_keyed_hash_matching_binds_the_keys_the_client_matched_and_limits_to_rows_recorded_before(
    datamap: DataMap,
) -> None:
    plan = plans.build_resolution_plan(datamap, ["email", "phone"], matching="keyed_hash")
    callers = plan.step(t("callers")).select
    matched_phone = '"id" = ANY(%(kh_matched_aircalls_app_callers_phone)s)'
    assert f'({matched_phone} AND "first_seen_at" < %(kh_created_before)s)' in callers.text
    assert "%(phone)s" not in callers.text and "%(email)s" not in callers.text
    assert {"kh_matched_aircalls_app_callers_phone", "kh_created_before"} <= set(callers.input_params)
    # The client hashes the column as the normaliser compares it; no statement takes key material.
    scans = {(s.column.table.table, s.column.field): s.statement.text for s in plan.hash_scans}
    assert scans[("users", "email")] == (
        'SELECT "id", lower(normalize("email", NFC))::text FROM "app"."users" WHERE "email" IS NOT NULL'
    )
    assert set(scans) == {("users", "email"), ("users", "phone_e164"), ("callers", "phone"), ("callers", "email"),
                          ("marketing_audience", "email")}  # fmt: skip
    assert not [s for s in plan.statements if set(s.input_params) & {"keyed_hash_inner_pad", "keyed_hash_outer_pad"}]
    # No record-time column: only the keys the erasure removed may match again.
    users_without_created_at = raw_map()
    users = next(x for x in users_without_created_at["systems"][0]["tables"] if x["name"] == "users")
    users["fields"] = [f for f in users["fields"] if f["name"] != "created_at"]
    users_plan = plans.build_resolution_plan(validate_datamap(users_without_created_at), ["email"], matching="keyed_hash")
    assert '"id" = ANY(%(kh_planned_aircalls_app_users)s)' in users_plan.step(t("users")).select.text


def test_client_keyed_hash_with_a_domain_is_the_identity_hashers_hmac() -> None:
    from governance.crypto import IdentityHasher, Keyring

    key = b"k" * 32
    hasher = IdentityHasher(Keyring(active_id="k1", keys={"k1": key}))
    pads = plans.keyed_hash_params(key)
    domain = plans.keyed_hash_domain("phone")
    computed = plans.ClientKeyedHash(pads, domain=domain)("+15550102000")
    assert computed == plans.keyed_hash_reference(key, "+15550102000", domain=domain) == hasher.hash("phone", "+15550102000")


def test_resolution_from_phone_alone_uses_only_phone_columns(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["phone"])
    assert plan.required_params == ("phone",)
    assert {s.table for s in plan.steps if s.identity_matches} == {t("users"), t("callers")}
    assert all("%(email)s" not in text for text in all_sql(plan))
    assert [p.processor for p in plan.processors] == []  # both processors look people up by e-mail only


def test_dependent_steps_select_by_parent_keys_after_their_parents(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email"])
    order = plan.tables
    assert order.index(t("callers")) < order.index(t("calls"))
    assert order.index(t("users")) < order.index(t("support_tickets"))
    callers = plan.step(t("callers"))
    assert callers.output_params == {"callers_ids": "id"}
    assert plan.step(t("calls")).select.text == (
        'SELECT "id", "business_id", "recording_key", "caller_id", COALESCE("caller_id" = ANY(%(callers_ids)s), false) '
        'AS "__own_0" FROM "app"."calls" WHERE ("caller_id" = ANY(%(callers_ids)s)) ORDER BY "id"'
    )
    assert plan.step(t("calls")).input_params == ("callers_ids",)
    # Leaf tables need no materialised ids: erasure and export use their match directly.
    assert not plan.step(t("usage_events")).materialise


def test_mention_references_are_reported_separately_from_owned_rows(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email"])
    mentions = {(m.edge.child, m.edge.field) for m in plan.mentions}
    assert mentions == {(t("calls"), "handled_by_user_id"), (t("messages"), "user_id")}
    handled = next(m for m in plan.mentions if m.edge.field == "handled_by_user_id")
    assert handled.edge.kind is ReferenceKind.mention
    assert handled.select.text == (
        'SELECT "id", "handled_by_user_id", "business_id", "caller_id" FROM "app"."calls" WHERE "handled_by_user_id" = '
        'ANY(%(users_ids)s) ORDER BY "id"'
    )  # the owner columns tell mention-only rows (no caller) from rows that are the caller's
    # calls is owned only through callers, never through the user it mentions
    assert [e.parent for e in plan.step(t("calls")).owned_via] == [t("callers")]


def test_processors_are_looked_up_with_the_identities_they_accept(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email", "phone"])
    assert {(p.processor, p.identity_kinds) for p in plan.processors} == {
        ("payments_processor", ("email",)), ("crm", ("email",)), ("support_desk", ("email",)),
    }


def test_unknown_identity_kind_is_refused(datamap: DataMap) -> None:
    with pytest.raises(DataMapError, match="cannot resolve by"):
        plans.build_resolution_plan(datamap, ["passport"])


# -- business scope -------------------------------------------------------------------------


def test_business_scope_restricts_every_table_with_a_declared_scope_column(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email", "phone"], business_scope=True)
    assert plan.required_params == ("email", "phone", "scope_ids")
    for step in plan.steps:
        scope_column = datamap.table(step.table).scope_column
        text = step.select.text
        if scope_column:
            assert f'"{scope_column}" = ANY(%(scope_ids)s)' in text, step.table
            assert step.scoped and "scope_ids" in step.input_params
        else:  # reached through a scoped parent: already limited to the business
            assert "scope_ids" not in text, step.table
    assert {s.table for s in plan.steps if not s.scoped} == {
        t("support_tickets"), t("marketing_preferences"), t("usage_events")
    }
    for mention in plan.mentions:
        assert '"business_id" = ANY(%(scope_ids)s)' in mention.select.text


def test_without_business_scope_no_scope_filter_appears(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email", "phone"])
    erasure = plans.build_erasure_plan(datamap, plan)
    assert all("scope_ids" not in text for text in all_sql(plan, erasure))


def test_scope_column_comes_from_the_map_not_from_a_column_name(datamap: DataMap) -> None:
    data = raw_map()
    callers = next(x for x in data["systems"][0]["tables"] if x["name"] == "callers")
    callers["fields"].append({"name": "tenant", "data_category": "system.operations", "data_use": "essential.service.operations"})
    callers["references"] = [{"field": "tenant", "to": {"table": "businesses"}, "kind": "scope"}]
    plan = plans.build_resolution_plan(validate_datamap(data), ["phone"], business_scope=True)
    assert '"tenant" = ANY(%(scope_ids)s)' in plan.step(t("callers")).select.text


def test_scoped_request_leaves_out_identity_tables_without_a_scope_column() -> None:
    data = raw_map()
    users = next(x for x in data["systems"][0]["tables"] if x["name"] == "users")
    users["references"] = []  # no business_id scope on users any more
    scoped = plans.build_resolution_plan(validate_datamap(data), ["email"], business_scope=True)
    assert scoped.out_of_scope == (t("users"),)
    assert t("users") not in scoped.tables and t("support_tickets") not in scoped.tables
    assert t("callers") in scoped.tables
    assert not any(m.edge.parent == t("users") for m in scoped.mentions)


# -- erasure order --------------------------------------------------------------------------


def test_erasure_order_puts_children_before_parents(datamap: DataMap) -> None:
    order = graph.erasure_order(datamap)
    before = [
        ("calls", "callers"), ("messages", "callers"), ("appointments", "callers"),
        ("support_tickets", "users"), ("marketing_preferences", "users"), ("usage_events", "users"),
        ("payments", "users"),
        ("calls", "users"), ("messages", "users"),  # mentions are cleared before the user row goes
    ]  # fmt: skip
    for child, parent in before:
        assert order.index(t(child)) < order.index(t(parent)), (child, parent)
    assert t("businesses") not in order


def test_erasure_order_is_deterministic_and_independent_of_map_order(datamap: DataMap) -> None:
    data = raw_map()
    data["systems"][0]["tables"].reverse()
    assert graph.erasure_order(validate_datamap(data)) == graph.erasure_order(datamap)
    warehouse = lambda name: TableRef(WAREHOUSE, name)  # noqa: E731
    assert graph.erasure_order(datamap) == [
        t("appointments"), t("marketing_preferences"), t("messages"), t("payments"), t("support_tickets"),
        t("usage_events"), warehouse("call_facts"), t("calls"), t("callers"), warehouse("marketing_audience"),
        warehouse("user_sessions"), t("users"),
    ]


def test_erasure_order_raises_on_a_reference_cycle() -> None:
    data = raw_map()
    callers = next(x for x in data["systems"][0]["tables"] if x["name"] == "callers")
    callers["fields"].append({"name": "last_call_id", "data_category": "system.operations",
                              "data_use": "essential.service.operations", "erasure": "nullify"})
    callers["references"].append({"field": "last_call_id", "to": {"table": "calls"}, "kind": "mention"})
    unchecked = DataMap.model_validate(data)  # shape only: the loader would reject it
    with pytest.raises(DataMapError, match="cycle"):
        graph.erasure_order(unchecked)
    with pytest.raises(DataMapError, match="reference cycle: aircalls_app.callers -> aircalls_app.calls"):
        validate_datamap(data)


# -- a new table joins every workflow without code changes ----------------------------------


def with_voicemails() -> DataMap:
    data = raw_map()
    data["systems"][0]["tables"].append(
        {
            "name": "voicemails",
            "primary_key": "id",
            "references": [
                {"field": "business_id", "to": {"table": "businesses"}, "kind": "scope"},
                {"field": "caller_id", "to": {"table": "callers"}, "kind": "ownership"},
            ],
            "fields": [
                {"name": "id", "data_category": "system.operations", "data_use": "essential.service.operations"},
                {"name": "business_id", "data_category": "system.operations", "data_use": "essential.service.operations"},
                {"name": "caller_id", "data_category": "user.unique_id", "data_use": "essential.service.operations",
                 "erasure": "delete_row"},
                {"name": "left_at", "data_category": "user.behavior", "data_use": "essential.service.operations",
                 "erasure": "delete_row"},
            ],
        }
    )
    data["systems"][1]["prefixes"].append(
        {
            "name": "voicemail_audio",
            "key_template": "voicemails/{business_id}/{voicemail_id}.wav",
            "owned_by": "row",
            "tied_to": {"system": APP, "table": "voicemails", "placeholders": {"voicemail_id": "id"}},
            "data_category": "user.content.private",
            "data_use": "essential.service.operations",
        }
    )
    data["retention"].append(
        {"name": "voicemails_90_days", "system": APP, "table": "voicemails", "age_column": "left_at",
         "period": "P90D", "action": "delete_rows", "reason": "Voicemails are listened to within days."}
    )
    return validate_datamap(data, source="voicemails.yaml")


def test_a_new_owned_table_and_prefix_join_resolution_erasure_and_retention_without_code_changes() -> None:
    datamap = with_voicemails()
    resolution = plans.build_resolution_plan(datamap, ["phone"], business_scope=True)
    voicemails = resolution.step(t("voicemails"))
    assert voicemails.export.text == (
        'SELECT "id", "business_id", "caller_id", "left_at" FROM "app"."voicemails" WHERE ("caller_id" = '
        'ANY(%(callers_ids)s)) AND "business_id" = ANY(%(scope_ids)s) AND "id" <> ALL(%(excluded_aircalls_app_voicemails)s) '
        'ORDER BY "id"'
    )
    audio = next(o for o in resolution.objects if o.prefix.prefix == "voicemail_audio")
    assert audio.keys_for([{"id": 7, "business_id": 3}]) == ["voicemails/3/7.wav"]

    order = graph.erasure_order(datamap)
    assert order.index(t("voicemails")) < order.index(t("callers"))
    erasure = plans.build_erasure_plan(datamap, resolution)
    delete = next(s for s in erasure.statements if s.table == t("voicemails"))
    assert delete.effect == "delete_rows"
    assert erasure.table_order.index(t("voicemails")) < erasure.table_order.index(t("callers"))
    assert audio in erasure.objects

    retention = plans.build_retention_plan(datamap)
    rule = next(s for s in retention.statements if s.rule == "voicemails_90_days")
    assert [o.prefix.prefix for o in rule.objects] == ["voicemail_audio"]
    # callers' retention now also waits for the caller's voicemails to be gone (unreferenced),
    # and would take them with the caller (cascade) were the condition dropped
    callers_rule = next(s for s in retention.statements if s.rule == "inactive_callers_2_years")
    assert '"app"."voicemails"' in callers_rule.scan.text
    assert t("voicemails") in callers_rule.deletion_order


# -- erasure statements ---------------------------------------------------------------------


def test_erasure_plan_deletes_owned_rows_and_clears_mentions(datamap: DataMap) -> None:
    erasure = plans.build_erasure_plan(datamap, plans.build_resolution_plan(datamap, ["email"]))
    by_key = {(s.table.table, s.effect): s for s in erasure.statements}
    # Keyed by the primary keys resolution found (and holds left free), bound in batches.
    assert by_key[("usage_events", "delete_rows")].statement.text == (
        'DELETE FROM "app"."usage_events" WHERE "id" = ANY(%(keys)s)'
    )
    clear = by_key[("calls", "clear_mention")]
    assert clear.statement.text == (
        'UPDATE "app"."calls" SET "handled_by_user_id" = NULL WHERE "id" = ANY(%(keys)s) '
        'AND "handled_by_user_id" = ANY(%(reference_values)s)'
    )
    assert clear.fields == ("handled_by_user_id",) and clear.check is not None
    assert clear.check.text == (
        'SELECT "id" FROM "app"."calls" WHERE "id" = ANY(%(keys)s) AND "handled_by_user_id" = ANY(%(reference_values)s) '
        'ORDER BY 1'
    )
    statements = list(erasure.statements)
    assert statements.index(clear) < statements.index(by_key[("users", "delete_rows")])
    assert erasure.processors == ("payments_processor", "crm", "support_desk")


def test_legal_exception_minimises_kept_payments_and_deletes_expired_ones(datamap: DataMap) -> None:
    erasure = plans.build_erasure_plan(datamap, plans.build_resolution_plan(datamap, ["email"]))
    payments = [s for s in erasure.statements if s.table == t("payments")]
    assert [s.effect for s in payments] == ["delete_expired_kept_rows", "minimise_kept_rows"]
    expired, minimise = payments
    assert "delete_rows" not in {s.effect for s in payments}
    text = minimise.statement.text
    assert text == (
        'UPDATE "app"."payments" SET "user_id" = NULL, "card_last4" = %(mask_payments_card_last4)s, '
        '"billing_address" = NULL WHERE "id" = ANY(%(keys)s) AND ("user_id" IS NOT NULL OR "card_last4" IS DISTINCT '
        'FROM %(mask_payments_card_last4)s OR "billing_address" IS NOT NULL)'
    )
    for kept in ("amount_cents", "processor_charge_id", "paid_at", "currency"):
        assert f'"{kept}' not in text, kept
    assert minimise.statement.params == {"mask_payments_card_last4": "****"}
    assert minimise.legal_exception == "payments_tax_records" == expired.legal_exception
    assert expired.statement.text == 'DELETE FROM "app"."payments" WHERE "id" = ANY(%(keys)s)'
    # Which rows are still inside the legal period is resolution's to say, as of the run's date.
    select = plans.build_resolution_plan(datamap, ["email"]).step(t("payments")).select
    assert ('("paid_at" IS NULL OR "paid_at" + %(legal_period_payments_tax_records)s::interval > %(as_of)s::timestamptz)'
            in select.text)  # fmt: skip
    assert select.params["legal_period_payments_tax_records"] == "7 years 0 months 0 days" and "as_of" in select.input_params
    assert minimise.check is not None and '("card_last4" IS NOT DISTINCT FROM %(mask_payments_card_last4)s) AS ' \
        '"card_last4_cleared"' in minimise.check.text
    assert erasure.kept[t("payments")].name == "payments_tax_records"


def test_keyed_hash_and_mask_actions_render_as_bound_parameters() -> None:
    data = raw_map()
    usage = next(x for x in data["systems"][0]["tables"] if x["name"] == "usage_events")
    for spec in usage["fields"]:
        if spec["name"] == "user_id":
            spec["erasure"] = "nullify"
        elif spec["name"] == "device_id":
            spec["erasure"] = "keyed_hash"
        elif spec["name"] == "path":
            spec.update(erasure="mask", mask_value="/redacted")
        elif spec.get("erasure") == "delete_row":
            spec["erasure"] = "nullify"
    datamap = validate_datamap(data)
    erasure = plans.build_erasure_plan(datamap, plans.build_resolution_plan(datamap, ["email"]))
    rewrite = next(s for s in erasure.statements if s.table == t("usage_events"))
    assert rewrite.effect == "rewrite_rows"
    text = rewrite.statement.text
    assert '"path" = %(mask_usage_events_path)s' in text and "/redacted" not in text
    assert ('"device_id" = CASE WHEN ("device_id" IS NOT NULL AND "device_id"::text !~ \'^[0-9a-f]{64}$\') '
            'THEN %(kh_values_device_id)s::jsonb ->> "id"::text ELSE "device_id" END') in text
    assert "kh_values_device_id" in rewrite.statement.input_params
    assert not {"keyed_hash_inner_pad", "keyed_hash_outer_pad"} & set(rewrite.statement.input_params)
    inputs = rewrite.statement.keyed_hash_inputs
    assert inputs is not None and rewrite.statement.keyed_hash_fields == ("device_id",)
    assert inputs.text.endswith("FOR UPDATE") and inputs.input_params == ("keys",)
    assert rewrite.statement.params["mask_usage_events_path"] == "/redacted"


def test_keyed_hash_parameters_reproduce_hmac_sha256() -> None:
    key = b"governance-test-key-" * 5  # longer than a block: hashed first, as HMAC does
    pads = plans.keyed_hash_params(key)
    value = "Caller Name"
    inner = hashlib.sha256(pads["keyed_hash_inner_pad"] + value.encode()).digest()
    assert hashlib.sha256(pads["keyed_hash_outer_pad"] + inner).hexdigest() == plans.keyed_hash_reference(key, value)
    assert plans.ClientKeyedHash(pads)(value) == plans.keyed_hash_reference(key, value)
    assert key not in pads.values()


# -- retention statements -------------------------------------------------------------------


def test_retention_plan_uses_structured_conditions_and_keyset_batches_on_the_age_column(datamap: DataMap) -> None:
    retention = plans.build_retention_plan(datamap)
    missed = next(s for s in retention.statements if s.rule == "missed_calls_6_months")
    assert '"t"."outcome" = ANY(%(condition_0)s) AS "__due"' in missed.scan.text
    assert missed.scan.params["condition_0"] == ["missed"]
    assert missed.statement.text == 'DELETE FROM "app"."calls" WHERE "id" = ANY(%(keys)s)'
    assert [o.prefix.prefix for o in missed.objects] == ["recordings", "transcripts"]
    for statement in retention.statements:
        scan = statement.scan.text
        age = f'"t"."{statement.age_column}"'
        assert scan.endswith(f'ORDER BY {age}, "t"."{statement.primary_key}" LIMIT %(batch_size)s'), statement.rule
        assert f'({age}, "t"."{statement.primary_key}") > (%(after_age)s::timestamptz, %(after_pk)s)' in scan
        assert "OFFSET" not in scan and "now()" not in scan, statement.rule
        assert f"{age} < %(as_of)s::timestamptz - %(period_{statement.rule})s::interval" in scan, statement.rule
        assert f"held_keys__{statement.table.system}__" in scan and "%(held_tables)s" in scan, statement.rule


def test_a_tables_rules_run_generalise_and_null_before_delete(datamap: DataMap) -> None:
    names = [s.rule for s in plans.build_retention_plan(datamap).statements]
    assert names.index("usage_ip_generalised_30_days") < names.index("usage_device_details_90_days")
    assert names.index("usage_device_details_90_days") < names.index("usage_events_13_months")
    assert names.index("call_transcript_text_90_days") < names.index("missed_calls_6_months")


def test_deleting_a_parent_takes_what_it_owns_children_first_and_unreferenced_keeps_its_meaning(datamap: DataMap) -> None:
    retention = plans.build_retention_plan(datamap)
    callers = next(s for s in retention.statements if s.rule == "inactive_callers_2_years")
    for child in ("calls", "messages", "appointments"):
        assert sql.SQL("NOT EXISTS (SELECT 1 FROM {}").format(sql.Identifier("app", child)).as_string() in callers.scan.text
    assert set(callers.deletion_order) == {t("calls"), t("messages"), t("appointments")}
    calls_step = next(c for c in callers.cascade if c.table == t("calls"))
    assert [o.prefix.prefix for o in calls_step.objects] == ["recordings", "transcripts"]
    # a caller is kept (held) when an owned call is held: the scan checks the owned rows' holds
    assert "held_keys__aircalls_app__calls" in callers.scan.input_params
    assert 'AS "__held_by_child"' in callers.scan.text and "EXISTS (SELECT 1 FROM" in callers.scan.text
    # the payments rule's own table is under a legal exception: its rows say so
    payments = next(s for s in retention.statements if s.rule == "payments_7_years")
    assert '"t"."paid_at" >= %(as_of)s::timestamptz - %(legal_period_payments_tax_records)s::interval' in payments.scan.text


def test_retention_generalises_ip_addresses_and_nulls_device_details(datamap: DataMap) -> None:
    retention = plans.build_retention_plan(datamap)
    ip = next(s for s in retention.statements if s.rule == "usage_ip_generalised_30_days")
    text = ip.statement.text
    assert 'SET "ip_address" = network(set_masklen("ip_address", CASE WHEN family("ip_address") = 4' in text
    assert ip.statement.params["ipv4_prefix"] == 24 and ip.statement.params["ipv6_prefix"] == 48
    assert 'masklen("ip_address") >' in text  # the update re-checks the row still needs it
    assert 'masklen("t"."ip_address") >' in ip.scan.text  # generalised rows are not pending
    device = next(s for s in retention.statements if s.rule == "usage_device_details_90_days")
    assert device.statement.text.startswith('UPDATE "app"."usage_events" SET "user_agent" = NULL, "device_id" = NULL')


def test_object_retention_ages_by_the_tied_row_or_by_last_modified(datamap: DataMap) -> None:
    retention = plans.build_retention_plan(datamap)
    by_rule = {o.rule: o for o in retention.objects}
    recordings = by_rule["recordings_90_days"]
    assert recordings.age_source == "row" and recordings.scan is not None
    assert '("t"."started_at", "t"."id") > (%(after_age)s::timestamptz, %(after_pk)s)' in recordings.scan.text
    assert '"t"."recording_key" IS NOT NULL AS "__pending"' in recordings.scan.text
    assert recordings.clear_key_column is not None
    assert recordings.clear_key_column.text == (
        'UPDATE "app"."calls" SET "recording_key" = NULL WHERE "id" = ANY(%(keys)s)'
    )
    exports = by_rule["export_bundles_30_days"]
    assert (exports.age_source, exports.list_prefix, exports.period_days) == ("last_modified", "exports/", 30)
    assert {o.prefix.prefix for o in retention.orphans} == {"recordings", "transcripts"}


# -- no personal data in SQL text -----------------------------------------------------------

_ALLOWED_LITERALS = {"'UTF8'", "'hex'", "'UTC'"}


def test_no_identity_or_map_value_ever_appears_in_generated_sql(datamap: DataMap) -> None:
    resolution = plans.build_resolution_plan(datamap, ["email", "phone"], business_scope=True)
    texts = all_sql(
        resolution,
        plans.build_resolution_plan(datamap, ["email"]),
        plans.build_erasure_plan(datamap, resolution),
        plans.build_retention_plan(datamap),
    )
    assert texts
    for text in texts:
        # values only travel as placeholders: the only quoted literals are fixed function arguments
        assert set(re.findall(r"'[^']*'", text)) <= _ALLOWED_LITERALS, text
        assert "@" not in text and "+1" not in text and "****" not in text
        assert "%s" not in text  # named placeholders only


def test_identity_values_are_bound_parameters_of_a_psycopg_query(datamap: DataMap) -> None:
    # psycopg's own conversion of a query and its params into what is sent to the server
    # (private module, pinned psycopg version): the SQL carries $1, the value travels apart.
    from psycopg._queries import PostgresQuery

    step = plans.build_resolution_plan(datamap, ["email"]).step(t("users"))
    query = PostgresQuery(transformer=_transformer())
    query.convert(step.select.query, step.select.bind({"email": ["Alice@Example.com"]}))
    assert b"Alice" not in query.query and query.query.endswith(b'= ANY($1)) ORDER BY "id"')
    assert query.params is not None and any(b"Alice" in (p or b"") for p in query.params)


def _transformer() -> Any:
    from psycopg.adapt import Transformer

    return Transformer()


# -- object keys and processor requests -----------------------------------------------------


def test_object_keys_come_from_the_template_and_the_stored_key() -> None:
    step = plans.ObjectStep(
        PrefixRef(OBJECTS, "recordings"), "recordings/{business_id}/{call_id}.wav", t("calls"),
        {"business_id": "business_id", "call_id": "id"}, "recording_key",
    )
    rows = [{"id": 5, "business_id": 2, "recording_key": "recordings/2/5.wav"},
            {"id": 6, "business_id": 2, "recording_key": "legacy/6.wav"}]
    assert step.keys_for(rows) == ["legacy/6.wav", "recordings/2/5.wav", "recordings/2/6.wav"]
    with pytest.raises(ValueError, match="cannot be used in an object key"):
        step.keys_for([{"id": "../x", "business_id": 1, "recording_key": None}])


def test_export_bundle_prefixes_are_keyed_by_request_id(datamap: DataMap) -> None:
    exports = plans.build_resolution_plan(datamap, ["email"]).request_objects[0]
    assert exports.prefixes_for(["req-1", "req-2"]) == ["exports/req-1/", "exports/req-2/"]


def test_processor_requests_are_filled_from_templates_and_never_print_the_identity(datamap: DataMap) -> None:
    payments = datamap.processor("payments_processor")
    crm = datamap.processor("crm")
    assert payments is not None and crm is not None and crm.erase is not None
    lookup = plans.build_processor_request(payments.lookup, {"email": "ann+x@example.com"})
    assert (lookup.method, lookup.path, dict(lookup.query)) == ("GET", "/v1/customers", {"email": "ann+x@example.com"})
    assert "ann" not in repr(lookup)
    erase = plans.build_processor_request(crm.erase, {"id": "c/1"})
    assert (erase.method, erase.path, erase.absent_status) == ("DELETE", "/api/contacts/c%2F1", (404,))
    assert plans.records_at({"data": [{"id": "cus_1"}]}, "data") == [{"id": "cus_1"}]
    assert plans.records_at({"results": []}, "results") == []
    assert plans.records_at({"id": "c1"}, None) == [{"id": "c1"}]


def test_declared_paging_continues_from_the_last_record_while_the_processor_says_there_is_more(
    datamap: DataMap,
) -> None:
    payments = datamap.processor("payments_processor")
    assert payments is not None
    charges = plans.build_processor_request(next(e for e in payments.export if e.name == "charges"), {"id": "cus_1"})
    page = [{"id": "ch_3"}, {"id": "ch_2"}]
    following = charges.next_page({"data": page, "has_more": True}, page)
    assert following is not None and following.path == charges.path
    assert dict(following.query) == {"customer": "cus_1", "starting_after": "ch_2"}
    assert charges.next_page({"data": page, "has_more": False}, page) is None, "the last page"
    assert charges.next_page({"data": [], "has_more": True}, []) is None, "an empty page ends paging"
    assert charges.next_page({"data": page}, page) is None, "no has_more: nothing says there is more"
    customer = plans.build_processor_request(payments.export[0], {"id": "cus_1"})
    assert customer.paging is None and customer.next_page({"has_more": True}, [{"id": "x"}]) is None


def test_declared_paging_can_take_the_next_cursor_from_the_response() -> None:
    from governance.datamap.model import Paging, ProcessorExport

    template = ProcessorExport(name="notes", method="GET", path="/notes", query={"contact": "{id}"},
                               records_path="results", paging=Paging(cursor_param="after",
                                                                      next_cursor_path="paging.next.after"))  # fmt: skip
    request = plans.build_processor_request(template, {"id": "7"})
    page = [{"id": 1}]
    following = request.next_page({"results": page, "paging": {"next": {"after": "NTI1Cg"}}}, page)
    assert following is not None and dict(following.query) == {"contact": "7", "after": "NTI1Cg"}
    assert request.next_page({"results": page, "paging": {}}, page) is None
    with pytest.raises(ValueError, match="exactly one of cursor_field"):
        Paging(cursor_param="after")


def test_export_query_selects_every_mapped_column_of_the_persons_rows(datamap: DataMap) -> None:
    step = plans.build_resolution_plan(datamap, ["phone"]).step(t("callers"))
    assert step.export.text == (
        'SELECT "id", "business_id", "phone", "full_name", "email", "first_seen_at" FROM "app"."callers" '
        'WHERE ("phone" = ANY(%(phone)s)) AND "id" <> ALL(%(excluded_aircalls_app_callers)s) ORDER BY "id"'
    )
    assert step.export.input_params == ("phone", "excluded_aircalls_app_callers")


def test_every_placeholder_of_every_statement_is_a_declared_parameter(datamap: DataMap) -> None:
    """A statement binds exactly its constants and run-time values: nothing else reaches SQL."""
    resolution = plans.build_resolution_plan(datamap, ["email", "phone"], business_scope=True)
    statements = all_statements(
        resolution,
        plans.build_resolution_plan(datamap, ["email", "phone"], matching="keyed_hash"),
        plans.build_erasure_plan(datamap, resolution),
        plans.build_retention_plan(datamap),
    )
    for statement in statements:
        placeholders = set(re.findall(r"%\((\w+)\)s", statement.text))
        assert placeholders == set(statement.params) | set(statement.input_params), statement
        assert not set(statement.params) & set(statement.input_params), statement


def test_reach_is_a_pure_function_of_the_map(datamap: DataMap, tmp_path: Path) -> None:
    copy_path = tmp_path / "datamap.yaml"
    copy_path.write_text(SHIPPED.read_text())
    assert graph.subject_reach(load_datamap(copy_path), ["email"]) == graph.subject_reach(datamap, ["email"])


def test_validate_datamap_explain_sql_prints_the_statements_the_workflows_run(
    datamap: DataMap, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from governance.datamap import command

    assert command.run(argparse.Namespace(path=SHIPPED, explain=True, sql=True)) == 0
    out = capsys.readouterr().out
    resolution = plans.build_resolution_plan(datamap, datamap.identity_kinds)
    for statement in all_statements(resolution, plans.build_erasure_plan(datamap, resolution)):
        if statement.purpose.startswith("verify"):
            continue
        assert f"  {statement.text};" in out, statement
    for statement in plans.build_retention_plan(datamap).all_statements:
        assert f"  {statement.text};" in out, statement
    assert command.run(argparse.Namespace(path=SHIPPED, explain=True, sql=False)) == 0
    assert "SELECT" not in capsys.readouterr().out


def test_explain_shows_what_a_delete_rows_rule_also_deletes_and_clears() -> None:
    from governance.datamap.command import _cascade_lines

    lines = _cascade_lines(with_voicemails(), t("callers"))
    assert "also deletes aircalls_app.voicemails (owned through caller_id) with objects voicemail_audio (every version)" in lines
    assert any(line.startswith("also deletes aircalls_app.calls (owned through caller_id) with objects recordings") for line in lines)
    assert lines[-1] == "keeps a row whose owned rows are under a legal hold or exception (counted as held)"
    users = _cascade_lines(with_voicemails(), t("users"))
    assert "clears aircalls_app.calls.handled_by_user_id (mention)" in users
    assert "clears aircalls_app.messages.user_id (mention); mention-only rows deleted" in users


def test_mention_only_messages_are_deleted_before_the_mention_is_cleared_and_exported(datamap: DataMap) -> None:
    plan = plans.build_resolution_plan(datamap, ["email"])
    statements = [s for s in plans.build_erasure_plan(datamap, plan).statements if s.table == t("messages")]
    effects = [s.effect for s in statements]
    assert effects.index("delete_mention_only_rows") < effects.index("clear_mention") < effects.index("delete_rows")
    only = next(s for s in statements if s.effect == "delete_mention_only_rows")
    assert only.statement.text == (
        'DELETE FROM "app"."messages" WHERE "id" = ANY(%(keys)s) AND "user_id" = ANY(%(reference_values)s)'
        ' AND "caller_id" IS NULL'
    )
    assert only.check is not None and '"caller_id" IS NULL' in only.check.text
    # calls always have a caller: nothing of theirs is mention-only, nothing exported to the handler
    assert not [s for s in plans.build_erasure_plan(datamap, plan).statements if s.table == t("calls")
                and s.effect in plans.MENTION_ONLY_EFFECTS]  # fmt: skip
    exported = {m.edge.field: m.orphan_export for m in plan.mentions}
    assert exported["handled_by_user_id"] is None
    assert exported["user_id"] is not None and exported["user_id"].text.endswith(
        'WHERE "user_id" = ANY(%(users_ids)s) AND "caller_id" IS NULL ORDER BY "id"'
    )


def test_retention_deleting_users_applies_the_orphan_rule_to_unheld_mention_only_messages_first(datamap: DataMap) -> None:
    _steps, mentions, _order = plans._cascade(datamap, t("users"))
    by_field = {(m.edge.child, m.edge.field): m for m in mentions}
    messages = by_field[(t("messages"), "user_id")]
    assert messages.orphan is not None and messages.orphan.text.startswith(
        'DELETE FROM "app"."messages" AS "m" WHERE "m"."user_id" = ANY(%(keys)s) AND "m"."caller_id" IS NULL AND NOT '
    )
    assert "held_keys__aircalls_app__messages" in messages.orphan.input_params
    assert by_field[(t("calls"), "handled_by_user_id")].orphan is None  # orphan: keep
