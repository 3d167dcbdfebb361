"""The data map against a live database: drift is found, personal-looking columns are flagged,
and the report never carries a data value."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
import pytest

from governance.config import INCLUDE_DIR
from governance.datamap.drift import find_drift
from governance.datamap.loader import load_datamap
from governance.datamap.model import DataMap

pytestmark = pytest.mark.integration

APP_SCHEMA = INCLUDE_DIR / "sql" / "app_schema.sql"


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
    report = find_drift(datamap, app_db)
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
    report = find_drift(datamap, app_db)
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
    report = find_drift(datamap, app_db)
    assert [(i.table, i.expression) for i in report.missing_indexes] == [("callers", "lower(normalize(email, NFC))")]
