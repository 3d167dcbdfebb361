"""Privacy requests: recording, reading back and tracking them to their 30-day deadline.

A request holds the subject's identities encrypted (readable by the workflows that serve it) and
keyed-hashed (for look-ups, legal holds and the suppression list), both with their key ids. What
leaves this module toward Airflow (XCom, logs) is the request id, never an identity.

``python -m governance request new --kind export|erasure`` reads the identities from standard
input (JSON ``{"email": ..., "phone": ...}`` or ``email: ...`` / ``phone: ...`` lines), never from
the command line.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from governance.crypto import IdentityCipher, IdentityHasher
from governance.identity import InvalidIdentity, SubjectIdentities

RequestKind = Literal["export", "erasure"]
REQUEST_KINDS: tuple[RequestKind, ...] = ("export", "erasure")
RequestSource = Literal["cli", "trigger_form", "intake", "api"]
# Policy section 11: requests are answered within 30 days (the default of
# include/request_deadlines.yaml, which sets other periods per jurisdiction).
RESPONSE_DEADLINE = timedelta(days=30)
_PREFIX: dict[str, str] = {"export": "exp", "erasure": "era"}
REQUEST_ID_RE = re.compile(r"^[a-z]{3}-[0-9]{8}-[0-9a-f]{12}$")


class UnknownRequest(LookupError):
    pass


class InvalidRequest(ValueError):
    pass


def new_request_id(kind: RequestKind, received_at: datetime) -> str:
    return f"{_PREFIX[kind]}-{received_at:%Y%m%d}-{secrets.token_hex(6)}"


def validate_request_id(request_id: str) -> str:
    """Return ``request_id`` stripped, or raise InvalidRequest when it is not of our form."""
    value = (request_id or "").strip()
    if not REQUEST_ID_RE.match(value):
        raise InvalidRequest("request_id is not of the form xxx-YYYYMMDD-<12 hex> (e.g. exp-20261128-0123456789ab)")
    return value


def request_id_arg(value: str) -> str:
    """argparse ``type=`` for a request id argument: a malformed id is a usage error (exit 2)."""
    import argparse

    try:
        return validate_request_id(value)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _context(request_id: str, kind: str) -> str:
    return f"privacy_requests:{request_id}:{kind}"


@dataclass(frozen=True)
class PrivacyRequest:
    """A request as stored, with its identities decrypted (keep it out of XCom and logs)."""

    request_id: str
    kind: RequestKind
    status: str
    source: str
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    business_id: int | None
    identities: SubjectIdentities
    result_uri: str | None

    def __repr__(self) -> str:
        return f"PrivacyRequest({self.request_id}, {self.kind}, {self.status})"


def create_request(
    conn: psycopg.Connection[Any],
    *,
    kind: RequestKind,
    identities: SubjectIdentities,
    hasher: IdentityHasher,
    cipher: IdentityCipher,
    received_at: datetime,
    business_id: int | None = None,
    source: RequestSource = "cli",
    request_id: str | None = None,
    jurisdiction: str | None = None,
) -> str:
    """Insert a request (status ``received``, due 30 days after ``received_at``, or what its
    ``jurisdiction``'s law gives: ``governance.request_deadlines``); return its id.

    With an explicit ``request_id`` the call is idempotent: a retry that finds the same id
    returns it without a second row.
    """
    if kind not in REQUEST_KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(REQUEST_KINDS)}")
    if business_id is not None and business_id <= 0:
        raise InvalidRequest("business_id must be a positive id")
    if received_at.tzinfo is None:
        raise InvalidRequest("received_at must be timezone-aware")
    from governance.request_deadlines import response_periods, validate_jurisdiction

    try:
        jurisdiction = validate_jurisdiction(jurisdiction)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    request_id = validate_request_id(request_id) if request_id else new_request_id(kind, received_at)
    values: dict[str, Any] = {
        "request_id": request_id, "kind": kind, "source": source, "received_at": received_at,
        "due_at": response_periods().due_at(received_at, jurisdiction), "business_id": business_id,
        "jurisdiction": jurisdiction,
        "email_encrypted": None, "phone_encrypted": None, "email_hash": None, "phone_hash": None,
        "encryption_key_id": cipher.key_id, "hash_key_id": hasher.key_id,
    }  # fmt: skip
    for identity_kind, value in identities.items():
        values[f"{identity_kind}_encrypted"] = cipher.encrypt(value, context=_context(request_id, identity_kind))
        values[f"{identity_kind}_hash"] = hasher.hash(identity_kind, value)
    conn.execute(
        """
        INSERT INTO governance.privacy_requests (
            request_id, kind, source, received_at, due_at, business_id, email_encrypted, phone_encrypted,
            email_hash, phone_hash, encryption_key_id, hash_key_id, jurisdiction)
        VALUES (%(request_id)s, %(kind)s, %(source)s, %(received_at)s, %(due_at)s, %(business_id)s,
            %(email_encrypted)s, %(phone_encrypted)s, %(email_hash)s, %(phone_hash)s,
            %(encryption_key_id)s, %(hash_key_id)s, %(jurisdiction)s)
        ON CONFLICT (request_id) DO NOTHING
        """,
        values,
    )
    return request_id


def load_request(conn: psycopg.Connection[Any], request_id: str, *, cipher: IdentityCipher) -> PrivacyRequest:
    """Read a request and decrypt its identities; UnknownRequest when there is no such id."""
    request_id = validate_request_id(request_id)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM governance.privacy_requests WHERE request_id = %s", (request_id,)).fetchone()
    if row is None:
        raise UnknownRequest(f"no privacy request {request_id}")
    decrypted: dict[str, str | None] = {}
    for kind in ("email", "phone"):
        token = row[f"{kind}_encrypted"]
        decrypted[kind] = cipher.decrypt(token, context=_context(request_id, kind)) if token else None
    return PrivacyRequest(
        request_id=row["request_id"],
        kind=row["kind"],
        status=row["status"],
        source=row["source"],
        received_at=row["received_at"],
        due_at=row["due_at"],
        completed_at=row["completed_at"],
        business_id=row["business_id"],
        # Stored values are already normalised; parse again so the type guarantees it.
        identities=SubjectIdentities.parse(email=decrypted["email"], phone=decrypted["phone"]),
        result_uri=row["result_uri"],
    )


def request_ids_for_subject(
    conn: psycopg.Connection[Any], identities: SubjectIdentities, *, hasher: IdentityHasher
) -> list[str]:
    """Ids of every request recorded for any of the person's identities, under any hash key
    still in the ring (so requests hashed before a key rotation are found)."""
    key_ids: list[str] = []
    kinds: list[str] = []
    hashes: list[str] = []
    for kind, value in identities.items():
        for key_id, digest in hasher.lookup_hashes(kind, value).items():
            key_ids.append(key_id)
            kinds.append(kind)
            hashes.append(digest)
    rows = conn.execute(
        """
        SELECT DISTINCT r.request_id
        FROM governance.privacy_requests r
        JOIN unnest(%s::text[], %s::text[], %s::text[]) AS l(key_id, kind, digest)
          ON r.hash_key_id = l.key_id
         AND ((l.kind = 'email' AND r.email_hash = l.digest) OR (l.kind = 'phone' AND r.phone_hash = l.digest))
        ORDER BY r.request_id
        """,
        (key_ids, kinds, hashes),
    ).fetchall()
    return [str(r[0]) for r in rows]


# How a person's identity was verified: the codes an erasure approval records, and the words an
# export's identity check records for each (``request verify --method CODE`` writes the one that
# fits the request's kind, so the request reads the same whichever way it was verified).
VERIFICATION_METHOD_CODES: dict[str, str] = {
    "account_login": "signed in to their account",
    "phone_callback": "call-back to the number on file",
    "email_link": "reply from the e-mail address on file",
    "id_document": "identity document checked",
    "business_client_attestation": "attested by the requesting business client",
}

FINISHED_STATUSES = ("completed", "rejected", "responded")
MIN_REOPEN_REASON = 10


def finished_request_refusal(request: PrivacyRequest) -> str | None:
    """Why a run may not serve ``request`` again (None when it may): a completed or rejected
    request stands until it is reopened with a reason (``request reopen``)."""
    if request.status not in FINISHED_STATUSES:
        return None
    when = f" on {request.completed_at:%Y-%m-%d}" if request.completed_at else ""
    if request.status == "completed" and request.kind == "erasure":
        kept = f"; its certificate is {request.result_uri}" if request.result_uri else ""
    elif request.status == "completed":
        kept = f"; a new link to its bundle: python -m governance export-link {request.request_id}"
    else:
        kept = ""
    return (
        f"Request id {request.request_id} was {request.status}{when}{kept}. Nothing was read or changed. To serve it "
        f"again, reopen it with a reason: python -m governance request reopen {request.request_id} --reason '...'"
    )


def reopen_request(
    conn: psycopg.Connection[Any], request_id: str, *, reason: str, by: str, at: datetime
) -> str:
    """Reopen a completed or rejected request so a new run may serve it; returns the status it
    goes back to (``verified`` when its identity was verified, else ``received``).

    The reopening (when, who, why, what it was) is recorded in ``governance.request_reopenings``.
    InvalidRequest when the reason is too short or the request is not finished; UnknownRequest
    when there is no such request.
    """
    request_id = validate_request_id(request_id)
    reason, by = (reason or "").strip(), (by or "").strip()
    if len(reason) < MIN_REOPEN_REASON:
        raise InvalidRequest(f"give a reason of at least {MIN_REOPEN_REASON} characters for reopening")
    if not by:
        raise InvalidRequest("say who reopens the request")
    with conn.transaction():
        row = conn.execute(
            "SELECT status, result_uri, verified_at FROM governance.privacy_requests WHERE request_id = %s FOR UPDATE",
            (request_id,),
        ).fetchone()
        if row is None:
            raise UnknownRequest(f"no privacy request {request_id}")
        status, result_uri, verified_at = row
        if status not in FINISHED_STATUSES:
            raise InvalidRequest(f"request {request_id} is {status}, not completed or rejected: nothing to reopen")
        new_status = "verified" if verified_at is not None else "received"
        conn.execute(
            "INSERT INTO governance.request_reopenings"
            " (request_id, reopened_at, reopened_by, reason, previous_status, previous_result)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (request_id, at, by, reason, status, result_uri),
        )
        conn.execute(
            "UPDATE governance.privacy_requests SET status = %s, completed_at = NULL,"
            " outcome_detail = %s, updated_at = %s WHERE request_id = %s",
            (new_status, f"reopened by {by}: {reason}", at, request_id),
        )
    return new_status


def verify_request(conninfo: str, request_id: str, *, method: str, by: str, at: datetime) -> str:
    """Record that ``by`` verified the person's identity by ``method`` (a VERIFICATION_METHOD_CODES
    code), as the Privacy requests page and intake do: the request's verification
    (``request_intake.mark_verified``; the first one recorded stands) and a ``verified`` action.
    Returns the method recorded. For an erasure this is also its approval at intake, so the
    recorder may not do it (four eyes). InvalidRequest / UnknownRequest say what is wrong."""
    from psycopg.types.json import Jsonb

    from governance.db import connect
    from governance.workflows.request_intake import mark_verified

    request_id, by = validate_request_id(request_id), (by or "").strip()
    if method not in VERIFICATION_METHOD_CODES:
        raise InvalidRequest(f"--method must be one of {', '.join(VERIFICATION_METHOD_CODES)}")
    if not by:
        raise InvalidRequest("say who verified the person (--by)")
    with connect(conninfo) as conn:
        row = conn.execute(
            "SELECT kind, status, verification_method FROM governance.privacy_requests WHERE request_id = %s",
            (request_id,),
        ).fetchone()
        recorder = conn.execute(
            "SELECT actor FROM governance.request_actions WHERE request_id = %s AND action = 'recorded' LIMIT 1",
            (request_id,),
        ).fetchone()
    if row is None:
        raise UnknownRequest(f"no privacy request {request_id}")
    kind, status, already = row
    if status in FINISHED_STATUSES:
        raise InvalidRequest(f"request {request_id} is {status}: nothing to verify")
    if already:
        return str(already)
    if kind == "erasure" and recorder is not None and recorder[0] == by:
        raise InvalidRequest(f"{by} recorded this erasure request and may not verify and approve it too (four eyes)")
    recorded = method if kind == "erasure" else VERIFICATION_METHOD_CODES[method]
    mark_verified(request_id, method=recorded, verified_by=by, at=at, conninfo=conninfo)
    with connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO governance.request_actions (request_id, action, actor, detail, at)"
            " VALUES (%s, 'verified', %s, %s, %s)",
            (request_id, by, Jsonb({"method": recorded, "via": "cli"}), at),
        )
    return recorded


def read_identities(stream: Any) -> SubjectIdentities:
    """Parse identities from JSON or ``key: value`` lines on ``stream`` (stdin for the CLI)."""
    text = stream.read()
    fields: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidIdentity(f"standard input is not valid JSON (line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise InvalidIdentity("standard input must be a JSON object with email and/or phone")
        fields = {str(k): str(v) for k, v in data.items() if v is not None}
    else:
        for number, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise InvalidIdentity(f"line {number} of standard input is not 'email: ...' or 'phone: ...'")
            fields[key.strip().lower()] = value.strip()
    unknown = sorted(set(fields) - {"email", "phone"})
    if unknown:
        raise InvalidIdentity(f"unknown identity field(s) {', '.join(unknown)}; expected email and/or phone")
    from governance.datamap import phone_region

    return SubjectIdentities.parse(email=fields.get("email"), phone=fields.get("phone"), region=phone_region())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="record a request; identities from stdin (JSON or 'email: ...' lines)")
    new.add_argument("--kind", choices=REQUEST_KINDS, required=True)
    new.add_argument("--business-id", type=int, default=None, help="only this business client's data")
    new.add_argument("--jurisdiction", default=None,
                     help="ISO 3166 code (GB, US-CA): its law's deadline (include/request_deadlines.yaml), else 30 days")  # fmt: skip
    extend = sub.add_parser("extend", help="extend the request's deadline once, with a reason (the legal extension)")
    extend.add_argument("request_id")
    extend.add_argument("--days", type=int, required=True, help="days added to the deadline (at most 62)")
    extend.add_argument("--reason", required=True, help="why (staff's words, no identities; at least 10 characters)")
    extend.add_argument("--by", default=None, help="who extends (default: the operating-system user)")
    retry = sub.add_parser("retry", help="clear a failed request so the next intake pass dispatches a new run")
    retry.add_argument("request_id")
    retry.add_argument("--reason", required=True, help="why it is tried again (at least 10 characters)")
    retry.add_argument("--by", default=None, help="who clears it (default: the operating-system user)")
    respond = sub.add_parser("respond", help="record that the person was told the outcome (when: now; how: --via)")
    respond.add_argument("request_id")
    respond.add_argument("--via", required=True, choices=["email", "post", "phone", "portal", "in_person"])
    respond.add_argument("--by", default=None, help="who told them (default: the operating-system user)")
    show = sub.add_parser("show", help="print a request's status (never its identities)")
    show.add_argument("request_id")
    reopen = sub.add_parser(
        "reopen", help="let a completed or rejected request be served again (recorded with the reason and user)"
    )
    reopen.add_argument("request_id")
    reopen.add_argument("--reason", required=True, help="why it is served again (staff's words, no identities)")
    reopen.add_argument("--by", default=None, help="who asks (default: the operating-system user running this)")
    verify = sub.add_parser(
        "verify", help="record how the person's identity was verified (as the Privacy requests page does)"
    )
    verify.add_argument("request_id")
    verify.add_argument("--method", required=True, choices=list(VERIFICATION_METHOD_CODES),
                        help="how the identity was verified")  # fmt: skip
    verify.add_argument("--by", required=True, help="who verified them (recorded; for an erasure not its recorder)")


def _lifecycle_command(args: argparse.Namespace, conninfo: str, request_id: str) -> int:
    """``request extend|retry|respond``: one lifecycle step, refused (exit 2) when not allowed."""
    import getpass

    from governance.db import connect
    from governance.migrations import ensure_schema
    from governance.request_lifecycle import (
        InvalidTransition,
        extend_deadline,
        record_response,
        retry_request,
    )

    ensure_schema(conninfo)
    by, now = args.by or getpass.getuser(), datetime.now(UTC)
    try:
        with connect(conninfo) as conn:
            if args.action == "extend":
                due = extend_deadline(conn, request_id, extra=timedelta(days=args.days), reason=args.reason, by=by, at=now)
                message = f"{request_id} extended: now due {due:%Y-%m-%d %H:%M} UTC"
            elif args.action == "retry":
                attempt = retry_request(conn, request_id, reason=args.reason, by=by, at=now)
                message = f"{request_id} cleared for retry: the next intake pass dispatches attempt {attempt}"
            else:
                record_response(conn, request_id, via=args.via, at=now, by=by)
                message = f"{request_id} responded ({args.via})"
    except UnknownRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (InvalidTransition, InvalidRequest) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(message)
    return 0


def run(args: argparse.Namespace) -> int:
    from governance.config import GOVERNANCE_CONN_ID
    from governance.crypto import cipher_from_airflow, hasher_from_airflow
    from governance.db import connect, conninfo_for
    from governance.migrations import ensure_schema

    conninfo = conninfo_for(GOVERNANCE_CONN_ID)
    if args.action == "new":
        if sys.stdin.isatty():
            print("enter identities, then Ctrl-D (e.g. 'email: a@example.com'):", file=sys.stderr)
        try:
            identities = read_identities(sys.stdin)
        except InvalidIdentity as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from governance.request_deadlines import validate_jurisdiction

        try:
            validate_jurisdiction(args.jurisdiction)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ensure_schema(conninfo)
        with connect(conninfo) as conn:
            request_id = create_request(
                conn,
                kind=args.kind,
                identities=identities,
                hasher=hasher_from_airflow(),
                cipher=cipher_from_airflow(),
                received_at=datetime.now(UTC),
                business_id=args.business_id,
                source="cli",
                jurisdiction=args.jurisdiction,
            )
        print(request_id)
        return 0
    try:
        request_id = validate_request_id(args.request_id)
    except InvalidRequest as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "verify":
        ensure_schema(conninfo)
        try:
            method = verify_request(conninfo, request_id, method=args.method, by=args.by, at=datetime.now(UTC))
        except UnknownRequest as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except InvalidRequest as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{request_id} verified ({method}): serve it with `python -m governance serve {request_id}`")
        return 0
    if args.action in ("extend", "retry", "respond"):
        return _lifecycle_command(args, conninfo, request_id)
    if args.action == "reopen":
        import getpass

        ensure_schema(conninfo)
        try:
            with connect(conninfo) as conn:
                status = reopen_request(conn, request_id, reason=args.reason, by=args.by or getpass.getuser(),
                                        at=datetime.now(UTC))  # fmt: skip
        except UnknownRequest as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except InvalidRequest as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{request_id} reopened ({status}): trigger its DAG with this request id to serve it again")
        return 0
    with connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT request_id, kind, status, source, received_at, due_at, completed_at, business_id, jurisdiction,"
            " original_due_at, extended_at, extension_reason, dispatch_run_id, responded_at, responded_via"
            " FROM governance.privacy_requests WHERE request_id = %s",
            (request_id,),
        ).fetchone()
    if row is None:
        print(f"error: no privacy request {request_id}", file=sys.stderr)
        return 1
    print(json.dumps(row, default=str, indent=2))
    return 0
