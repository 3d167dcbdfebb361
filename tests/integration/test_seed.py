"""The seeder against real services: PostgreSQL, an S3 API server and the processor stand-ins.

One small seed per module (``seeded``) serves the read-only checks; tests that seed again use
their own databases from ``make_db``.
"""

from __future__ import annotations

import io
import json
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from governance_dev.seed import (
    CAST,
    TABLE_ORDER,
    SeedRefused,
    SeedReport,
    SeedTargets,
    seed_reference_deployment,
)
from governance_dev.seed.generate import TABLE_COLUMNS, generate_reference_data, write_csv_files
from governance_dev.seed.load import app_schema_sql, load_database, seeded_already
from tests.fixtures.services import PgServer
from tests.fixtures.standins import Standins

pytestmark = pytest.mark.integration

SEED = 20261128


@dataclass(frozen=True)
class Seeded:
    url: str
    bucket: str
    report: SeedReport
    standins: Standins


@pytest.fixture(scope="module")
def seeded(pg_server: PgServer, s3: Any, standins: Standins) -> Iterator[Seeded]:
    """The small seed in a fresh database, into a bucket the seeder creates, and the stand-ins."""
    database = f"gt_seed_{uuid.uuid4().hex[:8]}"
    url = pg_server.create(database)
    bucket = f"gt-seed-{uuid.uuid4().hex[:8]}"
    standins.reset()
    report = seed_reference_deployment(
        SeedTargets(
            app_conninfo=url,
            s3=s3,
            bucket=bucket,
            payments_url=standins.payments.url,
            payments_api_key=standins.payments.api_key,
            crm_url=standins.crm.url,
            crm_api_key=standins.crm.api_key,
        ),
        scale="small",
        seed=SEED,
    )
    try:
        yield Seeded(url, bucket, report, standins)
    finally:
        pg_server.drop(database)


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("app", table))).fetchone()
    assert row is not None
    return int(row[0])


def table_checksums(url: str) -> dict[str, str]:
    """md5 of every app table's rows in key order: equal checksums mean equal content."""
    out: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        for name in TABLE_ORDER:
            key = "id" if "id" in TABLE_COLUMNS[name] else "user_id"
            query = sql.SQL(
                "SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.{key})) FROM {table} AS t"
            ).format(key=sql.Identifier(key), table=sql.Identifier("app", name))
            row = conn.execute(query).fetchone()
            assert row is not None
            out[name] = str(row[0])
    return out


# ------------------------------------------------------------------------------------- database


def test_row_counts_in_the_database_match_the_seed_report(seeded: Seeded) -> None:
    with psycopg.connect(seeded.url) as conn:
        counts = {name: _count(conn, name) for name in TABLE_ORDER}
    assert counts == seeded.report.rows
    assert all(count > 0 for count in counts.values())
    assert seeded.report.total_rows == sum(counts.values())


def test_report_splits_the_timings_by_phase_and_summarises_counts_only(seeded: Seeded) -> None:
    report = seeded.report
    for phase in ("generate_s", "copy_s", "objects_s", "processors_s", "analyze_s"):
        assert getattr(report, phase) > 0, phase
    assert report.total_s >= report.generate_s + report.copy_s + report.objects_s
    assert set(report.copy_table_s) == set(TABLE_ORDER)
    summary = "\n".join(report.summary_lines())
    for subject in CAST.values():
        assert subject.email is None or subject.email.lower() not in summary.lower()
        assert subject.full_name is None or subject.full_name not in summary


def test_no_row_references_a_missing_parent(seeded: Seeded) -> None:
    orphans = {
        ("calls", "caller_id", "callers"),
        ("calls", "handled_by_user_id", "users"),
        ("messages", "caller_id", "callers"),
        ("messages", "user_id", "users"),
        ("appointments", "caller_id", "callers"),
        ("payments", "user_id", "users"),
        ("usage_events", "user_id", "users"),
        ("marketing_preferences", "user_id", "users"),
        ("support_tickets", "user_id", "users"),
    }
    with psycopg.connect(seeded.url) as conn:
        for child, column, parent in orphans:
            query = sql.SQL(
                "SELECT count(*) FROM {child} c WHERE c.{col} IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{col})"
            ).format(
                child=sql.Identifier("app", child),
                col=sql.Identifier(column),
                parent=sql.Identifier("app", parent),
            )
            row = conn.execute(query).fetchone()
            assert row is not None and row[0] == 0, f"{child}.{column}"
        # the schema's own foreign keys are in place (the load did not drop them)
        row = conn.execute(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = 'app' AND c.contype = 'f'"
        ).fetchone()
        assert row is not None and row[0] >= 14


def test_statistics_are_fresh_after_the_seed(seeded: Seeded) -> None:
    with psycopg.connect(seeded.url) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'app' AND last_analyze IS NULL"
        ).fetchall()
    assert rows == []


# ------------------------------------------------------------------------------------- objects


def test_every_recording_key_names_a_valid_wav_and_transcripts_are_json_with_the_callers_phone(
    seeded: Seeded, s3: Any
) -> None:
    with psycopg.connect(seeded.url) as conn:
        calls = conn.execute(
            "SELECT c.id, c.business_id, c.recording_key, c.transcript, k.phone "
            "FROM app.calls c JOIN app.callers k ON k.id = c.caller_id WHERE c.recording_key IS NOT NULL"
        ).fetchall()
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=seeded.bucket):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    assert len(keys) == seeded.report.objects == 2 * len(calls)
    for call_id, business_id, recording_key, transcript, phone in calls:
        assert recording_key == f"recordings/{business_id}/{call_id}.wav"
        body = s3.get_object(Bucket=seeded.bucket, Key=recording_key)["Body"].read()
        with wave.open(io.BytesIO(body)) as wav:
            assert wav.getframerate() == 8_000 and wav.getnframes() > 0
        document = json.loads(
            s3.get_object(Bucket=seeded.bucket, Key=f"transcripts/{business_id}/{call_id}.json")[
                "Body"
            ].read()
        )
        assert document["call_id"] == call_id and document["caller"]["phone"] == phone
        assert all(u["text"] in transcript for u in document["utterances"])


def test_the_seeder_creates_the_bucket_with_versioning_enabled(seeded: Seeded, s3: Any) -> None:
    assert s3.get_bucket_versioning(Bucket=seeded.bucket).get("Status") == "Enabled"


# ------------------------------------------------------------------------------------- the cast


def test_cast_users_are_found_by_lower_email_and_by_phone_e164(seeded: Seeded) -> None:
    with psycopg.connect(seeded.url) as conn:
        for subject in CAST.values():
            if subject.user_id is None:
                continue
            assert subject.email is not None
            by_email = conn.execute(
                "SELECT id FROM app.users WHERE lower(email) = lower(%s)", (subject.email.upper(),)
            ).fetchall()
            by_phone = conn.execute(
                "SELECT id FROM app.users WHERE phone_e164 = %s", (subject.e164,)
            ).fetchall()
            assert by_email == by_phone == [(subject.user_id,)], subject.key


def test_cast_callers_are_found_by_phone_and_by_lower_email(seeded: Seeded) -> None:
    with psycopg.connect(seeded.url) as conn:
        for subject in CAST.values():
            if not subject.caller_ids:
                continue
            rows = conn.execute(
                "SELECT id, business_id FROM app.callers WHERE phone = %s ORDER BY id", (subject.e164,)
            ).fetchall()
            mine = [(i, b) for i, b in rows if i in subject.caller_ids]
            assert mine == list(zip(subject.caller_ids, subject.caller_business_ids, strict=True)), (
                subject.key
            )
            if subject.caller_email:
                found = conn.execute(
                    "SELECT id FROM app.callers WHERE lower(email) = lower(%s)", (subject.caller_email,)
                ).fetchall()
                assert {i for (i,) in found} <= set(subject.caller_ids) and found, subject.key


def test_identities_of_no_data_and_processor_only_are_in_no_app_table(seeded: Seeded) -> None:
    with psycopg.connect(seeded.url) as conn:
        for key in ("no_data", "processor_only_payments"):
            subject = CAST[key]
            row = conn.execute(
                "SELECT (SELECT count(*) FROM app.users WHERE lower(email) = lower(%(e)s) OR phone_e164 = %(p)s)"
                " + (SELECT count(*) FROM app.callers WHERE lower(email) = lower(%(e)s) OR phone = %(p)s)",
                {"e": subject.email, "p": subject.e164},
            ).fetchone()
            assert row is not None and row[0] == 0, key


# ------------------------------------------------------------------------------------- processors


def test_payments_standin_holds_a_customer_per_paying_user_and_every_charge(seeded: Seeded) -> None:
    state = seeded.standins.payments.state()
    customers = {c["id"]: c for c in state["customers"]}
    by_email = {c["email"].lower(): c for c in customers.values()}
    with psycopg.connect(seeded.url) as conn:
        paying = conn.execute(
            "SELECT DISTINCT lower(u.email) FROM app.payments p JOIN app.users u ON u.id = p.user_id"
        ).fetchall()
        charge_ids = conn.execute(
            "SELECT processor_charge_id FROM app.payments WHERE user_id IS NOT NULL"
        ).fetchall()
    assert {e for (e,) in paying} | {CAST["processor_only_payments"].email.lower()} == set(by_email)
    standin_charges = {c["id"]: c for c in state["charges"]}
    assert {c for (c,) in charge_ids} <= set(standin_charges)
    assert all(c["customer"] in customers for c in standin_charges.values())
    assert seeded.report.processor_records["payments_processor.customers"] == len(customers)
    assert seeded.report.processor_records["payments_processor.charges"] == len(standin_charges)
    only = by_email[CAST["processor_only_payments"].email.lower()]
    assert any(c["customer"] == only["id"] for c in standin_charges.values())


def test_crm_standin_holds_every_user_and_callers_with_email_but_not_processor_only(seeded: Seeded) -> None:
    contacts = seeded.standins.crm.state()["contacts"]
    emails = {c["email"].lower() for c in contacts}
    with psycopg.connect(seeded.url) as conn:
        users = {e for (e,) in conn.execute("SELECT lower(email) FROM app.users").fetchall()}
        callers = {e for (e,) in conn.execute("SELECT lower(email) FROM app.callers WHERE email IS NOT NULL")}
    assert emails == users | callers
    assert CAST["processor_only_payments"].email.lower() not in emails
    assert seeded.report.processor_records["crm.contacts"] == len(contacts)
    assert any(c["notes"] for c in contacts) and any(c["activities"] for c in contacts)


# ------------------------------------------------------------------------------------- reseeding


def test_reseeding_without_replace_refuses_and_changes_nothing(seeded: Seeded, s3: Any) -> None:
    before = table_checksums(seeded.url)
    objects_before = s3.list_objects_v2(Bucket=seeded.bucket)["KeyCount"]
    customers_before = len(seeded.standins.payments.state()["customers"])
    with pytest.raises(SeedRefused, match=r"already holds rows.*replace=True"):
        seed_reference_deployment(
            SeedTargets(
                app_conninfo=seeded.url,
                s3=s3,
                bucket=seeded.bucket,
                payments_url=seeded.standins.payments.url,
                crm_url=seeded.standins.crm.url,
            ),
            scale="small",
            seed=SEED + 1,
        )
    assert table_checksums(seeded.url) == before
    assert s3.list_objects_v2(Bucket=seeded.bucket)["KeyCount"] == objects_before
    assert len(seeded.standins.payments.state()["customers"]) == customers_before


def test_a_bucket_holding_recordings_is_refused_without_replace(
    seeded: Seeded, s3: Any, make_db: Callable[[str], str]
) -> None:
    url = make_db("seed_bucket_refused")
    with pytest.raises(SeedRefused, match="already holds recordings"):
        seed_reference_deployment(SeedTargets(app_conninfo=url, s3=s3, bucket=seeded.bucket), scale="small")
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('app.users')").fetchone()
    assert exists is not None and exists[0] is None  # refused before the schema was created


def test_the_same_seed_into_another_database_gives_identical_table_checksums(
    seeded: Seeded, make_db: Callable[[str], str]
) -> None:
    url = make_db("seed_again")
    report = seed_reference_deployment(SeedTargets(app_conninfo=url), scale="small", seed=SEED)
    assert report.rows == seeded.report.rows
    assert report.objects == 0 and report.processor_records == {}
    assert table_checksums(url) == table_checksums(seeded.url)


def test_replace_truncates_and_reseeds_an_occupied_database(
    seeded: Seeded, make_db: Callable[[str], str], s3: Any, make_bucket: Callable[[str], str]
) -> None:
    url, bucket = make_db("seed_replace"), make_bucket("seed-replace")
    seed_reference_deployment(SeedTargets(app_conninfo=url), scale="small", seed=SEED + 7)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO app.businesses VALUES (999999, 'Stray Ltd', 'test', 'US', now())")
    assert table_checksums(url) != table_checksums(seeded.url)
    second = seed_reference_deployment(
        SeedTargets(app_conninfo=url, s3=s3, bucket=bucket), scale="small", seed=SEED, replace=True
    )
    assert second.rows == seeded.report.rows
    assert table_checksums(url) == table_checksums(seeded.url)
    assert s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    # replacing again empties the seeded prefixes first: the object count stays the same
    seed_reference_deployment(
        SeedTargets(app_conninfo=url, s3=s3, bucket=bucket), scale="small", replace=True
    )
    keys = sum(
        page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    )
    assert keys == second.objects


def _catalog(url: str) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'app'"
        ).fetchall()
        constraints = conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'app'::regnamespace"
        ).fetchall()
    return {tuple(map(str, r)) for r in indexes}, {tuple(map(str, r)) for r in constraints}


def test_indexes_and_foreign_keys_rebuilt_after_copy_are_exactly_those_of_the_ddl(
    seeded: Seeded, make_db: Callable[[str], str]
) -> None:
    url = make_db("seed_ddl_only")
    with psycopg.connect(url) as conn:
        conn.execute(app_schema_sql().encode("utf-8"))
    ddl_indexes, ddl_constraints = _catalog(url)
    seeded_indexes, seeded_constraints = _catalog(seeded.url)
    assert seeded_indexes == ddl_indexes and len(ddl_indexes) >= 20
    assert seeded_constraints == ddl_constraints
    assert seeded.report.rebuild_s > 0


def test_a_failed_copy_leaves_the_database_as_it_was(make_db: Callable[[str], str], tmp_path: Path) -> None:
    url = make_db("seed_failed_copy")
    files = write_csv_files(generate_reference_data("small", SEED), tmp_path)
    with files["usage_events"].open("a", encoding="utf-8") as handle:
        handle.write("not-a-number,,,,,,,\n")
    with pytest.raises(psycopg.errors.DataError):
        load_database(url, files, replace=False)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('app.users'), to_regnamespace('app')").fetchone()
    assert row == (None, None)


def test_seeded_already_is_true_only_with_rows_and_objects_so_if_needed_reseeds_after_an_s3_restart(
    seeded: Seeded, s3: Any, make_db: Callable[[str], str]
) -> None:
    assert seeded_already(SeedTargets(app_conninfo=seeded.url, s3=s3, bucket=seeded.bucket))
    # The embedded S3 server lost its objects (a restart): rows without recordings are re-seeded.
    assert not seeded_already(SeedTargets(app_conninfo=seeded.url, s3=s3, bucket=f"gt-gone-{uuid.uuid4().hex[:8]}"))
    empty_bucket = f"gt-empty-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=empty_bucket)
    assert not seeded_already(SeedTargets(app_conninfo=seeded.url, s3=s3, bucket=empty_bucket))
    # An empty database is seeded whatever the bucket holds.
    assert not seeded_already(SeedTargets(app_conninfo=make_db("seed_if_needed"), s3=s3, bucket=seeded.bucket))
