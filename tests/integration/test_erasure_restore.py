"""After a backup is restored, ``reapply-suppressions`` erases the erased person again, and only
what was recorded before the erasure: the person's new account made afterwards stays."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    all_versions,
    conf_for,
    recording_keys_of_callers,
    run_erasure,
)

pytestmark = pytest.mark.integration


def _pg_tool(name: str, url: str) -> str:
    """The client tool matching the server's major version (system 15, or the pgserver wheel's)."""
    with psycopg.connect(url) as conn:
        major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
    import pgserver

    candidates = [Path(pgserver.__file__).parent / "pginstall" / "bin" / name, Path(f"/usr/lib/postgresql/{major}/bin/{name}"),
                  Path(shutil.which(name) or "/nonexistent")]  # fmt: skip
    for path in candidates:
        if path.exists():
            version = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False).stdout
            if f" {major}." in version:
                return str(path)
    pytest.fail(f"no {name} for PostgreSQL {major}: install the client tools of the server's major version")


def test_restored_backup_is_erased_again_but_the_new_account_stays(
    reference_clone: Deployment, reference_deployment: Deployment, s3: Any, tmp_path: Path
) -> None:
    from governance.erasure import reapply

    subject = cast_member("caller_only")
    url = reference_clone.app_url
    objects = recording_keys_of_callers(url, subject.caller_ids)
    dump = tmp_path / "app.dump"
    subprocess.run([_pg_tool("pg_dump", url), "-Fc", "-n", "app", "-f", str(dump), url], check=True)

    run = run_erasure(conf_for("caller_only"), "restore")
    assert run.results["close"]["status"] == "completed"

    # The backup comes back: the app schema and the bucket's objects.
    subprocess.run([_pg_tool("pg_restore", url), "--clean", "--if-exists", "-n", "app", "-d", url, str(dump)], check=True)
    for key in objects:
        s3.copy_object(Bucket=reference_clone.bucket, Key=key, CopySource={"Bucket": reference_deployment.bucket, "Key": key})
    # ... and the person comes back afterwards as a new customer: an account, a new caller record and call.
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM app.callers WHERE id = ANY(%s)", (list(subject.caller_ids),)).fetchone()[0] == 1
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, phone_e164, created_at)"
                     " VALUES (1999000010, 3, %s, %s, %s, %s)", (subject.full_name, subject.email, subject.e164, now))
        conn.execute("INSERT INTO app.callers (id, business_id, phone, full_name, email, first_seen_at)"
                     " VALUES (1999000011, 3, %s, %s, %s, %s)", (subject.e164, subject.full_name, subject.email, now))
        conn.execute("INSERT INTO app.calls (id, business_id, caller_id, started_at, duration_s, outcome)"
                     " VALUES (1999000012, 3, 1999000011, %s, 30, 'answered')", (now,))  # fmt: skip

    code = reapply.run(argparse.Namespace(dry_run=False, as_of=None, request_id=None))
    assert code == 0

    with psycopg.connect(url) as conn:
        old = conn.execute(
            "SELECT (SELECT count(*) FROM app.callers WHERE id = ANY(%(c)s)),"
            " (SELECT count(*) FROM app.calls WHERE caller_id = ANY(%(c)s)),"
            " (SELECT count(*) FROM app.messages WHERE caller_id = ANY(%(c)s)),"
            " (SELECT count(*) FROM app.appointments WHERE caller_id = ANY(%(c)s))",
            {"c": list(subject.caller_ids)},
        ).fetchone()
        new = conn.execute(
            "SELECT (SELECT count(*) FROM app.users WHERE id = 1999000010 AND email = %(e)s),"
            " (SELECT count(*) FROM app.callers WHERE id = 1999000011), (SELECT count(*) FROM app.calls WHERE id = 1999000012)",
            {"e": subject.email},
        ).fetchone()
        reapplied = conn.execute("SELECT people, summary FROM governance.suppression_reapplications").fetchone()
    assert old == (0, 0, 0, 0)
    assert new == (1, 1, 1)
    for key in objects:
        assert all_versions(s3, reference_clone.bucket, key) == [], key
    assert reapplied[0] == 1 and subject.email not in str(reapplied[1]) and (subject.e164 or "") not in str(reapplied[1])
