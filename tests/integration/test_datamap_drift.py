"""The data map against a live database: drift is found, personal-looking columns are flagged,
and the report never carries a data value."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance.config import INCLUDE_DIR
from governance.datamap.drift import drift_findings, find_drift, find_object_drift, finding_counts
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMap

pytestmark = pytest.mark.integration

APP_SCHEMA = INCLUDE_DIR / "sql" / "app_schema.sql"
WAREHOUSE_SCHEMA = INCLUDE_DIR / "sql" / "warehouse_schema.sql"


@pytest.fixture
def datamap() -> DataMap:
    return load_datamap(INCLUDE_DIR / "datamap.yaml")


@pytest.fixture
def app_db(make_db: Callable[[str], str]) -> str:
    url = make_db("drift")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA.read_text())
    return url


def test_reference_schema_matches_the_shipped_map_without_drift(datamap: DataMap, app_db: str) -> None:
    report = find_drift(datamap, {"aircalls_app": app_db})
    assert report.checked_systems == ("aircalls_app",)
    assert report.is_clean, report.messages()


def test_drift_flags_unmapped_personal_columns_missing_columns_and_identity_indexes(
    datamap: DataMap, app_db: str
) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE app.users ADD COLUMN birth_date date")  # personal by name
        conn.execute("ALTER TABLE app.calls ADD COLUMN queue text")  # not personal
        conn.execute("ALTER TABLE app.appointments DROP COLUMN calendar_event_id")  # map is stale
        conn.execute("DROP INDEX app.callers_phone_idx")  # identity lookups would scan
        conn.execute("DROP INDEX app.support_tickets_user_id_idx")  # ownership lookups would scan
        conn.execute("CREATE TABLE app.voicemails (id bigint PRIMARY KEY, left_by text, summary text)")
        conn.execute(
            "INSERT INTO app.voicemails VALUES (1, 'zoe@example.org', 'x'), (2, 'max@example.org', 'y'),"
            " (3, 'kim@example.org', 'z')"
        )
    report = find_drift(datamap, {"aircalls_app": app_db})
    assert not report.is_clean
    assert report.unmapped_tables == ("aircalls_app.voicemails",)
    flagged = {(c.table, c.column): c for c in report.unmapped_columns}
    assert flagged[("users", "birth_date")].looks_personal
    assert not flagged[("calls", "queue")].looks_personal
    left_by = flagged[("voicemails", "left_by")]  # name says nothing, the values do
    assert left_by.looks_personal and "3 of 3 sampled values look like e-mail addresses" in left_by.reason
    assert report.missing_columns == ("aircalls_app.appointments.calendar_event_id",)
    missing = {(i.table, i.expression, i.purpose) for i in report.missing_indexes}
    assert missing == {
        ("callers", "phone", "identity phone"),
        ("support_tickets", "user_id", "ownership reference to users"),
    }
    # Safe to log and to push to XCom: no sampled value anywhere in the report.
    dumped = json.dumps(report.to_dict())
    assert "example.org" not in dumped
    assert report.messages()[0].startswith("unmapped column aircalls_app.")


def test_columns_the_map_sets_to_null_but_the_database_declares_not_null_are_blocking_drift(
    datamap: DataMap, app_db: str
) -> None:
    # The schema is empty, so SET NOT NULL succeeds: an app migration tightening three columns the
    # map clears (a mention, a retention rule's null_fields, a recording key cleared by retention).
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE app.messages ALTER COLUMN user_id SET NOT NULL")
        conn.execute("ALTER TABLE app.appointments ALTER COLUMN notes SET NOT NULL")
        conn.execute("ALTER TABLE app.calls ALTER COLUMN recording_key SET NOT NULL")
    report = find_drift(datamap, {"aircalls_app": app_db})
    assert not report.is_clean
    found = {(n.table, n.column): n.reasons for n in report.not_null_cleared}
    assert set(found) == {("messages", "user_id"), ("appointments", "notes"), ("calls", "recording_key")}
    assert found[("messages", "user_id")] == ("erasure: nullify", "erasure: the mention is cleared")
    assert found[("appointments", "notes")] == ("retention rule appointment_notes_1_year: null_fields",)
    assert "key column cleared" in found[("calls", "recording_key")][0]
    findings = drift_findings(report.to_dict(), {})
    blocking = [f for f in findings if f.kind == "cleared_column_not_nullable"]
    assert len(blocking) == 3 and all(f.blocking for f in blocking)
    placed = {f.path for f in blocking}
    assert "systems[aircalls_app].tables[appointments].fields[notes]" in placed
    assert "datamap.yaml" in blocking[0].placed(datamap) and "(line " in blocking[0].placed(datamap)


def test_a_dropped_mapped_table_is_reported_missing(datamap: DataMap, app_db: str) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("DROP TABLE app.marketing_preferences")
    report = find_drift(datamap, {"aircalls_app": app_db})
    assert report.missing_tables == ("aircalls_app.marketing_preferences",)


def test_lower_email_identity_needs_an_expression_index(datamap: DataMap, app_db: str) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("DROP INDEX app.callers_email_nfc_lower_idx")
        conn.execute("CREATE INDEX callers_email_plain_idx ON app.callers (email)")  # does not serve lower()
        conn.execute("CREATE INDEX callers_email_lower_idx ON app.callers (lower(email))")  # nor does this
    report = find_drift(datamap, {"aircalls_app": app_db})
    assert [(i.table, i.expression) for i in report.missing_indexes] == [("callers", "lower(normalize(email, NFC))")]


# --------------------------------------------------------------------------------------------
# Phone-like values: the column's type and phonenumbers decide, not a count of digits


def test_ten_digit_ids_in_a_bigint_column_or_in_keys_are_not_phone_numbers_but_typed_phones_are(
    datamap: DataMap, app_db: str, s3: Any, make_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE app.ledger_entries (entry_ref bigint, external_ref text, reached_on text)")
        conn.execute(
            "INSERT INTO app.ledger_entries SELECT 2000000000 + n, (2000000000 + n)::text, '(628) 555-01' || (10 + n)"
            " FROM generate_series(1, 20) AS n"
        )
    report = find_drift(datamap, {"aircalls_app": app_db})
    flagged = {c.column: c for c in report.unmapped_columns if c.table == "ledger_entries"}
    assert not flagged["entry_ref"].looks_personal, flagged["entry_ref"].reason  # bigint: a number, never a phone
    assert not flagged["external_ref"].looks_personal, flagged["external_ref"].reason  # digits, no valid number
    assert "20 of 20 sampled values look like phone numbers" in flagged["reached_on"].reason

    bucket = make_bucket("phones")
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", bucket)
    for n in range(1, 4):
        s3.put_object(Bucket=bucket, Key=f"archive/{2000000000 + n}/{3000000000 + n}.bin", Body=b"x")
        s3.put_object(Bucket=bucket, Key=f"greetings/+1415555{n:04d}.wav", Body=b"x")
    objects = find_object_drift(datamap, {"aircalls_objects": s3})
    prefixes = {p.prefix: p for p in objects.unmapped_prefixes}
    assert not prefixes["archive/"].looks_personal, prefixes["archive/"].reason
    assert prefixes["greetings/"].looks_personal and "3 of 3 keys hold phone numbers" in prefixes["greetings/"].reason



def test_the_platforms_own_reports_and_insights_are_not_unmapped_prefixes_but_app_keys_beside_them_are(
    datamap: DataMap, s3: Any, make_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = make_bucket("platform")
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", bucket)
    for key in ("insights/call_volume/2026-11-02_2026-11-29/v1/release.json",  # published aggregates
                "reports/privacy-requests/latest.html",  # the SLA report
                "governance/ledger-anchors/00000000000000000001.json"):  # fmt: skip
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert find_object_drift(datamap, {"aircalls_objects": s3}).unmapped_prefixes == ()

    # An app's key under the report's top-level prefix is still drift.
    s3.put_object(Bucket=bucket, Key="reports/callbacks/+14155550123.wav", Body=b"x")
    # A deployment that publishes insights elsewhere: the default prefix is app data again.
    monkeypatch.setenv("GOVERNANCE_INSIGHTS_PREFIX", "published/insights")
    prefixes = {p.prefix: p for p in find_object_drift(datamap, {"aircalls_objects": s3}).unmapped_prefixes}
    assert set(prefixes) == {"insights/", "reports/"}
    assert prefixes["reports/"].sampled_objects == 1 and prefixes["reports/"].looks_personal


# --------------------------------------------------------------------------------------------
# validate-datamap --live: the drift check from the command line, placed in the file used


def _map_copy_with(tmp_path: Path, anchor: str, after: str, line: str) -> tuple[Path, int]:
    """A copy of the shipped map with ``line`` inserted after the first line containing
    ``after`` below the line containing ``anchor``; returns the copy and the inserted line's number."""
    lines = (INCLUDE_DIR / "datamap.yaml").read_text().splitlines()
    start = next(i for i, text in enumerate(lines) if anchor in text)
    at = next(i for i, text in enumerate(lines) if i > start and after in text) + 1
    lines.insert(at, line)
    copy = tmp_path / "my-datamap.yaml"
    copy.write_text("\n".join(lines) + "\n")
    return copy, at + 1


def test_live_check_names_a_mapped_column_missing_from_the_database_with_its_file_and_line(
    reference_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from governance.cli import main

    assert main(["validate-datamap", "--live"]) == 0, capsys.readouterr()
    assert "live: aircalls_app, aircalls_warehouse, aircalls_objects match the map" in capsys.readouterr().out

    copy, line = _map_copy_with(
        tmp_path, "- name: callers", "{name: full_name, data_category: user.name, data_use: essential.service.operations, erasure: delete_row}",
        "          - {name: preferred_name, data_category: user.name, data_use: essential.service.operations, "
        "erasure: nullify}",
    )
    assert "preferred_name" in copy.read_text().splitlines()[line - 1]
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(copy))
    assert main(["validate-datamap"]) == 0, "the file alone cannot know: it is valid"
    capsys.readouterr()
    assert main(["validate-datamap", "--live"]) == 1
    out, err = capsys.readouterr()
    assert (
        f"{copy}: systems[aircalls_app].tables[callers].fields[preferred_name]: blocking: mapped column "
        f"aircalls_app.callers.preferred_name does not exist in the database (line {line})"
    ) in out.splitlines()
    assert "include/datamap.yaml" not in out + err
    assert f"{copy}: 1 blocking finding(s)" in err


def test_drift_findings_are_placed_with_kinds_and_never_a_value(datamap: DataMap, app_db: str) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE app.users ADD COLUMN nickname text")
        conn.execute("INSERT INTO app.businesses (id, name, industry, country, created_at) VALUES (1, 'b', 'x', 'US', now())")
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, created_at, nickname)"
                     " SELECT n, 1, 'u', 'u' || n || '@x.test', now(), 'nick' || n || '@example.org'"
                     " FROM generate_series(1, 5) AS n")  # fmt: skip
        conn.execute("DROP INDEX app.callers_phone_idx")
    findings = drift_findings(find_drift(datamap, {"aircalls_app": app_db}).to_dict(), {})
    assert finding_counts(findings) == {"unmapped_personal_column": 1, "missing_index": 1}
    personal, index = findings
    assert personal.blocking and not index.blocking
    placed = personal.placed(datamap)
    assert placed.startswith(f"{datamap.source}: systems[aircalls_app].tables[users].fields: blocking: unmapped column")
    assert placed.endswith(")") and "(line " in placed and "example.org" not in placed


def test_the_warehouse_is_checked_against_its_own_database_and_an_unmapped_personal_column_there_is_reported(
    datamap: DataMap, app_db: str, make_db: Callable[[str], str]
) -> None:
    warehouse = make_db("drift_wh")
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute(WAREHOUSE_SCHEMA.read_text())
    clean = find_drift(datamap, {"aircalls_app": app_db, "aircalls_warehouse": warehouse})
    assert clean.checked_systems == ("aircalls_app", "aircalls_warehouse") and clean.is_clean, clean.messages()
    with psycopg.connect(warehouse, autocommit=True) as conn:
        conn.execute("ALTER TABLE analytics.user_sessions ADD COLUMN ip_address inet")  # personal by name
        conn.execute("DROP INDEX analytics.user_sessions_user_id_idx")  # found through the app's user ids
    report = find_drift(datamap, {"aircalls_app": app_db, "aircalls_warehouse": warehouse})
    flagged = {(c.table, c.column): c for c in report.unmapped_columns}
    assert set(flagged) == {("user_sessions", "ip_address")} and flagged[("user_sessions", "ip_address")].looks_personal
    assert [m.table for m in report.missing_indexes] == ["user_sessions"], report.messages()


def test_a_dynamodb_attribute_not_in_the_map_is_reported_and_a_personal_looking_one_blocks(
    datamap: DataMap, dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from governance.datamap.drift import find_item_drift
    from governance_dev.seed.events import call_event_item, create_call_events_table

    name = f"gt-drift-events-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GOVERNANCE_CALL_EVENTS_TABLE", name)
    create_call_events_table(dynamodb, name)
    try:
        item = call_event_item(phone="+13125550177", business_id=3, moment=datetime(2026, 9, 1, tzinfo=UTC),
                               event_id="d1", event_type="ringing", payload={"from": "+13125550177"}, call_id=1)  # fmt: skip
        dynamodb.put_item(TableName=name, Item=item)
        clean = find_item_drift(datamap, {"aircalls_events": dynamodb})
        assert clean.is_clean and clean.sampled_items == 1 and clean.checked_systems == ("aircalls_events",)
        dynamodb.put_item(TableName=name, Item={**item, "occurred_at": {"S": "2026-09-01T00:01:00Z#d2"},
                                                "forwarded_to": {"S": "+14155550123"}, "model_version": {"S": "4.2"}})  # fmt: skip
        report = find_item_drift(datamap, {"aircalls_events": dynamodb})
        flagged = {a.attribute: a for a in report.unmapped_attributes}
        assert set(flagged) == {"forwarded_to", "model_version"}
        assert flagged["forwarded_to"].looks_personal and "phone numbers" in flagged["forwarded_to"].reason
        assert not flagged["model_version"].looks_personal
        findings = drift_findings({}, {"item_stores": report.to_dict()})
        blocking = [f for f in findings if f.blocking]
        assert [f.kind for f in blocking] == ["unmapped_personal_attribute"]
        assert blocking[0].path == "systems[aircalls_events].tables[call_events].attributes"
        assert "+14155550123" not in json.dumps(report.to_dict()) + " ".join(f.message for f in findings)
        assert {f.kind for f in findings if not f.blocking} == {"unmapped_attribute"}
    finally:
        dynamodb.delete_table(TableName=name)
    gone = find_item_drift(datamap, {"aircalls_events": dynamodb})
    assert gone.missing_tables == (f"aircalls_events.call_events ({name})",)
    assert [f.kind for f in drift_findings({}, {"item_stores": gone.to_dict()})] == ["missing_item_table"]
