"""E-mail addresses stored decomposed (NFD) are found, exported and erased: SQL compares
``lower(normalize(column, NFC))``, the same steps as the Python normaliser, and the drift check
counts identity values not in normal form (kinds and counts, never a value)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest

from governance.config import INCLUDE_DIR
from governance.datamap import load_datamap
from governance.datamap.drift import find_drift
from governance.export.collect import ExportSubject
from governance.identity import SubjectIdentities
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import run_erasure
from tests.integration.test_export_bundle import bundle_keys, gate, read_bundle, write

pytestmark = pytest.mark.integration

# "Zoë Ångström", typed on a keyboard that sends combining marks: o + U+0308, A + U+030A.
TYPED_NFC = "Zoë.Ångström@Exemple.org"
STORED_NFD = unicodedata.normalize("NFD", TYPED_NFC)
USER_ID, TICKET_ID = 1999000100, 1999000101
EVENT_IDS = (1999000102, 1999000103, 1999000104)


def test_planted_address_is_really_stored_decomposed() -> None:
    assert STORED_NFD != TYPED_NFC and unicodedata.normalize("NFC", STORED_NFD) == TYPED_NFC
    assert STORED_NFD.lower() != TYPED_NFC.lower()  # what plain lower(column) compared


def _plant(url: str) -> int:
    """A user whose e-mail is stored NFD, with a ticket and usage events; returns the business."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        business = conn.execute("SELECT min(id) FROM app.businesses").fetchone()[0]
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, created_at) VALUES (%s, %s, %s, %s, %s)",
                     (USER_ID, business, "Zoë Ångström", STORED_NFD, now))  # fmt: skip
        conn.execute("INSERT INTO app.support_tickets (id, user_id, subject, body, status, created_at)"
                     " VALUES (%s, %s, 'Login', 'Cannot log in', 'open', %s)", (TICKET_ID, USER_ID, now))  # fmt: skip
        for event in EVENT_IDS:
            conn.execute("INSERT INTO app.usage_events (id, user_id, occurred_at, ip_address, path)"
                         " VALUES (%s, %s, %s, '203.0.113.9', '/calls')", (event, USER_ID, now))  # fmt: skip
    return int(business)


def test_a_decomposed_address_is_found_exported_and_erased_when_the_request_types_it_composed(
    reference_clone: Deployment, s3: Any, make_bucket: Callable[[str], str]
) -> None:
    url = reference_clone.app_url
    _plant(url)
    datamap = load_datamap()
    subject = ExportSubject(
        request_id="exp-20260601-0000000000nf", identities=SubjectIdentities.parse(email=TYPED_NFC, region="US"),
        received_on=date(2026, 6, 1), business_scope=None,
    )  # fmt: skip
    bucket = make_bucket("nfd-export")
    summary = write(datamap, subject, reference_clone, s3, bucket, "exports/nfd.zip.age")
    archive = read_bundle(s3, bucket, "exports/nfd.zip.age")
    assert bundle_keys(archive, "users") == {USER_ID}
    assert bundle_keys(archive, "support_tickets") == {TICKET_ID}
    assert bundle_keys(archive, "usage_events") == set(EVENT_IDS)
    assert gate(datamap, summary, subject, s3, bucket, "exports/nfd.zip.age").passed

    run = run_erasure({"email": TYPED_NFC}, "nfd")
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM app.users WHERE id = %(u)s),"
            " (SELECT count(*) FROM app.support_tickets WHERE user_id = %(u)s OR id = %(t)s),"
            " (SELECT count(*) FROM app.usage_events WHERE id = ANY(%(e)s))",
            {"u": USER_ID, "t": TICKET_ID, "e": list(EVENT_IDS)},
        ).fetchone()
    assert left == (0, 0, 0)


def test_drift_counts_decomposed_emails_as_found_and_non_e164_phones_as_missed_without_values(
    make_db: Callable[[str], str],
) -> None:
    url = make_db("normalform")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((INCLUDE_DIR / "sql" / "app_schema.sql").read_text())
        conn.execute("INSERT INTO app.businesses (id, name, industry, country, created_at) VALUES (1, 'B', 'x', 'US', now())")
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, phone_e164, created_at) VALUES"
                     " (1, 1, 'Z', %s, '+14155550100', now()), (2, 1, 'P', 'plain@example.org', NULL, now())",
                     (STORED_NFD,))  # fmt: skip
        conn.execute("INSERT INTO app.callers (id, business_id, phone, email, first_seen_at) VALUES"
                     " (1, 1, '(415) 555-0101', %s, now()), (2, 1, '+14155550102', ' pad@example.org', now()),"
                     " (3, 1, '415.555.0103', NULL, now())", (STORED_NFD.upper(),))  # fmt: skip
    report = find_drift(load_datamap(), url)
    found = {(u.table, u.column, u.kind, u.problem, u.rows, u.found) for u in report.unnormalised_identities}
    assert found == {
        ("users", "email", "email", "not in Unicode NFC", 1, True),
        ("callers", "email", "email", "not in Unicode NFC", 1, True),
        ("callers", "email", "email", "with surrounding white space", 1, False),
        ("callers", "phone", "phone", "not in E.164", 2, False),
    }
    assert not report.is_clean
    assert {(u.column, u.problem) for u in report.missed_identities} == {("email", "with surrounding white space"), ("phone", "not in E.164")}
    dumped = json.dumps(report.to_dict(), ensure_ascii=False)
    for value in (STORED_NFD, TYPED_NFC, "example.org", "555"):
        assert value.lower() not in dumped.lower()
    # The DAG's classification: missed values block, found ones warn.
    from governance.workflows.datamap_drift import classify

    blocking, warnings = classify(report.to_dict(), {"missing_buckets": [], "unmapped_prefixes": []})
    assert sum("not in E.164" in f.message for f in blocking) == 1
    assert sum("not in Unicode NFC" in f.message for f in warnings) == 2
