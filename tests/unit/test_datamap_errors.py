"""A broken data map fails fast, naming the file, the path inside it and what is wrong.

Each test breaks one thing in a copy of the shipped map and checks the exact
``FILE: PATH: MESSAGE`` line, so a privacy engineer can fix the map from the message alone.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance.config import INCLUDE_DIR
from governance.datamap import command
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMapError, DataMapUnreadable

SHIPPED = INCLUDE_DIR / "datamap.yaml"
Map = dict[str, Any]


def _base() -> Map:
    data = yaml.load(SHIPPED.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(data, dict)
    return data


def table(data: Map, name: str) -> Map:
    return next(t for t in data["systems"][0]["tables"] if t["name"] == name)


def field(data: Map, table_name: str, field_name: str) -> Map:
    return next(f for f in table(data, table_name)["fields"] if f["name"] == field_name)


def reference(data: Map, table_name: str, field_name: str) -> Map:
    return next(r for r in table(data, table_name)["references"] if r["field"] == field_name)


def prefix(data: Map, name: str) -> Map:
    return next(p for p in data["systems"][1]["prefixes"] if p["name"] == name)


def processor(data: Map, name: str) -> Map:
    return next(p for p in data["processors"] if p["name"] == name)


def rule(data: Map, name: str) -> Map:
    return next(r for r in data["retention"] if r["name"] == name)


def broken(tmp_path: Path, mutate: Callable[[Map], object]) -> tuple[Path, DataMapError]:
    """Write the shipped map with ``mutate`` applied; return the file and the error loading it."""
    data = copy.deepcopy(_base())
    mutate(data)
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
    with pytest.raises(DataMapError) as caught:
        load_datamap(path)
    return path, caught.value


def assert_issue(path: Path, error: DataMapError, map_path: str, *fragments: str) -> None:
    """Some line of ``str(error)`` is ``FILE: map_path: ...`` and contains every fragment."""
    prefix_ = f"{path}: {map_path}: "
    lines = [line for line in str(error).splitlines() if line.startswith(prefix_)]
    assert lines, f"no issue at {map_path!r} in:\n{error}"
    assert any(all(f in line for f in fragments) for line in lines), f"{fragments} not in:\n{error}"


# -- the cases the design lists --------------------------------------------------------------


def test_unknown_data_category_names_the_field_and_suggests_the_taxonomy_key(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "calls", "transcript").update(data_category="user.contnet.private"))
    assert_issue(
        path, error, "systems[aircalls_app].tables[calls].fields[transcript].data_category",
        "unknown fideslang data category 'user.contnet.private'", "did you mean 'user.content.private'?",
    )


def test_unknown_data_use_names_the_field_and_suggests_the_taxonomy_key(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "users", "email").update(data_use="essential.service.operation"))
    assert_issue(
        path, error, "systems[aircalls_app].tables[users].fields[email].data_use",
        "unknown fideslang data use 'essential.service.operation'", "did you mean 'essential.service.operations'?",
    )


def test_deprecated_taxonomy_key_points_at_its_replacement(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "users", "email").update(data_use="personalize.profiling"))
    assert_issue(
        path, error, "systems[aircalls_app].tables[users].fields[email].data_use",
        "is deprecated", "use 'personalize.content.profiling'",
    )


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: table(d, "calls").update(desciption="typo"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].desciption",
                 "unknown key 'desciption'", "did you mean 'description'?")


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: table(d, "calls").pop("primary_key"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].primary_key", "required key is missing")


def test_reference_to_a_missing_system(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "calls", "caller_id")["to"].update(system="aircals_app"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].references[caller_id].to.system",
                 "missing system 'aircals_app'", "did you mean 'aircalls_app'?")


def test_reference_to_a_missing_table(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "calls", "caller_id")["to"].update(table="caller"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].references[caller_id].to.table",
                 "missing table aircalls_app.caller", "did you mean 'callers'?")


def test_reference_to_a_missing_field(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "calls", "caller_id")["to"].update(field="caller_uid"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].references[caller_id].to.field",
                 "missing field callers.caller_uid")


def test_reference_from_a_field_the_table_does_not_have(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "calls", "caller_id").update(field="callerid"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].references[callerid].field",
                 "missing field 'callerid'", "did you mean 'caller_id'?")


def test_ownership_cycle_is_reported_with_the_tables_around_it(tmp_path: Path) -> None:
    def make_cycle(d: Map) -> None:
        callers = table(d, "callers")
        callers["fields"].append(
            {"name": "first_call_id", "data_category": "system.operations", "data_use": "essential.service.operations"}
        )
        callers["references"].append({"field": "first_call_id", "to": {"table": "calls"}, "kind": "ownership"})

    path, error = broken(tmp_path, make_cycle)
    assert_issue(path, error, "systems[aircalls_app].tables[callers].references",
                 "ownership cycle: aircalls_app.callers -> aircalls_app.calls -> aircalls_app.callers")


def test_self_ownership_is_a_cycle(tmp_path: Path) -> None:
    def own_self(d: Map) -> None:
        tickets = table(d, "support_tickets")
        tickets["fields"].append(
            {"name": "parent_id", "data_category": "system.operations", "data_use": "essential.service.operations"}
        )
        tickets["references"].append({"field": "parent_id", "to": {"table": "support_tickets"}, "kind": "ownership"})

    path, error = broken(tmp_path, own_self)
    assert_issue(path, error, "systems[aircalls_app].tables[support_tickets].references", "ownership cycle")


def test_identity_on_a_missing_column(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: table(d, "users")["identities"][0].update(field="e_mail"))
    assert_issue(path, error, "systems[aircalls_app].tables[users].identities[e_mail].field",
                 "identity on a missing column 'e_mail'", "did you mean 'email'?")


def test_identity_of_an_undeclared_kind(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: table(d, "users")["identities"][0].update(kind="emial"))
    assert_issue(path, error, "systems[aircalls_app].tables[users].identities[email].kind",
                 "unknown identity kind 'emial'", "did you mean 'email'?")


def test_duplicate_system_names(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["systems"].append(copy.deepcopy(d["systems"][1])))
    assert_issue(path, error, "systems[aircalls_objects]", "duplicate system/processor name 'aircalls_objects'")


def test_duplicate_table_names(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["systems"][0]["tables"].append(copy.deepcopy(table(d, "calls"))))
    assert_issue(path, error, "systems[aircalls_app].tables[calls]", "duplicate table name 'calls'")


def test_duplicate_field_names(tmp_path: Path) -> None:
    path, error = broken(
        tmp_path, lambda d: table(d, "calls")["fields"].append(copy.deepcopy(field(d, "calls", "transcript")))
    )
    assert_issue(path, error, "systems[aircalls_app].tables[calls].fields[transcript]", "duplicate field name 'transcript'")


def test_duplicate_processor_names(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["processors"].append(copy.deepcopy(processor(d, "crm"))))
    assert_issue(path, error, "processors[crm]", "duplicate system/processor name 'crm'")


@pytest.mark.parametrize(
    ("period", "shown"), [("P0D", "'P0D'"), (0, "0 days"), (-5, "-5 days"), ("-P5D", "'-P5D'")]
)
def test_retention_period_zero_or_negative(tmp_path: Path, period: object, shown: str) -> None:
    path, error = broken(tmp_path, lambda d: rule(d, "messages_1_year").update(period=period))
    assert_issue(path, error, "retention[messages_1_year].period", "period must be positive", shown)


def test_retention_period_that_is_not_a_duration(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: rule(d, "messages_1_year").update(period="1 year"))
    assert_issue(path, error, "retention[messages_1_year].period", "'1 year' is not a period", "ISO-8601")


def test_retention_rule_on_a_missing_age_column(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: rule(d, "messages_1_year").update(age_column="sentat"))
    assert_issue(path, error, "retention[messages_1_year].age_column",
                 "missing age column 'sentat'", "did you mean 'sent_at'?")


def test_object_retention_rule_on_a_missing_age_column_of_the_tied_table(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: rule(d, "recordings_90_days").update(age_column="start"))
    assert_issue(path, error, "retention[recordings_90_days].age_column", "missing age column 'start'", "tied table 'calls'")


def test_processor_without_an_erase_call(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "crm").pop("erase"))
    assert_issue(path, error, "processors[crm].erase", "processor without an erase call")


def test_paging_needs_exactly_one_source_of_the_next_cursor(tmp_path: Path) -> None:
    def both(d: Map) -> None:
        d["processors"][0]["lookup"]["paging"]["next_cursor_path"] = "paging.next.after"

    path, error = broken(tmp_path, both)
    assert_issue(path, error, "processors[payments_processor].lookup.paging", "exactly one of cursor_field",
                 "next_cursor_path")  # fmt: skip


def test_paging_whose_cursor_parameter_is_already_a_query_parameter(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "payments_processor")["lookup"]["paging"].update(
        cursor_param="email"))  # fmt: skip
    assert_issue(path, error, "processors[payments_processor].lookup.paging.cursor_param",
                 "'email' is already a query parameter")  # fmt: skip


def test_an_erase_call_that_pages(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "crm")["erase"].update(
        paging={"cursor_param": "after", "cursor_field": "id"}))  # fmt: skip
    assert_issue(path, error, "processors[crm].erase.paging", "an erase call does not page")


def test_processor_call_with_an_unknown_placeholder(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "crm")["erase"].update(path="/api/contacts/{contact}"))
    assert_issue(path, error, "processors[crm].erase", "placeholder {contact} is not one of the record id")


def test_object_key_template_naming_a_column_the_tied_table_lacks(tmp_path: Path) -> None:
    path, error = broken(
        tmp_path, lambda d: prefix(d, "recordings").update(key_template="recordings/{business}/{call_id}.wav")
    )
    assert_issue(path, error, "systems[aircalls_objects].prefixes[recordings].key_template",
                 "placeholder {business} is not a column of the tied table 'calls'", "did you mean 'business_id'?")


def test_object_key_placeholder_mapped_to_a_missing_column(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: prefix(d, "transcripts")["tied_to"].update(placeholders={"call_id": "callid"}))
    assert_issue(path, error, "systems[aircalls_objects].prefixes[transcripts].key_template",
                 "{call_id} (mapped to column 'callid') is not a column")


def test_erasure_keep_without_legal_basis(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "payments", "amount_cents").pop("legal_basis"))
    assert_issue(path, error, "systems[aircalls_app].tables[payments].fields[amount_cents].legal_basis",
                 "erasure: keep needs a legal_basis")


def test_erasure_keep_with_an_undeclared_legal_basis(tmp_path: Path) -> None:
    path, error = broken(
        tmp_path, lambda d: field(d, "payments", "amount_cents").update(legal_basis="payment_tax_records")
    )
    assert_issue(path, error, "systems[aircalls_app].tables[payments].fields[amount_cents].legal_basis",
                 "'payment_tax_records' is not declared", "did you mean 'payments_tax_records'?")


# -- further mistakes worth catching ---------------------------------------------------------


def test_yaml_null_as_erasure_action_explains_nullify(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "calls", "transcript").update(erasure=None))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].fields[transcript].erasure", "write nullify")


def test_personal_field_without_erasure_action(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "calls", "transcript").pop("erasure"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].fields[transcript].erasure",
                 "personal field without an erasure action")


def test_mention_reference_must_be_cleared_not_deleted(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: field(d, "calls", "handled_by_user_id").update(erasure="delete_row"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].fields[handled_by_user_id].erasure",
                 "must be nullify, mask or keyed_hash")


def test_kept_rows_must_not_stay_linked_to_the_person(tmp_path: Path) -> None:
    path, error = broken(
        tmp_path,
        lambda d: field(d, "payments", "user_id").update(erasure="keep", legal_basis="payments_tax_records"),
    )
    assert_issue(path, error, "systems[aircalls_app].tables[payments].fields[user_id].erasure",
                 "links a row to the person")


def test_deleting_rows_that_other_rows_were_collected_for_needs_the_unreferenced_condition(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["retention"].append({
        "name": "businesses_10_years", "system": "aircalls_app", "table": "businesses", "age_column": "created_at",
        "period": "P10Y", "action": "delete_rows", "reason": "Former clients are not kept forever.",
    }))  # fmt: skip
    assert_issue(path, error, "retention[businesses_10_years].conditions",
                 "aircalls_app.callers", "{unreferenced: true}")


def test_deleting_rows_that_own_other_rows_needs_no_condition_because_retention_follows_ownership(tmp_path: Path) -> None:
    data = _base()
    rule(data, "inactive_callers_2_years").pop("conditions")
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    datamap = load_datamap(path)
    assert next(r for r in datamap.retention if r.name == "inactive_callers_2_years").conditions == []


def test_retention_shorter_than_the_legal_exception(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: rule(d, "payments_7_years").update(period="P1Y"))
    assert_issue(path, error, "retention[payments_7_years].period", "legal exception 'payments_tax_records'", "P7Y")


def test_personal_table_no_identity_reaches(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: table(d, "support_tickets").update(references=[]))
    assert_issue(path, error, "systems[aircalls_app].tables[support_tickets]",
                 "no identity or ownership reference reaches it")


def test_unknown_system_kind(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["systems"][1].update(kind="s4"))
    assert_issue(path, error, "systems[aircalls_objects].kind", "unknown kind 's4'", "expected one of 'postgres', 's3'")


def test_invalid_enum_value_suggests_the_closest(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "crm")["erase"].update(method="DELET"))
    assert_issue(path, error, "processors[crm].erase.method", "'DELET' is not allowed", "did you mean 'DELETE'?")


def test_every_issue_is_reported_not_just_the_first(tmp_path: Path) -> None:
    def two_problems(d: Map) -> None:
        field(d, "calls", "transcript").update(data_category="user.contnet.private")
        processor(d, "crm").pop("erase")

    path, error = broken(tmp_path, two_problems)
    assert len(error.issues) == 2
    assert str(error).count("\n") == 1
    assert all(line.startswith(f"{path}: ") for line in str(error).splitlines())


def test_issues_carry_the_line_in_the_file(tmp_path: Path) -> None:
    text = SHIPPED.read_text().replace("data_category: user.content.private, data_use: essential.service.operations, "
                                       "erasure: delete_row}", "data_category: user.contnet.private, data_use: "
                                       "essential.service.operations, erasure: delete_row}", 1)
    path = tmp_path / "datamap.yaml"
    path.write_text(text)
    with pytest.raises(DataMapError) as caught:
        load_datamap(path)
    expected_line = next(n for n, line in enumerate(text.splitlines(), 1) if "user.contnet.private" in line)
    assert caught.value.issues[0].line == expected_line
    assert str(caught.value).endswith(f"(line {expected_line})")


# -- YAML and file problems ------------------------------------------------------------------


def test_yaml_syntax_error_reports_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "datamap.yaml"
    path.write_text('version: "1"\nsystems:\n  - name: app\n   kind: postgres\n')
    with pytest.raises(DataMapError) as caught:
        load_datamap(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4:"), message
    assert "YAML syntax error" in message


def test_duplicate_yaml_key_is_an_error_instead_of_a_silent_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "datamap.yaml"
    path.write_text(SHIPPED.read_text().replace("  default_phone_region: US\n",
                                                "  default_phone_region: US\n  default_phone_region: GB\n", 1))
    with pytest.raises(DataMapError) as caught:
        load_datamap(path)
    assert_issue(path, caught.value, "settings.default_phone_region", "duplicate key 'default_phone_region'")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "datamap.yaml"
    path.write_text("")
    with pytest.raises(DataMapError, match="must be a mapping"):
        load_datamap(path)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataMapUnreadable, match="cannot read the data map"):
        load_datamap(tmp_path / "nope.yaml")


# -- the command ----------------------------------------------------------------------------


def _run_command(path: Path) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args([str(path)]))


def test_validate_command_prints_a_summary_and_exits_0_for_the_shipped_map(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_command(SHIPPED) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 4 systems, 13 tables, ")
    assert "3 processors (version " in out and "sha256 " in out


def test_validate_command_prints_every_issue_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _error = broken(tmp_path, lambda d: processor(d, "crm").pop("erase"))
    assert _run_command(path) == 1
    assert f"{path}: processors[crm].erase: processor without an erase call" in capsys.readouterr().out


def test_validate_command_exits_2_for_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_command(tmp_path / "missing.yaml") == 2
    assert "cannot read the data map" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The escape hatch: connector: python names a class checked at load


def test_python_connector_class_that_does_not_exist_is_a_placed_error(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "support_desk").update(
        {"class": "governance.connectors.support_desk:SupportDeskConector"}))  # fmt: skip
    assert_issue(path, error, "processors[support_desk].class", "has no class 'SupportDeskConector'",
                 "SupportDeskConnector")  # fmt: skip
    path, error = broken(tmp_path, lambda d: processor(d, "support_desk").update({"class": "governance.nowhere:Desk"}))
    assert_issue(path, error, "processors[support_desk].class", "module 'governance.nowhere' does not import")


def test_python_connector_class_must_satisfy_the_contract(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: processor(d, "support_desk").update(
        {"class": "governance.connectors.base:ProcessorRecord"}))  # fmt: skip
    assert_issue(path, error, "processors[support_desk].class", "is not a ProcessorConnector")
    path, error = broken(tmp_path, lambda d: processor(d, "support_desk").update(
        {"class": "governance.connectors.base:ProcessorConnector"}))  # fmt: skip
    assert_issue(path, error, "processors[support_desk].class", "does not implement", "erase")


def test_python_connector_needs_lookup_by_and_takes_no_templates(tmp_path: Path) -> None:
    def mutate(d: Map) -> None:
        desk = processor(d, "support_desk")
        desk["lookup_by"] = ["emial"]
        desk["erase"] = {"method": "DELETE", "path": "/x/{id}"}

    path, error = broken(tmp_path, mutate)
    assert_issue(path, error, "processors[support_desk].lookup_by[0]", "'emial' is not an identity kind", "email")
    assert_issue(path, error, "processors[support_desk].erase", "connector: python takes no erase")
    path, error = broken(tmp_path, lambda d: processor(d, "crm").pop("lookup"))
    assert_issue(path, error, "processors[crm].lookup", "needs a lookup call")


def test_an_email_kind_compared_with_plain_lower_is_refused_as_it_misses_decomposed_addresses(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: d["identity_kinds"]["email"].update(match="lower"))
    assert_issue(path, error, "identity_kinds.email.match", "decomposed (NFD)", "lower_nfc")


def test_an_email_identity_overriding_the_match_with_lower_is_refused(tmp_path: Path) -> None:
    def mutate(d: Map) -> None:
        next(i for i in table(d, "callers")["identities"] if i["field"] == "email")["match"] = "lower"

    path, error = broken(tmp_path, mutate)
    assert_issue(path, error, "systems[aircalls_app].tables[callers].identities[email].match", "lower_nfc")


# -- cross-system references (the analytics warehouse points into the app) -------------------


def warehouse_reference(data: Map, table_name: str, field_name: str) -> Map:
    system = next(s for s in data["systems"] if s["name"] == "aircalls_warehouse")
    tables = next(t for t in system["tables"] if t["name"] == table_name)
    return next(r for r in tables["references"] if r["field"] == field_name)


WAREHOUSE_FACTS = "systems[aircalls_warehouse].tables[call_facts].references[call_id]"


def test_a_cross_system_reference_to_a_missing_system_is_placed_with_a_suggestion(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: warehouse_reference(d, "call_facts", "call_id")["to"].update(system="aircals_app"))
    assert_issue(path, error, f"{WAREHOUSE_FACTS}.to.system", "missing system 'aircals_app'", "aircalls_app")


def test_a_cross_system_reference_to_a_missing_table_names_the_other_system(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: warehouse_reference(d, "call_facts", "call_id")["to"].update(table="cals"))
    assert_issue(path, error, f"{WAREHOUSE_FACTS}.to.table", "missing table aircalls_app.cals", "calls")


def test_a_cross_system_reference_to_a_missing_field_of_the_other_table_is_placed(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: warehouse_reference(d, "call_facts", "call_id")["to"].update(field="call_id"))
    assert_issue(path, error, f"{WAREHOUSE_FACTS}.to.field", "missing field calls.call_id")


def test_a_cross_system_reference_from_a_missing_field_is_placed_on_the_referencing_side(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: warehouse_reference(d, "user_sessions", "user_id").update(field="usr_id"))
    assert_issue(path, error, "systems[aircalls_warehouse].tables[user_sessions].references[usr_id].field",
                 "missing field 'usr_id'", "user_id")  # fmt: skip


def test_a_cross_system_reference_to_an_object_store_is_refused(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: warehouse_reference(d, "call_facts", "call_id")["to"].update(system="aircalls_objects"))
    assert_issue(path, error, f"{WAREHOUSE_FACTS}.to.system", "references point at tables", "s3 system")

# -- mention-only rows (orphan / export of a mention) -------------------------------------------


def test_orphan_rules_are_placed_errors_on_other_kinds_missing_fields_and_keys(tmp_path: Path) -> None:
    def mutate(d: Map) -> None:
        reference(d, "messages", "caller_id").update(orphan="delete_row", export="include")
        reference(d, "calls", "handled_by_user_id").update(orphan={"clear": ["transcrpt", "caller_id", "id"]})

    path, error = broken(tmp_path, mutate)
    calls = "systems[aircalls_app].tables[calls].references[handled_by_user_id].orphan.clear"
    assert_issue(path, error, "systems[aircalls_app].tables[messages].references[caller_id].orphan",
                 "applies to mention references only", "'caller_id' is kind: ownership")  # fmt: skip
    assert_issue(path, error, "systems[aircalls_app].tables[messages].references[caller_id].export",
                 "applies to mention references only")  # fmt: skip
    assert_issue(path, error, f"{calls}[0]", "missing field 'transcrpt'", "did you mean 'transcript'?")
    assert_issue(path, error, f"{calls}[1]", "'caller_id' is a reference of 'calls'")
    assert_issue(path, error, f"{calls}[2]", "'id' is the primary key of 'calls'")


def test_orphan_delete_row_is_refused_where_the_rows_own_objects(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "calls", "handled_by_user_id").update(orphan="delete_row"))
    assert_issue(path, error, "systems[aircalls_app].tables[calls].references[handled_by_user_id].orphan",
                 "would leave what rows of 'calls' own", "aircalls_objects.recordings", "orphan: {clear")  # fmt: skip


def test_orphan_rule_of_unknown_shape_is_a_placed_error(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: reference(d, "messages", "user_id").update(orphan="erase", export="yes"))
    assert "systems[aircalls_app].tables[messages].references[user_id].orphan" in str(error)
    assert "systems[aircalls_app].tables[messages].references[user_id].export" in str(error)


# -- the DynamoDB call-event store -----------------------------------------------------------


def item_table(data: Map, name: str = "call_events") -> Map:
    system = next(s for s in data["systems"] if s["kind"] == "dynamodb")
    return next(t for t in system["tables"] if t["name"] == name)


def test_dynamodb_identity_that_would_need_a_scan_for_one_person_is_refused(tmp_path: Path) -> None:
    def identity_off_every_key(d: Map) -> None:
        item_table(d)["identities"] = [{"field": "payload", "kind": "email"}]

    path, error = broken(tmp_path, identity_off_every_key)
    assert_issue(path, error, "systems[aircalls_events].tables[call_events].identities[payload]",
                 "would need a Scan", "global secondary index")  # fmt: skip


def test_dynamodb_partition_key_that_is_no_identity_is_refused(tmp_path: Path) -> None:
    path, error = broken(tmp_path, lambda d: item_table(d)["partition_key"].pop("kind"))
    assert_issue(path, error, "systems[aircalls_events].tables[call_events].partition_key.kind", "would need a Scan")


def test_dynamodb_identity_on_an_index_partition_key_is_a_query_and_validates(tmp_path: Path) -> None:
    data = copy.deepcopy(_base())
    events = item_table(data)
    events["attributes"].append({"name": "caller_email", "data_category": "user.contact.email",
                                 "data_use": "essential.service.operations", "erasure": "delete_row"})  # fmt: skip
    events["indexes"].append({"name": "by_email", "partition_key": {"attribute": "caller_email"}, "purpose": "business"})
    events["identities"] = [{"field": "caller_email", "kind": "email"}]
    events["indexes"][-1].pop("purpose")
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.dump(data, sort_keys=False))
    with pytest.raises(DataMapError) as caught:  # two business indexes: the by_email one defaults to business
        load_datamap(path)
    assert_issue(path, caught.value, "systems[aircalls_events].tables[call_events].indexes", "at most one index")


def test_dynamodb_key_ttl_and_index_attributes_must_be_declared(tmp_path: Path) -> None:
    def undeclared(d: Map) -> None:
        events = item_table(d)
        events["sort_key"]["attribute"] = "occured_at"
        events["ttl_attribute"] = "expires"

    path, error = broken(tmp_path, undeclared)
    assert_issue(path, error, "systems[aircalls_events].tables[call_events].sort_key.attribute", "occured_at",
                 "did you mean")  # fmt: skip
    assert_issue(path, error, "systems[aircalls_events].tables[call_events].ttl_attribute", "expires")


def test_dynamodb_attribute_erasure_other_than_delete_row_is_refused(tmp_path: Path) -> None:
    def masked(d: Map) -> None:
        next(a for a in item_table(d)["attributes"] if a["name"] == "payload")["erasure"] = "nullify"

    path, error = broken(tmp_path, masked)
    assert_issue(path, error, "systems[aircalls_events].tables[call_events].attributes[payload].erasure", "deleted whole")
