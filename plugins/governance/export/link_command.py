"""``python -m governance export-link REQUEST_ID [--days N]``: a new download link for a bundle.

A bundle's link is a presigned URL valid 7 days at most (the S3 signature limit), while the bundle
itself is kept 30 days (retention rule ``export_bundles_30_days``). When the person did not
download in time, privacy staff issue a new link for the same bundle instead of a new request:
this command checks the request is a completed export whose published bundle is still there,
signs a new link and writes it to ``governance.privacy_requests.result_uri`` (and the bundle
record's expiry), exactly where the workflow puts it. The link is never printed or logged: send it
from ``result_uri`` as before. Once the bundle has been swept, a new request is needed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.objects import head
from governance.datamap import load_datamap
from governance.db import connect, conninfo_for
from governance.export.storage import bundle_locations, presigned_download_link
from governance.objectstore import s3_client
from governance.privacy_requests import request_id_arg
from governance.workflows.dsr_export import MAX_LINK_VALID_DAYS


class LinkRefused(RuntimeError):
    """No new link can be issued; the message says why (no personal data)."""


@dataclass(frozen=True)
class IssuedLink:
    request_id: str
    expires_at: datetime


def refresh_link(conn: psycopg.Connection[Any], s3: Any, locations: Any, *, request_id: str, days: int, at: datetime) -> IssuedLink:
    """Sign a new link for ``request_id``'s published bundle and store it as the request's result."""

    if not 1 <= days <= MAX_LINK_VALID_DAYS:
        raise LinkRefused(f"--days must be between 1 and {MAX_LINK_VALID_DAYS} (the S3 signature limit)")
    row = conn.execute(
        "SELECT kind, status FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
    ).fetchone()
    if row is None:
        raise LinkRefused(f"no privacy request {request_id}: check the id")
    kind, status = row
    if kind != "export":
        raise LinkRefused(f"{request_id} is an {kind} request: only export bundles have download links")
    if status != "completed":
        raise LinkRefused(f"{request_id} is {status}, not completed: there is no published bundle to link to")
    if not head(s3, locations.bucket, locations.published_key):
        raise LinkRefused(
            f"the bundle of {request_id} is no longer in the object store (bundles are kept 30 days): "
            "record a new export request"
        )
    link = presigned_download_link(s3, locations, days=days)
    expires = at + timedelta(days=days)
    with conn.transaction():
        conn.execute(
            "UPDATE governance.privacy_requests SET result_uri = %s, outcome_detail = %s, updated_at = %s"
            " WHERE request_id = %s AND status = 'completed'",
            (link, f"bundle published; new link issued, valid {days} day(s)", at, request_id),
        )
        conn.execute(
            """
            UPDATE governance.export_bundles SET link_expires_at = %s, updated_at = %s
             WHERE request_id = %s AND status = 'published'
               AND published_at = (SELECT max(published_at) FROM governance.export_bundles
                                    WHERE request_id = %s AND status = 'published')
            """,
            (expires, at, request_id, request_id),
        )
    return IssuedLink(request_id, expires)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", type=request_id_arg, help="the completed export request (exp-YYYYMMDD-...)")
    parser.add_argument("--days", type=int, default=7, help="how long the new link is valid (1-7 days, default 7)")


def run(args: argparse.Namespace) -> int:
    request_id = args.request_id
    locations = bundle_locations(load_datamap(), request_id)
    try:
        with connect(conninfo_for(GOVERNANCE_CONN_ID)) as conn:
            issued = refresh_link(
                conn, s3_client(locations.connection_id), locations, request_id=request_id, days=args.days,
                at=datetime.now(UTC),
            )  # fmt: skip
    except LinkRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{issued.request_id}: new download link written to the request's result_uri, "
        f"valid until {issued.expires_at:%Y-%m-%d %H:%M} UTC"
    )
    return 0
