"""The governance schema migrates idempotently and privacy requests keep identities sealed."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from governance.crypto import (
    IdentityCipher,
    IdentityHasher,
    Keyring,
    cipher_from_airflow,
    hasher_from_airflow,
    new_key_b64,
)
from governance.identity import InvalidIdentity, SubjectIdentities
from governance.migrations import MIGRATIONS_DIR, MigrationError, migrate
from governance.privacy_requests import (
    InvalidRequest,
    UnknownRequest,
    create_request,
    load_request,
    read_identities,
)

RECEIVED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def governance_db(make_db: Callable[[str], str]) -> str:
    url = make_db("governance")
    migrate(url)
    return url


def test_migrate_twice_applies_once_and_records_checksums(make_db: Callable[[str], str]) -> None:
    url = make_db("migrate")
    first = migrate(url)
    assert first and first[0] == "0001_core.sql"
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version, name FROM governance.schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'governance'")}  # fmt: skip
    assert rows[0] == (1, "core")
    assert {"privacy_requests", "legal_holds", "schema_migrations"} <= tables


def test_an_edited_applied_migration_is_refused(make_db: Callable[[str], str], tmp_path: Path) -> None:
    url = make_db("edited")
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, copy)
    migrate(url, copy)
    (copy / "0001_core.sql").write_text((copy / "0001_core.sql").read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(url, copy)


def test_request_stores_identities_only_encrypted_and_hashed(governance_db: str) -> None:
    hasher, cipher = hasher_from_airflow(), cipher_from_airflow()
    subject = SubjectIdentities.parse(email="  Alice.Smith@Example.COM ", phone="+1 (555) 010-2000", region="US")
    with psycopg.connect(governance_db) as conn:
        request_id = create_request(conn, kind="export", identities=subject, hasher=hasher, cipher=cipher,
                                    received_at=RECEIVED)  # fmt: skip
        raw = conn.execute("SELECT row_to_json(r)::text FROM governance.privacy_requests r").fetchone()
        stored = load_request(conn, request_id, cipher=cipher)
    assert request_id.startswith("exp-20261102-")
    text = raw[0].lower()
    assert "alice" not in text and "example.com" not in text and "5550102000" not in text
    row = json.loads(raw[0])
    assert row["email_hash"] == hasher.hash("email", "alice.smith@example.com")
    assert row["hash_key_id"] == hasher.key_id and row["encryption_key_id"] == cipher.key_id
    assert stored.identities == SubjectIdentities(email="alice.smith@example.com", phone="+15550102000")
    assert stored.due_at - stored.received_at == timedelta(days=30)
    assert stored.status == "received"


def test_request_with_explicit_id_is_idempotent(governance_db: str) -> None:
    hasher, cipher = hasher_from_airflow(), cipher_from_airflow()
    subject = SubjectIdentities.parse(phone="(555) 010-3000", region="US")
    with psycopg.connect(governance_db) as conn:
        for _ in range(2):
            create_request(conn, kind="erasure", identities=subject, hasher=hasher, cipher=cipher,
                           received_at=RECEIVED, request_id="era-20261102-00000000abcd")  # fmt: skip
        count = conn.execute("SELECT count(*) FROM governance.privacy_requests").fetchone()
    assert count == (1,)


def test_requests_stay_readable_after_both_keys_rotate(governance_db: str) -> None:
    old_hash, old_enc = new_key_b64(), new_key_b64()
    hasher = IdentityHasher(Keyring.from_parts("h1", old_hash))
    cipher = IdentityCipher(Keyring.from_parts("e1", old_enc))
    subject = SubjectIdentities.parse(email="rotate@example.com")
    with psycopg.connect(governance_db) as conn:
        request_id = create_request(conn, kind="export", identities=subject, hasher=hasher, cipher=cipher,
                                    received_at=RECEIVED)  # fmt: skip
        new_hasher = IdentityHasher(Keyring.from_parts("h2", new_key_b64(), {"h1": old_hash}))
        new_cipher = IdentityCipher(Keyring.from_parts("e2", new_key_b64(), {"e1": old_enc}))
        assert load_request(conn, request_id, cipher=new_cipher).identities == subject
        lookups = new_hasher.lookup_hashes("email", "rotate@example.com")
        found = conn.execute(
            "SELECT request_id FROM governance.privacy_requests WHERE (hash_key_id, email_hash) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[]))",
            (list(lookups), list(lookups.values())),
        ).fetchall()
    assert found == [(request_id,)]


def test_unknown_and_malformed_request_ids_are_refused_clearly(governance_db: str) -> None:
    with psycopg.connect(governance_db) as conn:
        with pytest.raises(UnknownRequest, match="no privacy request exp-20261102-000000000000"):
            load_request(conn, "exp-20261102-000000000000", cipher=cipher_from_airflow())
        with pytest.raises(InvalidRequest, match="not of the form"):
            load_request(conn, "'; DROP TABLE x; --", cipher=cipher_from_airflow())


def test_database_refuses_a_request_without_any_identity(governance_db: str) -> None:
    with psycopg.connect(governance_db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO governance.privacy_requests (request_id, kind, received_at, due_at)"
            " VALUES ('exp-20261102-aaaaaaaaaaaa', 'export', now(), now() + interval '30 days')"
        )


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        ('{"email": " Bob@Example.com "}', SubjectIdentities(email="bob@example.com")),
        ("email: Bob@Example.com\nphone: +44 20 7946 0958\n", SubjectIdentities("bob@example.com", "+442079460958")),
    ],
)
def test_identities_are_read_from_stdin_as_json_or_lines(stdin: str, expected: SubjectIdentities) -> None:
    assert read_identities(io.StringIO(stdin)) == expected


@pytest.mark.parametrize("stdin", ["", "{}", '{"name": "Bob"}', "email bob@example.com", '{"email": "%"}', "[1]"])
def test_bad_identity_input_is_refused(stdin: str) -> None:
    with pytest.raises(InvalidIdentity):
        read_identities(io.StringIO(stdin))


def test_request_cli_reads_identities_from_stdin_and_prints_only_the_id(
    governance_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys
    from urllib.parse import urlsplit

    parts = urlsplit(governance_db)
    conn = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username or "postgres",
            "schema": parts.path.lstrip("/")}  # fmt: skip
    env = {**__import__("os").environ, "AIRFLOW_CONN_GOVERNANCE_DB": json.dumps(conn)}
    result = subprocess.run(
        [sys.executable, "-m", "governance", "request", "new", "--kind", "erasure", "--business-id", "7"],
        input="email: Carol@Example.com\n", env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    request_id = result.stdout.strip()
    assert request_id.startswith("era-") and "carol" not in (result.stdout + result.stderr).lower()
    with psycopg.connect(governance_db) as db:
        row = db.execute(
            "SELECT kind, business_id, source, email_hash FROM governance.privacy_requests WHERE request_id = %s",
            (request_id,),
        ).fetchone()
    assert row == ("erasure", 7, "cli", hasher_from_airflow().hash("email", "carol@example.com"))


def test_final_outcomes_keep_a_completed_request_and_a_rejection_says_why(governance_db: str) -> None:
    from governance.workflows.request_intake import (
        close_request,
        mark_approved,
        mark_in_progress,
        reject_request,
    )

    hasher, cipher = hasher_from_airflow(), cipher_from_airflow()
    with psycopg.connect(governance_db) as conn:
        done, refused = (
            create_request(conn, kind=kind, identities=SubjectIdentities.parse(email=f"{kind}@example.com"),
                           hasher=hasher, cipher=cipher, received_at=RECEIVED)  # fmt: skip
            for kind in ("export", "erasure")
        )
    later = RECEIVED + timedelta(days=1)
    mark_approved(done, approved_by=" officer ", at=later, conninfo=governance_db)
    mark_approved(done, approved_by="someone else", at=later + timedelta(hours=1), conninfo=governance_db)
    mark_in_progress(done, dag_run_id="run-1", at=later, conninfo=governance_db)  # the lifecycle: claimed, then closed
    close_request(done, succeeded=True, at=later, result_uri="s3://bucket/cert.json", conninfo=governance_db)
    assert reject_request(done, at=later, detail="too late", conninfo=governance_db) == "rejected"
    close_request(done, succeeded=False, at=later, detail="a late failure", conninfo=governance_db)
    reject_request(refused, at=later, detail="identities fit 2 people in app.callers (business 4)", conninfo=governance_db)
    with pytest.raises(ValueError, match="say why"):
        reject_request(refused, at=later, detail=" ", conninfo=governance_db)
    with psycopg.connect(governance_db) as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT request_id, status, result_uri, outcome_detail, approved_by, approved_at FROM governance.privacy_requests"
            )
        )
    assert rows[done] == ("completed", "s3://bucket/cert.json", None, "officer", later)
    assert rows[refused][:3] == ("rejected", None, "identities fit 2 people in app.callers (business 4)")


def test_two_databases_migrated_at_once_both_succeed_when_they_race_to_create_a_role(
    make_db: Callable[[str], str], tmp_path: Path
) -> None:
    import threading
    import uuid

    role = f"gt_race_{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "migrations"
    directory.mkdir()
    # Both check, both wait, both create: the second CREATE ROLE hits pg_authid's unique index.
    (directory / "0001_role.sql").write_text(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"PERFORM pg_sleep(0.5); CREATE ROLE {role} NOLOGIN; END IF; END $$;\n"
    )
    urls = [make_db("race_a"), make_db("race_b")]
    errors: list[BaseException] = []

    def run(url: str) -> None:
        try:
            migrate(url, directory)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(url,)) for url in urls]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        for url in urls:
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM governance.schema_migrations").fetchone() == (1,)
    finally:
        with psycopg.connect(urls[0], autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_only_a_finished_request_can_be_reopened_and_only_with_a_reason(governance_db: str) -> None:
    from governance.privacy_requests import reopen_request
    from governance.workflows.request_intake import close_request, mark_in_progress

    subject = SubjectIdentities.parse(email="reopen@example.com")
    with psycopg.connect(governance_db) as conn:
        request_id = create_request(conn, kind="erasure", identities=subject, hasher=hasher_from_airflow(),
                                    cipher=cipher_from_airflow(), received_at=RECEIVED)  # fmt: skip
        with pytest.raises(InvalidRequest, match="is received, not completed or rejected"):
            reopen_request(conn, request_id, reason="a reason long enough", by="dpo", at=RECEIVED)
        with pytest.raises(UnknownRequest):
            reopen_request(conn, "era-20261102-000000000000", reason="a reason long enough", by="dpo", at=RECEIVED)
    mark_in_progress(request_id, dag_run_id="run-1", at=RECEIVED, conninfo=governance_db)
    close_request(request_id, succeeded=True, at=RECEIVED, result_uri="s3://b/cert.json", detail="erased",
                  conninfo=governance_db)  # fmt: skip
    with psycopg.connect(governance_db) as conn:
        for reason, by in (("short", "dpo"), ("a reason long enough", " ")):
            with pytest.raises(InvalidRequest):
                reopen_request(conn, request_id, reason=reason, by=by, at=RECEIVED)
        assert reopen_request(conn, request_id, reason="a reason long enough", by="dpo", at=RECEIVED) == "received"
        rows = conn.execute("SELECT status, completed_at FROM governance.privacy_requests WHERE request_id = %s",
                            (request_id,)).fetchall()  # fmt: skip
        reopenings = conn.execute("SELECT count(*) FROM governance.request_reopenings").fetchone()
    assert rows == [("received", None)] and reopenings == (1,)
