"""``python -m governance reapply-suppressions``: erase again the people on the suppression list
after a database or bucket restore.

Run it after restoring the app database or the object store from a backup (and before the app
takes traffic, ideally). For every erased person it matches keyed hashes of the identity columns
(and of DynamoDB partition keys, one key-only pass over each table for the whole list) against
the list and erases, with the same planner and executor as ``dsr_erasure``, whatever of
them came back: only rows recorded before their erasure, so a person who returned afterwards as a
new customer keeps the new account. Legal holds and legal exceptions apply as in the erasure.
Prints counts only (JSON); ``--dry-run`` shows what would be erased without changing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from governance.config import GOVERNANCE_CONN_ID
from governance.connectors.dynamodb import item_client_for
from governance.crypto import hasher_from_airflow
from governance.datamap import load_datamap
from governance.db import conninfo_for
from governance.erasure.holds import load_active_holds
from governance.erasure.items import reapply_items
from governance.erasure.suppression import reapply_for_person, suppressed_people
from governance.migrations import ensure_schema
from governance.objectstore import s3_client
from governance.privacy_requests import InvalidRequest, validate_request_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="show what would be erased; change nothing")
    parser.add_argument(
        "--as-of", default=None, metavar="ISO8601",
        help="date legal periods are judged at (default: now), e.g. 2026-11-28T00:00:00+00:00",
    )  # fmt: skip
    parser.add_argument("--request-id", default=None, help="only the person erased by this request")


def reapply_suppressions(*, as_of: datetime, dry_run: bool, request_id: str | None = None) -> dict[str, Any]:
    """Re-erase every suppressed person (or one); record the run; return counts."""
    import psycopg


    datamap = load_datamap()
    gov = conninfo_for(GOVERNANCE_CONN_ID)
    ensure_schema(gov)
    hasher = hasher_from_airflow()
    clients: dict[str, Any] = {}

    def object_client(system: str) -> Any:
        if system not in clients:
            spec = datamap.system(system)
            assert spec is not None
            clients[system] = s3_client(spec.connection_id)
        return clients[system]

    run_id = f"reapply-{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    started = datetime.now(UTC)
    results: list[dict[str, Any]] = []
    with psycopg.connect(gov, autocommit=True) as conn:
        people = suppressed_people(conn, request_id)
        for person in people:
            results.append(reapply_for_person(
                datamap, person, app_conninfo=conninfo_for, governance_conn=conn,
                hash_key=hasher.keyring.key(person.hash_key_id), object_client=object_client,
                buckets={s.name: s.bucket.resolve() for s in datamap.object_systems}, as_of=as_of, dry_run=dry_run,
            ))  # fmt: skip
        # DynamoDB: one key-only pass over each table for the whole list (a keyed hash cannot be
        # queried), people under a legal hold left alone.
        def held(person: Any) -> bool:
            hashes = [(k, person.hash_key_id, h) for k, hs in person.hashes.items() for h in hs]
            return bool(load_active_holds(conn, as_of=as_of, subject_hashes=hashes).person)

        items = reapply_items(datamap, people, hash_keys={p.hash_key_id: hasher.keyring.key(p.hash_key_id) for p in people},
                              client_for=item_client_for(datamap), dry_run=dry_run, held=held)  # fmt: skip
        for result in results:
            result["items"] = {i.where: i.deleted if not dry_run else i.found for i in items if i.request_id == result["request_id"]}
        summary = {
            "run_id": run_id,
            "dry_run": dry_run,
            "people": len(people),
            "rows": sum(sum(r["rows"].values()) for r in results),
            "objects": sum(int(r["objects"]) for r in results),
            "items": sum(i.found if dry_run else i.deleted for i in items),
            "skipped": [{"request_id": r["request_id"], "reason": r["skipped"]} for r in results if r["skipped"]],
            "requests": results,
        }
        conn.execute(
            "INSERT INTO governance.suppression_reapplications (run_id, started_at, finished_at, as_of, dry_run, people,"
            " summary) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
            (run_id, started, datetime.now(UTC), as_of, dry_run, len(people), json.dumps(summary, default=str)),
        )
    return summary


def run(args: argparse.Namespace) -> int:
    try:
        as_of = datetime.fromisoformat(args.as_of) if args.as_of else datetime.now(UTC)
    except ValueError:
        print("error: --as-of is not an ISO-8601 date and time", file=sys.stderr)
        return 2
    if as_of.tzinfo is None:
        print("error: --as-of needs a time zone (e.g. +00:00)", file=sys.stderr)
        return 2
    if args.request_id:
        try:
            validate_request_id(args.request_id)
        except InvalidRequest as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    summary = reapply_suppressions(as_of=as_of, dry_run=args.dry_run, request_id=args.request_id)
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary["skipped"] else 0
