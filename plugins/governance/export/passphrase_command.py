"""``python -m governance export-passphrase REQUEST_ID``: the passphrase of a request's bundle.

For privacy staff, to give the person by a different channel than the e-mail carrying the
download link (read it out on a call, or send it by SMS). Every reveal is counted with when and
by whom, and appended to ``governance.request_actions``: the user is the one the operating system
authenticated (``os:<account>``, from the process's user id, not from ``$USER``, which anyone can
set); ``--staff`` only adds a declared name beside it. (The Privacy requests page records the
Airflow user it authenticated.) The passphrase is printed on standard output and nowhere else: it
is never logged.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from datetime import UTC, datetime

from psycopg.types.json import Jsonb

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow
from governance.db import connect, conninfo_for
from governance.export.state import ExportStateError, reveal_passphrase
from governance.privacy_requests import request_id_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", type=request_id_arg, help="the export request (exp-YYYYMMDD-...)")
    parser.add_argument("--staff", default=None,
                        help="who asks, as a declared name recorded beside the operating-system user")  # fmt: skip


def operating_system_user() -> str:
    """``os:<account>`` of the process's effective user id (what the OS authenticated)."""
    try:
        return f"os:{pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:  # a uid without a passwd entry (some containers)
        return f"os:uid-{os.geteuid()}"


def run(args: argparse.Namespace) -> int:
    request_id = args.request_id
    user = operating_system_user()
    declared = (args.staff or "").strip()
    detail = {"via": "cli", **({"declared_staff": declared} if declared and f"os:{declared}" != user else {})}
    at = datetime.now(UTC)
    try:
        with connect(conninfo_for(GOVERNANCE_CONN_ID)) as conn:
            passphrase = reveal_passphrase(conn, request_id, cipher=cipher_from_airflow(), at=at, by=user)
            conn.execute(
                "INSERT INTO governance.request_actions (request_id, action, actor, actor_role, detail, at)"
                " VALUES (%s, 'passphrase_revealed', %s, 'cli', %s, %s)",
                (request_id, user, Jsonb(detail), at),
            )
    except ExportStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(passphrase)
    print(
        "Give this passphrase to the person by phone or SMS, not in the e-mail with the download link.",
        file=sys.stderr,
    )
    return 0
