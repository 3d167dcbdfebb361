"""Business offboarding: the erasure of everything one business client's account holds about its
callers and users when it leaves (privacy policy 6: data kept only as long as needed).

The same machinery as a person's erasure, with a business id as the root instead of identities:
:func:`governance.datamap.plans.build_business_resolution_plan` says where the business's people
are (every ``users`` and ``callers`` row of the business, what they own, what mentions them);
:func:`compute_business_work` resolves it in one snapshot, looks each person up at the processors,
applies legal holds and the legal exceptions, and runs the safety guard, producing the same
:class:`~governance.erasure.planner.ErasureWork` the executor, verification and certificate use.

The people's identities are read from the rows inside the task that needs them. While an
offboarding is being carried out they are kept encrypted in ``governance.offboarding_people``
(verification must still ask the processors after the rows are gone) and deleted when the request
closes completed. Nothing here puts an identity in a return value meant for XCom or in a log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from governance.connectors.dynamodb import item_client_for, item_table_size
from governance.crypto import IdentityCipher, IdentityHasher
from governance.datamap import graph
from governance.datamap.model import DataMap, TableRef
from governance.datamap.plans import SCOPE_IDS, build_business_resolution_plan, build_erasure_plan
from governance.erasure.guard import evaluate_guard, guard_limits, needed_sizes, table_size_at_least
from governance.erasure.holds import load_active_holds, subject_hashes
from governance.erasure.items import plan_items
from governance.erasure.planner import ErasureWork, build_work
from governance.erasure.resolve import MatchByBusiness, SubjectResolution, resolve_subject
from governance.identity import InvalidIdentity, SubjectIdentities
from governance.resolution import plan_systems, system_snapshots

log = logging.getLogger(__name__)

OFFBOARDING = "offboarding"
# How the business's departure was confirmed (recorded on the request and in the certificate).
BUSINESS_METHODS = {
    "contract_terminated": "The contract ended; the termination is on file",
    "written_instruction": "The business client asked in writing for its account's data to be erased",
}
POLICY = "aircalls.ai privacy policy, 6 Data retention (a business client left: its account's data is no longer needed)"
MAX_REASON_LENGTH = 500
# High bits name the purpose, so these locks never collide with a person's erasure locks.
_PURPOSE = 0x45_42  # "EB"


class InvalidOffboarding(ValueError):
    """The offboarding form cannot be served; nothing was read or changed."""


def parse_offboarding_form(conf: Mapping[str, Any]) -> tuple[int, str | None]:
    """``(business_id, reason)`` from the form, or InvalidOffboarding naming the field."""
    raw = conf.get("business_id")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InvalidOffboarding("Business client id is empty: give the id of the business client that leaves")
    try:
        business_id = int(raw)
    except (TypeError, ValueError):
        raise InvalidOffboarding("Business client id must be a whole number") from None
    if business_id <= 0 or str(raw).strip() not in (str(business_id), f"{business_id}.0"):
        raise InvalidOffboarding("Business client id must be a positive whole number")
    reason = conf.get("reason")
    reason = str(reason).strip() if reason is not None and str(reason).strip() else None
    if reason is not None and len(reason) > MAX_REASON_LENGTH:
        raise InvalidOffboarding(f"Reason is longer than {MAX_REASON_LENGTH} characters")
    return business_id, reason


def offboarding_request_id(run_id: str, received_at: datetime) -> str:
    """Deterministic id for a request created by a run (a retried task finds the same one)."""
    return f"off-{received_at:%Y%m%d}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def business_exists(datamap: DataMap, business_id: int, *, system_conninfo: Callable[[str], str]) -> bool:
    """Whether the table the map's scope references point at (``businesses``) has this id."""
    plan = build_business_resolution_plan(datamap)
    root = next((s.table for s in plan.steps if not s.owned_via), None)
    if root is None:
        return False
    table = datamap.table(root)
    target = next((r for r in table.references if r.field == table.scope_column), None)
    if target is None:
        return False
    ref = TableRef(target.to.system or root.system, target.to.table)
    system = datamap.postgres_system(ref.system)
    key = target.to.field or datamap.table(ref).primary_key
    query = sql.SQL("SELECT 1 FROM {}.{} WHERE {} = %s").format(
        sql.Identifier(system.db_schema), sql.Identifier(ref.table), sql.Identifier(key)
    )
    with psycopg.connect(system_conninfo(system.connection_id), application_name="governance-offboarding-open") as conn:
        return conn.execute(query, (business_id,)).fetchone() is not None


def open_offboarding(
    conn: psycopg.Connection[Any], *, business_id: int, reason: str | None, run_id: str, received_at: datetime
) -> tuple[str, str]:
    """The business's open offboarding request (a re-run continues it), or a new one recorded for
    this run: ``(request_id, status)``."""
    row = conn.execute(
        "SELECT request_id, status FROM governance.privacy_requests WHERE kind = %s AND business_id = %s"
        " AND status NOT IN ('completed', 'rejected') ORDER BY received_at DESC LIMIT 1",
        (OFFBOARDING, business_id),
    ).fetchone()
    if row is not None:
        if reason is not None:
            conn.execute("UPDATE governance.privacy_requests SET reason = %s WHERE request_id = %s", (reason, row[0]))
        return str(row[0]), str(row[1])
    request_id = offboarding_request_id(run_id, received_at)
    conn.execute(
        """
        INSERT INTO governance.privacy_requests (request_id, kind, source, received_at, due_at, business_id, reason)
        VALUES (%s, %s, 'trigger_form', %s, %s + interval '30 days', %s, %s)
        ON CONFLICT (request_id) DO NOTHING
        """,
        (request_id, OFFBOARDING, received_at, received_at, business_id, reason),
    )
    status = conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s", (request_id,)).fetchone()
    return request_id, str(status[0]) if status else "received"


@contextmanager
def business_lock(conninfo: str, business_id: int, *, timeout_s: float = 900) -> Iterator[None]:
    """Offboardings of one business run one at a time (a session advisory lock on its id)."""
    key = (_PURPOSE << 48) | business_id
    conn = psycopg.connect(conninfo, autocommit=True, application_name="governance-offboarding-lock")
    try:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout_s * 1000)}ms")))
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        finally:
            conn.close()


def people_of(datamap: DataMap, resolution: SubjectResolution, *, region: str | None) -> list[SubjectIdentities]:
    """Each distinct person of the business's rows, by the identities their row holds (normalised
    as the app's look-ups are); a value that does not normalise is left out, counted in the log."""
    people: dict[tuple[str | None, str | None], SubjectIdentities] = {}
    unreadable = 0
    plan = resolution.plan
    columns = graph.subject_reach(datamap, tuple(datamap.identity_kinds)).identity_columns
    for step in plan.steps:
        fields = [(c.kind, c.field) for c in columns if c.table == step.table]
        if not fields:
            continue
        for row in resolution.tables[step.table].rows.values():
            values: dict[str, str | None] = {"email": None, "phone": None}
            for kind, field in fields:
                raw = row.get(field)
                if raw is None or not str(raw).strip() or kind not in values:
                    continue
                try:
                    values[kind] = SubjectIdentities.parse(**{kind: str(raw)}, region=region).items()[0][1]
                except InvalidIdentity:
                    unreadable += 1
            if values["email"] or values["phone"]:
                person = SubjectIdentities.parse(email=values["email"], phone=values["phone"])
                people.setdefault((values["email"], values["phone"]), person)
    if unreadable:
        log.info("%d identity value(s) of the business's rows do not normalise; not looked up at processors", unreadable)
    return [people[k] for k in sorted(people, key=lambda k: (k[0] or "", k[1] or ""))]


def lookup_records(
    people: Sequence[SubjectIdentities], plan_processors: Sequence[Any], processor_client: Callable[[str], Any]
) -> dict[str, list[str]]:
    """Record ids each processor holds for any of the people (deduplicated, sorted)."""
    records: dict[str, list[str]] = {}
    for step in plan_processors:
        client = processor_client(step.processor)
        found: set[str] = set()
        try:
            for person in people:
                if any(kind in step.identity_kinds for kind, _ in person.items()):
                    found.update(r.record_id for r in client.lookup(person))
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
        records[step.processor] = sorted(found)
    return records


def compute_business_work(
    datamap: DataMap,
    *,
    business_id: int,
    request_id: str,
    plan_id: str,
    as_of: datetime,
    override: bool,
    governance_conninfo: str,
    system_conninfo: Callable[[str], str],
    processor_client: Callable[[str], Any],
    hasher: IdentityHasher,
    item_client: Callable[[str], Any] | None = None,
) -> tuple[ErasureWork, list[SubjectIdentities]]:
    """Resolve the business's people in one snapshot, look them up at the processors, apply legal
    holds (the business's, its tables', and any of its people's) and the legal exceptions, run the
    guard: the :class:`ErasureWork` and the people (for the processors' erasure and verification)."""
    plan = build_business_resolution_plan(datamap)
    erasure_plan = build_erasure_plan(datamap, plan)
    share, min_rows = guard_limits()
    with system_snapshots(datamap, plan_systems(plan), system_conninfo, application_name="governance-offboarding-plan") as dbs:
        resolution = resolve_subject(dbs, datamap, plan, MatchByBusiness(), as_of=as_of, scope_ids=[business_id])
        people = people_of(datamap, resolution, region=datamap.settings.default_phone_region)
        hashes = [h for person in people for h in subject_hashes(hasher, person.items())]
        with psycopg.connect(governance_conninfo) as gov:
            holds = load_active_holds(gov, as_of=as_of, subject_hashes=hashes)
        records = lookup_records(people, plan.processors, processor_client)
        work = build_work(
            datamap, erasure_plan, resolution, holds, plan_id=plan_id, request_id=request_id, as_of=as_of,
            business_id=business_id, buckets={s.name: s.bucket.resolve() for s in datamap.object_systems},
            request_folders={}, processor_records=records,
        )  # fmt: skip
        # The business's DynamoDB items, by each table's business index (never a Scan).
        plan_items(datamap, work, None, held_businesses=sorted(holds.businesses),
                   client_for=item_client or item_client_for(datamap))  # fmt: skip
        sizes = {}
        item_tables = {i.where: i.table_name for i in work.items}
        for table, needed in needed_sizes(work, share).items():
            sys_name, _, name = table.partition(".")
            if table in item_tables:  # a DynamoDB table: its reported item count
                sizes[table] = item_table_size((item_client or item_client_for(datamap))(sys_name), item_tables[table])
                continue
            sizes[table] = table_size_at_least(dbs[sys_name], datamap, TableRef(sys_name, name), needed)
        for conn in dbs.values():
            conn.rollback()
    work.guard = evaluate_guard(work, sizes, max_table_share=share, min_rows=min_rows, override=override)
    return work, people


def _context(request_id: str, person: int, kind: str) -> str:
    return f"offboarding:{request_id}:{person}:{kind}"


def store_people(
    conn: psycopg.Connection[Any], request_id: str, people: Sequence[SubjectIdentities], *, cipher: IdentityCipher
) -> None:
    """Keep the people's identities, encrypted, while the offboarding is carried out (replaces
    what an earlier plan of the request stored)."""
    conn.execute("DELETE FROM governance.offboarding_people WHERE request_id = %s", (request_id,))
    for number, person in enumerate(people):
        values = dict(person.items())
        encrypted = {
            kind: cipher.encrypt(value, context=_context(request_id, number, kind)) for kind, value in values.items()
        }
        conn.execute(
            "INSERT INTO governance.offboarding_people (request_id, person, email_encrypted, phone_encrypted,"
            " encryption_key_id) VALUES (%s, %s, %s, %s, %s)",
            (request_id, number, encrypted.get("email"), encrypted.get("phone"), cipher.key_id),
        )


def load_people(conn: psycopg.Connection[Any], request_id: str, *, cipher: IdentityCipher) -> list[SubjectIdentities]:
    """The people stored for the request, decrypted (inside the task that needs them)."""
    rows = conn.execute(
        "SELECT person, email_encrypted, phone_encrypted FROM governance.offboarding_people WHERE request_id = %s"
        " ORDER BY person",
        (request_id,),
    ).fetchall()
    people = []
    for number, email, phone in rows:
        people.append(
            SubjectIdentities.parse(
                email=cipher.decrypt(email, context=_context(request_id, number, "email")) if email else None,
                phone=cipher.decrypt(phone, context=_context(request_id, number, "phone")) if phone else None,
            )
        )
    return people


def forget_people(conn: psycopg.Connection[Any], request_id: str) -> int:
    """Delete the stored identities once the offboarding is complete; returns how many."""
    return conn.execute("DELETE FROM governance.offboarding_people WHERE request_id = %s", (request_id,)).rowcount


__all__ = [
    "BUSINESS_METHODS",
    "OFFBOARDING",
    "POLICY",
    "SCOPE_IDS",
    "InvalidOffboarding",
    "MatchByBusiness",
    "business_exists",
    "business_lock",
    "compute_business_work",
    "forget_people",
    "load_people",
    "lookup_records",
    "open_offboarding",
    "parse_offboarding_form",
    "people_of",
    "store_people",
]
