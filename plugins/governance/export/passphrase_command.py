"""``python -m governance export-passphrase REQUEST_ID``: the passphrase of a request's bundle.

For privacy staff, to give the person by a different channel than the e-mail carrying the
download link (read it out on a call, or send it by SMS). Every reveal is counted with when and
by whom (the operating-system user, or ``--staff``). The passphrase is printed on standard output
and nowhere else: it is never logged.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from governance.privacy_requests import request_id_arg

    parser.add_argument("request_id", type=request_id_arg, help="the export request (exp-YYYYMMDD-...)")
    parser.add_argument("--staff", default=None, help="who asks (default: the operating-system user)")


def run(args: argparse.Namespace) -> int:
    from governance.config import GOVERNANCE_CONN_ID
    from governance.crypto import cipher_from_airflow
    from governance.db import connect, conninfo_for
    from governance.export.state import ExportStateError, reveal_passphrase

    request_id = args.request_id
    staff = args.staff or getpass.getuser()
    try:
        with connect(conninfo_for(GOVERNANCE_CONN_ID)) as conn:
            passphrase = reveal_passphrase(conn, request_id, cipher=cipher_from_airflow(), at=datetime.now(UTC), by=staff)
    except ExportStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(passphrase)
    print(
        "Give this passphrase to the person by phone or SMS, not in the e-mail with the download link.",
        file=sys.stderr,
    )
    return 0
