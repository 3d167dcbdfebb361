"""The shipped data map is valid and covers the reference app schema exactly (DESIGN.md 2-3)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from governance.config import INCLUDE_DIR
from governance.datamap.loader import datamap_version_hash, load_datamap, validate_datamap
from governance.datamap.model import (
    DataMap,
    ErasureAction,
    ReferenceKind,
    RetentionPeriod,
    TableRef,
)
from governance.datamap.taxonomy import describe, taxonomy_problem

DATAMAP = INCLUDE_DIR / "datamap.yaml"
APP_SCHEMA = INCLUDE_DIR / "sql" / "app_schema.sql"
APP = "aircalls_app"

_TABLE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS app\.(\w+) \((.*?)\n\);", re.DOTALL)
_INDEX_RE = re.compile(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS \w+ ON app\.(\w+) \((.+?)\);")
_FK_RE = re.compile(r"REFERENCES app\.(\w+) \((\w+)\)")
_CONSTRAINT_WORDS = {"PRIMARY", "FOREIGN", "CONSTRAINT", "UNIQUE", "CHECK"}


def _ddl() -> str:
    return APP_SCHEMA.read_text()


def ddl_columns() -> dict[str, list[str]]:
    """table -> columns, in DDL order (a deliberately simple reading of our own DDL)."""
    tables: dict[str, list[str]] = {}
    for table, body in _TABLE_RE.findall(_ddl()):
        columns = []
        for line in body.splitlines():
            match = re.match(r"\s*(\w+)\s+\w+", line)
            if match and match.group(1).upper() not in _CONSTRAINT_WORDS:
                columns.append(match.group(1))
        tables[table] = columns
    return tables


def ddl_primary_keys() -> dict[str, str]:
    keys = {}
    for table, body in _TABLE_RE.findall(_ddl()):
        for line in body.splitlines():
            if "PRIMARY KEY" in line:
                keys[table] = line.split()[0]
    return keys


def ddl_foreign_keys() -> dict[tuple[str, str], str]:
    """(table, column) -> referenced table."""
    fks = {}
    for table, body in _TABLE_RE.findall(_ddl()):
        for line in body.splitlines():
            match = _FK_RE.search(line)
            if match:
                fks[(table, line.split()[0])] = match.group(1)
    return fks


def ddl_indexed_expressions() -> set[tuple[str, str]]:
    """(table, index expression) for every index, primary keys included (as their column)."""
    indexed = {(table, expression.strip()) for table, expression in _INDEX_RE.findall(_ddl())}
    indexed |= set(ddl_primary_keys().items())
    return indexed


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap(DATAMAP)


def test_shipped_datamap_validates(datamap: DataMap) -> None:
    counts = datamap.counts()
    assert counts["systems"] == 4  # the app, the analytics warehouse, the object store, the call-event store
    assert counts["item_tables"] == 1
    assert counts["tables"] == 13
    assert counts["processors"] == 3
    assert {p.name for p in datamap.processors} == {"payments_processor", "crm", "support_desk"}
    assert datamap.version


def test_default_path_is_the_configured_datamap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(DATAMAP))
    assert load_datamap().source == str(DATAMAP)


def test_version_hash_is_the_sha256_of_the_file(datamap: DataMap) -> None:
    expected = hashlib.sha256(DATAMAP.read_bytes()).hexdigest()
    assert datamap.version_hash == expected
    assert datamap_version_hash(DATAMAP) == expected


def test_loading_twice_returns_the_cached_map_until_the_file_changes(tmp_path: Path) -> None:
    copy = tmp_path / "datamap.yaml"
    copy.write_bytes(DATAMAP.read_bytes())
    first = load_datamap(copy)
    assert load_datamap(copy) is first
    copy.write_text(DATAMAP.read_text().replace('version: "', 'version: "changed-', 1))
    second = load_datamap(copy)
    assert second is not first
    assert second.version.startswith("changed-")


def test_every_column_of_the_app_schema_is_mapped_and_every_mapped_column_exists(datamap: DataMap) -> None:
    system = datamap.postgres_system(APP)
    mapped = {t.name: t.field_names for t in system.tables}
    ddl = ddl_columns()
    assert set(ddl) == set(mapped), "tables differ between app_schema.sql and the data map"
    for table, columns in ddl.items():
        assert sorted(mapped[table]) == sorted(columns), f"columns of {table} differ"


def test_primary_keys_match_the_ddl(datamap: DataMap) -> None:
    system = datamap.postgres_system(APP)
    assert {t.name: t.primary_key for t in system.tables} == ddl_primary_keys()


def test_every_foreign_key_of_the_ddl_is_a_declared_reference(datamap: DataMap) -> None:
    system = datamap.postgres_system(APP)
    declared = {(t.name, r.field): r.to.table for t in system.tables for r in t.references}
    assert declared == ddl_foreign_keys()


def test_every_identity_field_is_on_an_indexed_column(datamap: DataMap) -> None:
    indexed = ddl_indexed_expressions()
    identities = 0
    for table in datamap.postgres_system(APP).tables:
        for identity in table.identities:
            match = identity.match or datamap.identity_kinds[identity.kind].match
            expression = match.expression(identity.field)
            assert (table.name, expression) in indexed, f"{table.name}.{identity.field} needs an index on {expression}"
            identities += 1
    assert identities == 4


def test_the_reference_identities_are_declared_as_the_design_says(datamap: DataMap) -> None:
    found = {
        (t.name, i.field, i.kind, (i.match or datamap.identity_kinds[i.kind].match).value)
        for t in datamap.postgres_system(APP).tables
        for i in t.identities
    }
    assert found == {
        ("users", "email", "email", "lower_nfc"),
        ("users", "phone_e164", "phone", "exact"),
        ("callers", "phone", "phone", "exact"),
        ("callers", "email", "email", "lower_nfc"),
    }


def test_reference_kinds_follow_the_design(datamap: DataMap) -> None:
    kinds = {(t.name, r.field): r.kind for t in datamap.postgres_system(APP).tables for r in t.references}
    assert kinds[("calls", "caller_id")] is ReferenceKind.ownership
    assert kinds[("calls", "handled_by_user_id")] is ReferenceKind.mention
    assert kinds[("messages", "user_id")] is ReferenceKind.mention
    for owned in [("messages", "caller_id"), ("appointments", "caller_id"), ("support_tickets", "user_id"),
                  ("marketing_preferences", "user_id"), ("usage_events", "user_id"), ("payments", "user_id")]:
        assert kinds[owned] is ReferenceKind.ownership, owned
    business_refs = {key: kind for key, kind in kinds.items() if key[1] == "business_id"}
    assert business_refs and set(business_refs.values()) == {ReferenceKind.scope}


def test_businesses_hold_no_personal_data(datamap: DataMap) -> None:
    businesses = datamap.table(TableRef(APP, "businesses"))
    assert not any(f.is_personal for f in businesses.fields)


def test_every_personal_field_declares_an_erasure_action_and_a_known_category_and_use(datamap: DataMap) -> None:
    for table in datamap.postgres_system(APP).tables:
        for spec in table.fields:
            assert taxonomy_problem(spec.data_category, "data category") is None
            assert taxonomy_problem(spec.data_use, "data use") is None
            if spec.is_personal:
                assert spec.erasure is not None and spec.erasure is not ErasureAction.none, (table.name, spec.name)


def test_payments_are_kept_seven_years_after_paid_at_and_minimised_meanwhile(datamap: DataMap) -> None:
    exception = datamap.legal_exception_for(TableRef(APP, "payments"))
    assert exception is not None
    assert (exception.age_column, exception.period.iso) == ("paid_at", "P7Y")
    payments = datamap.table(TableRef(APP, "payments"))
    actions = {f.name: f.erasure_action for f in payments.fields}
    assert actions["billing_address"] is ErasureAction.nullify
    assert actions["user_id"] is ErasureAction.nullify
    assert actions["card_last4"] is ErasureAction.mask
    assert actions["processor_charge_id"] is ErasureAction.keep
    assert not payments.deletes_rows_on_erasure


def test_object_prefixes_are_tied_as_the_design_says(datamap: DataMap) -> None:
    store = datamap.object_systems[0]
    assert (store.name, store.connection_id) == ("aircalls_objects", "aircalls_objects")
    recordings, transcripts, exports = (store.prefix(n) for n in ("recordings", "transcripts", "exports"))
    assert recordings is not None and recordings.key_template == "recordings/{business_id}/{call_id}.wav"
    assert transcripts is not None and transcripts.key_template == "transcripts/{business_id}/{call_id}.json"
    assert datamap.tie_table(recordings) == datamap.tie_table(transcripts) == TableRef(APP, "calls")
    assert exports is not None and exports.owned_by == "privacy_request"


def test_bucket_comes_from_configuration(datamap: DataMap, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = datamap.object_systems[0].bucket
    monkeypatch.delenv("GOVERNANCE_OBJECTS_BUCKET", raising=False)
    assert bucket.resolve() == "aircalls-data"
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", "other-bucket")
    assert bucket.resolve() == "other-bucket"


def test_processors_declare_lookup_export_and_idempotent_erase(datamap: DataMap) -> None:
    payments = datamap.processor("payments_processor")
    crm = datamap.processor("crm")
    assert payments is not None and crm is not None
    assert (payments.lookup.path, payments.lookup.query, payments.lookup.records_path) == (
        "/v1/customers", {"email": "{email}"}, "data")
    assert payments.erase is not None and payments.erase.method == "DELETE" and 404 in payments.erase.absent_status
    assert payments.auth.type == "bearer"
    assert crm.auth.type == "header" and crm.auth.header == "X-API-Key"
    assert crm.erase is not None and crm.erase.path == "/api/contacts/{id}" and 404 in crm.erase.absent_status
    assert [e.name for e in payments.export] == ["customer", "charges"]
    for processor in (payments, crm):
        assert processor.recipient is not None and processor.recipient.country
    # Stripe-like lists page: the map says how, the connector has no processor-specific code.
    for paged in (payments.lookup, payments.export[1]):
        assert paged.paging is not None
        assert (paged.paging.cursor_param, paged.paging.cursor_field, paged.paging.has_more_path) == (
            "starting_after", "id", "has_more")
    assert payments.export[0].paging is None and crm.lookup.paging is None


def test_every_personal_table_has_retention_rules(datamap: DataMap) -> None:
    ruled = {r.table for r in datamap.retention if r.table}
    personal = {t.name for t in datamap.postgres_system(APP).tables if any(f.is_personal for f in t.fields)}
    # Accounts and their preferences live as long as the account: closing it is an erasure.
    assert personal - ruled == {"users", "marketing_preferences"}
    assert {r.prefix for r in datamap.retention if r.prefix} == {"recordings", "transcripts", "exports"}


@pytest.mark.parametrize(
    ("written", "iso", "days"),
    [("P30D", "P30D", 30), ("P13M", "P13M", 395.72), ("P7Y", "P7Y", 2556.75), ("P2W", "P14D", 14), (90, "P90D", 90),
     ("p1y6m", "P1Y6M", 547.89)],
)  # fmt: skip
def test_retention_periods_parse_iso_durations_and_day_counts(written: object, iso: str, days: float) -> None:
    period = RetentionPeriod.model_validate(written)
    assert period.iso == iso
    assert period.approx_days == pytest.approx(days, abs=0.01)


def test_a_map_validated_from_a_dict_has_no_file_hash() -> None:
    import yaml

    datamap = validate_datamap(yaml.safe_load(DATAMAP.read_text()))
    assert datamap.source == "<memory>" and datamap.version_hash == ""


def test_taxonomy_describes_a_field_purpose_in_words() -> None:
    purpose = describe("user.contact.email", "essential.service.operations")
    assert purpose.category_name == "User Contact Email"
    assert purpose.use_name == "Essential for Operations"
