"""``python -m governance export-passphrase`` records the user the operating system authenticated,
not a name anyone can type (``--staff``, ``$USER``): on the passphrase row and in the request's
action log, with the declared name kept beside it."""

from __future__ import annotations

import argparse
import json
import os
import pwd
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.export.passphrase_command import run as export_passphrase
from governance.export.state import ensure_passphrase
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import create_request

pytestmark = pytest.mark.integration


def test_a_reveal_records_the_os_account_and_keeps_the_declared_staff_name_beside_it(
    make_db: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    url = make_db("reveal")
    migrate(url)
    at = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        request_id = create_request(
            conn, kind="export", identities=SubjectIdentities.parse(email="reveal@example.org"),
            hasher=hasher_from_airflow(), cipher=cipher_from_airflow(), received_at=at,
        )  # fmt: skip
        passphrase = ensure_passphrase(conn, request_id, cipher=cipher_from_airflow(), at=at)
    monkeypatch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", url.replace("postgresql://", "postgres://"))
    monkeypatch.setenv("USER", "mallory")  # what getpass.getuser() would have believed
    monkeypatch.setenv("LOGNAME", "mallory")

    assert export_passphrase(argparse.Namespace(request_id=request_id, staff="mallory")) == 0
    assert capfd.readouterr().out.strip().splitlines()[-1] == passphrase

    account = f"os:{pwd.getpwuid(os.geteuid()).pw_name}"
    assert account != "os:mallory"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT reveal_count, last_revealed_by FROM governance.export_passphrases"
                           " WHERE request_id = %s", (request_id,)).fetchone()  # fmt: skip
        actions = conn.execute("SELECT action, actor, actor_role, detail FROM governance.request_actions"
                               " WHERE request_id = %s", (request_id,)).fetchall()  # fmt: skip
    assert row == (1, account)
    assert actions == [("passphrase_revealed", account, "cli", {"via": "cli", "declared_staff": "mallory"})]
    assert passphrase not in json.dumps([list(a) for a in actions])
