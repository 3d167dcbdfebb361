"""Opening and closing privacy requests from DAG runs (shared by dsr_export and dsr_erasure).

``open_request`` is the first task of every request DAG: it validates the run configuration
(before anything else is read), and either loads the request named by ``request_id`` or records
one for identities typed into the trigger form, so a manual trigger is tracked like any other
request. The id of a form-created request derives from the DAG run id, so a retried or cleared
task finds the same request instead of creating a second one.

What goes to XCom is :class:`RequestHandle` as a dict: the request id, kind, business scope,
which identity kinds are present and whether the request is verified: never an identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from governance.config import GOVERNANCE_CONN_ID
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import phone_region
from governance.db import connect, conninfo_for
from governance.deadlines import Deadlines
from governance.identity import InvalidIdentity, SubjectIdentities
from governance.migrations import ensure_schema
from governance.privacy_requests import (
    InvalidRequest,
    RequestKind,
    UnknownRequest,
    create_request,
    finished_request_refusal,
    load_request,
    validate_request_id,
)

FINAL_STATUSES = ("completed", "failed", "rejected")


class InvalidRunConfiguration(ValueError):
    """The trigger form or run configuration cannot be served; nothing was read or changed."""


@dataclass(frozen=True)
class RequestHandle:
    """What tasks pass to each other about a request (safe for XCom and logs)."""

    request_id: str
    kind: str
    business_id: int | None
    identity_kinds: tuple[str, ...]
    verified: bool
    source: str
    status: str

    def to_xcom(self) -> dict[str, Any]:
        data = asdict(self)
        data["identity_kinds"] = list(self.identity_kinds)
        return data

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> RequestHandle:
        return cls(**{**data, "identity_kinds": tuple(data["identity_kinds"])})


# The trigger form's titles (governance.dag_params), so a refusal names the field the person sees.
FIELD_TITLES = {"request_id": "Request id", "email": "E-mail address", "phone": "Phone number",
                "business_id": "Business client id"}  # fmt: skip


def identity_refusal(exc: Exception) -> str:
    """``InvalidIdentity``'s reason in the form's words: "email is empty" reads "E-mail address is
    empty". The reasons never quote the value typed."""
    text = str(exc)
    field, _, rest = text.partition(" ")
    if text.startswith("give at least one identity"):
        return "fill in at least one of E-mail address, Phone number or Request id"
    return f"{FIELD_TITLES[field]} {rest}" if field in FIELD_TITLES and rest else text


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def form_request_id(kind: RequestKind, run_id: str, received_at: datetime) -> str:
    """Deterministic id for a request created from a run's form (retries find the same one)."""
    prefix = {"export": "exp", "erasure": "era"}[kind]
    return f"{prefix}-{received_at:%Y%m%d}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"


def parse_business_id(value: Any) -> int | None:
    if _blank(value):
        return None
    try:
        business_id = int(value)
    except (TypeError, ValueError):
        raise InvalidRunConfiguration("Business client id must be a whole number") from None
    if business_id <= 0:
        raise InvalidRunConfiguration("Business client id must be a positive number")
    return business_id


def open_request(
    conf: Mapping[str, Any], *, kind: RequestKind, run_id: str, received_at: datetime, conninfo: str | None = None,
    dag_id: str | None = None,
) -> RequestHandle:
    """Validate ``conf`` and return the request it names or the one recorded for its identities.

    The run is recorded among the request's runs (``governance.request_runs``, with ``dag_id``,
    by default ``dsr_<kind>``), so a later run that takes the request over can say it superseded it.

    Raises InvalidRunConfiguration (bad or missing identities, wildcards, a malformed or unknown
    request id, a request of another kind, a business scope that contradicts the request's)
    before any governed system is touched.
    """

    business_id = parse_business_id(conf.get("business_id"))
    conninfo = conninfo or conninfo_for(GOVERNANCE_CONN_ID)
    cipher = cipher_from_airflow()
    if not _blank(conf.get("request_id")):
        try:
            request_id = validate_request_id(str(conf["request_id"]))
        except InvalidRequest:
            raise InvalidRunConfiguration(
                "Request id is not a request id: they look like era-20261128-0123456789ab (three letters, the date, "
                "twelve characters 0-9 and a-f)"
            ) from None
        if not _blank(conf.get("email")) or not _blank(conf.get("phone")):
            raise InvalidRunConfiguration(
                "give either a Request id or the person's E-mail address / Phone number, not both: a recorded "
                "request already holds its identities"
            )
        ensure_schema(conninfo)
        with connect(conninfo) as conn:
            try:
                request = load_request(conn, request_id, cipher=cipher)
            except UnknownRequest:
                raise InvalidRunConfiguration(f"Request id {request_id} names no privacy request: check the id") from None
        if request.kind != kind:
            raise InvalidRunConfiguration(
                f"Request id {request_id} is an {request.kind} request, not an {kind} request: trigger dsr_{request.kind}"
            )
        if business_id is not None and request.business_id not in (None, business_id):
            raise InvalidRunConfiguration(
                f"Business client id differs from the business request {request_id} was recorded for: leave it empty"
            )
        refusal = finished_request_refusal(request)
        if refusal:
            raise InvalidRunConfiguration(refusal)
        with connect(conninfo) as conn:
            record_run(conn, request_id, dag_run_id=run_id, dag_id=dag_id or f"dsr_{kind}", at=received_at)
        verified = _is_verified(conninfo, request_id)
        return RequestHandle(
            request_id=request.request_id,
            kind=request.kind,
            business_id=request.business_id if request.business_id is not None else business_id,
            identity_kinds=tuple(k for k, _ in request.identities.items()),
            verified=verified,
            source=request.source,
            status=request.status,
        )

    try:
        identities = SubjectIdentities.parse(email=conf.get("email"), phone=conf.get("phone"), region=phone_region())
    except InvalidIdentity as exc:
        raise InvalidRunConfiguration(identity_refusal(exc)) from None
    request_id = form_request_id(kind, run_id, received_at)
    ensure_schema(conninfo)
    with connect(conninfo) as conn:
        create_request(
            conn,
            kind=kind,
            identities=identities,
            hasher=hasher_from_airflow(),
            cipher=cipher,
            received_at=received_at,
            business_id=business_id,
            source="trigger_form",
            request_id=request_id,
        )
        record_run(conn, request_id, dag_run_id=run_id, dag_id=dag_id or f"dsr_{kind}", at=received_at)
        status_row = conn.execute(
            "SELECT status FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
    return RequestHandle(
        request_id=request_id,
        kind=kind,
        business_id=business_id,
        identity_kinds=tuple(k for k, _ in identities.items()),
        verified=_is_verified(conninfo, request_id),
        source="trigger_form",
        status=str(status_row[0]) if status_row else "received",
    )


def _is_verified(conninfo: str, request_id: str) -> bool:
    with connect(conninfo) as conn:
        row = conn.execute(
            "SELECT verified_at IS NOT NULL FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
        ).fetchone()
    return bool(row and row[0])


def load_identities(request_id: str, *, conninfo: str | None = None) -> SubjectIdentities:
    """Decrypt a request's identities inside a task (never return them to XCom)."""

    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn:
        return load_request(conn, request_id, cipher=cipher_from_airflow()).identities


def mark_verified(request_id: str, *, method: str, verified_by: str, at: datetime, conninfo: str | None = None) -> None:
    """Record how and by whom the person's identity was verified (idempotent: first record wins)."""

    if _blank(method):
        raise InvalidRunConfiguration("say how the identity was verified")
    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn:
        conn.execute(
            """
            UPDATE governance.privacy_requests
               SET verified_at = COALESCE(verified_at, %s),
                   verification_method = COALESCE(verification_method, %s),
                   approved_by = COALESCE(approved_by, %s),
                   status = CASE WHEN effective_status IN ('received', 'awaiting_verification') THEN 'verified'
                                 ELSE status END,
                   updated_at = %s
             WHERE request_id = %s
            """,
            (at, method.strip(), verified_by, at, request_id),
        )


def mark_approved(request_id: str, *, approved_by: str, at: datetime, conninfo: str | None = None) -> None:
    """Record that privacy staff approved the request (idempotent: the first approval is kept)."""

    if _blank(approved_by):
        raise InvalidRunConfiguration("an approval must name who approved")
    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn:
        conn.execute(
            """
            UPDATE governance.privacy_requests
               SET approved_at = COALESCE(approved_at, %s),
                   approved_by = COALESCE(approved_by, %s),
                   updated_at = %s
             WHERE request_id = %s
            """,
            (at, approved_by.strip(), at, request_id),
        )


def mark_in_progress(request_id: str, *, dag_run_id: str, at: datetime, conninfo: str | None = None) -> None:
    """Claim the request for ``dag_run_id``: the newest run to start working on a request holds it
    (an export: the newest bundle wins; see :func:`claim_request` for a claim that waits for a
    live holder).

    A run still ``in_progress`` for the request (a killed run, or one running concurrently) loses
    the claim: ``holds_claim`` then tells it to stop before it publishes or writes an outcome, so
    two runs of one request never overwrite each other's result. The earlier runs of the request
    are recorded as superseded by this one (``governance.request_runs``).
    """

    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn, conn.transaction():
        row = conn.execute(
            "SELECT dag_run_id FROM governance.privacy_requests WHERE request_id = %s FOR UPDATE", (request_id,)
        ).fetchone()
        updated = conn.execute(
            """
            UPDATE governance.privacy_requests
               SET status = 'in_progress', dag_run_id = %s, updated_at = %s
             WHERE request_id = %s AND effective_status IN ('received', 'awaiting_verification', 'verified',
                                                           'dispatched', 'failed', 'in_progress')
            """,
            (dag_run_id, at, request_id),
        ).rowcount
        if updated:
            supersede_earlier_runs(conn, request_id, dag_run_id=dag_run_id, holder=row[0] if row else None, at=at)


def record_run(conn: Any, request_id: str, *, dag_run_id: str, dag_id: str | None, at: datetime) -> None:
    """Record that ``dag_run_id`` opened the request (idempotent: a retried task finds its row)."""
    conn.execute(
        "INSERT INTO governance.request_runs (request_id, dag_run_id, dag_id, opened_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (request_id, dag_run_id) DO UPDATE SET dag_id = COALESCE(governance.request_runs.dag_id,"
        " EXCLUDED.dag_id)",
        (request_id, dag_run_id, dag_id, at),
    )


def supersede_earlier_runs(
    conn: Any, request_id: str, *, dag_run_id: str, holder: str | None, at: datetime
) -> list[str]:
    """Inside the claiming transaction: record that ``dag_run_id`` supersedes every run of the
    request opened before it (and ``holder``, the run whose claim it takes) not superseded yet.

    Returns their run ids. A run opened later than this one is left alone (it is newer), and the
    claiming run itself stops counting as superseded (it holds the request now). The maintenance
    pass closes superseded runs that Airflow still shows running."""
    record_run(conn, request_id, dag_run_id=dag_run_id, dag_id=None, at=at)
    if holder and holder != dag_run_id:  # a holder that claimed before runs were recorded
        record_run(conn, request_id, dag_run_id=holder, dag_id=None, at=at)
    conn.execute(
        "UPDATE governance.request_runs SET superseded_by = NULL, superseded_at = NULL, held_claim = false"
        " WHERE request_id = %s AND dag_run_id = %s AND run_closed_at IS NULL",
        (request_id, dag_run_id),
    )
    rows = conn.execute(
        """
        UPDATE governance.request_runs r
           SET superseded_by = %(run)s, superseded_at = %(at)s, held_claim = (r.dag_run_id = %(holder)s)
         WHERE r.request_id = %(request)s AND r.dag_run_id <> %(run)s AND r.superseded_by IS NULL
           AND (r.dag_run_id = %(holder)s OR r.opened_at <= (SELECT opened_at FROM governance.request_runs
                                                            WHERE request_id = %(request)s AND dag_run_id = %(run)s))
        RETURNING r.dag_run_id
        """,
        {"run": dag_run_id, "at": at, "holder": holder or "", "request": request_id},
    ).fetchall()
    return sorted(r[0] for r in rows)


class ClaimRefused(RuntimeError):
    """This run may not carry the request out (it is finished, or held); nothing was changed."""


class ClaimHeld(ClaimRefused):
    """Another run holds the request and is alive: this run must change nothing."""

    def __init__(self, request_id: str, holder: str, idle_s: float, stale_after_s: float) -> None:
        super().__init__(
            f"request {request_id} is being carried out by run {holder} (it last worked on it {idle_s:.0f} s ago): "
            "this run changes nothing and leaves the request to it. If that run is dead (killed), a run started "
            f"once it has done nothing for {stale_after_s:.0f} s takes it over (GOVERNANCE_CLAIM_STALE_AFTER_S)"
        )
        self.holder = holder


@dataclass(frozen=True)
class RequestClaim:
    """What :func:`claim_request` did: the run holds the request; ``took_over`` names the (stale)
    run whose claim it took; ``superseded`` every earlier run it superseded."""

    request_id: str
    dag_run_id: str
    took_over: str | None
    superseded: tuple[str, ...]


def _idle_seconds(conn: Any, request_id: str, updated_at: datetime, at: datetime,
                  last_activity: Callable[[Any, str], datetime | None] | None) -> float:  # fmt: skip
    latest = updated_at
    if last_activity is not None:
        other = last_activity(conn, request_id)
        if other is not None and other > latest:
            latest = other
    return (at - latest).total_seconds()


def live_holder(
    conn: Any, request_id: str, *, dag_run_id: str, at: datetime,
    last_activity: Callable[[Any, str], datetime | None] | None = None, stale_after_s: float | None = None,
) -> str | None:
    """The run other than ``dag_run_id`` holding the request in progress and alive (it did some
    work within ``stale_after_s``, by default ``GOVERNANCE_CLAIM_STALE_AFTER_S``), else None."""

    row = conn.execute(
        "SELECT effective_status, dag_run_id, updated_at FROM governance.privacy_requests WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    if row is None or row[0] != "in_progress" or row[1] in (None, dag_run_id):
        return None
    stale = Deadlines.from_env().claim_stale_after_s if stale_after_s is None else stale_after_s
    return str(row[1]) if _idle_seconds(conn, request_id, row[2], at, last_activity) < stale else None


def claim_request(
    request_id: str,
    *,
    dag_run_id: str,
    at: datetime,
    last_activity: Callable[[Any, str], datetime | None] | None = None,
    stale_after_s: float | None = None,
    conninfo: str | None = None,
) -> RequestClaim:
    """Claim the request for ``dag_run_id`` unless another run holds it and is alive.

    A holder is alive while it has worked on the request within ``stale_after_s`` (default
    ``GOVERNANCE_CLAIM_STALE_AFTER_S``): the request's own ``updated_at`` and whatever
    ``last_activity(conn, request_id)`` reports (an erasure's progress). Then :class:`ClaimHeld`
    is raised and nothing changes. A stale holder (a killed run) is taken over: the request names
    this run, and the earlier runs are recorded as superseded by it, with the time. The request
    row is locked while deciding, so two runs never both take it.
    """

    stale = Deadlines.from_env().claim_stale_after_s if stale_after_s is None else stale_after_s
    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn, conn.transaction():
        row = conn.execute(
            "SELECT effective_status, dag_run_id, updated_at FROM governance.privacy_requests"
            " WHERE request_id = %s FOR UPDATE",
            (request_id,),
        ).fetchone()
        if row is None:
            raise UnknownRequest(f"no privacy request {request_id}")
        status, holder, updated_at = row
        if status not in ("received", "awaiting_verification", "verified", "dispatched", "failed", "in_progress"):
            raise ClaimRefused(f"request {request_id} is {status} (finished by another run): this run changes nothing")
        took_over = None
        if status == "in_progress" and holder not in (None, dag_run_id):
            idle = _idle_seconds(conn, request_id, updated_at, at, last_activity)
            if idle < stale:
                raise ClaimHeld(request_id, holder, idle, stale)
            took_over = str(holder)
        conn.execute(
            "UPDATE governance.privacy_requests SET status = 'in_progress', dag_run_id = %s, updated_at = %s"
            " WHERE request_id = %s",
            (dag_run_id, at, request_id),
        )
        superseded = supersede_earlier_runs(conn, request_id, dag_run_id=dag_run_id, holder=holder, at=at)
    return RequestClaim(request_id, dag_run_id, took_over, tuple(superseded))


_CLAIM = "SELECT dag_run_id FROM governance.privacy_requests WHERE request_id = %s"
_CLAIM_FOR_UPDATE = _CLAIM + " FOR UPDATE"


def claimed_by(conn: Any, request_id: str, *, lock: bool = False) -> str | None:
    """The run that holds the request (``mark_in_progress``); with ``lock``, the request's row is
    locked until the caller's transaction ends, so the claim cannot move meanwhile."""
    query = _CLAIM_FOR_UPDATE if lock else _CLAIM
    row = conn.execute(query, (request_id,)).fetchone()
    return None if row is None else row[0]


def close_request(
    request_id: str,
    *,
    succeeded: bool,
    at: datetime,
    result_uri: str | None = None,
    detail: str | None = None,
    conninfo: str | None = None,
) -> str:
    """Set the request's outcome: the one writer of its final status (the DAG's last task).

    (``reject_request`` writes the third final status, ``rejected``.) ``completed`` records ``completed_at`` and ``result_uri``; ``failed`` keeps the request open
    for a re-run (a later success completes it). ``detail`` must hold no personal data.
    Returns the status written.
    """

    status = "completed" if succeeded else "failed"
    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn:
        conn.execute(
            """
            UPDATE governance.privacy_requests
               SET status = %s,
                   completed_at = CASE WHEN %s THEN %s ELSE completed_at END,
                   result_uri = CASE WHEN %s THEN %s ELSE result_uri END,
                   outcome_detail = %s,
                   updated_at = %s
             WHERE request_id = %s AND status NOT IN ('completed', 'rejected', 'responded')
            """,
            (status, succeeded, at, succeeded, result_uri, detail, at, request_id),
        )
    return status


def reject_request(request_id: str, *, at: datetime, detail: str, conninfo: str | None = None) -> str:
    """Final status ``rejected``: the request cannot be served as asked (identity not verified, or
    identities that fit several people), and nothing was collected or changed. ``detail`` says
    why, without personal data. A completed or already rejected request is left as it is.
    Returns the status written."""

    if _blank(detail):
        raise ValueError("a rejection must say why")
    with connect(conninfo or conninfo_for(GOVERNANCE_CONN_ID)) as conn:
        conn.execute(
            """
            UPDATE governance.privacy_requests
               SET status = 'rejected', outcome_detail = %s, updated_at = %s
             WHERE request_id = %s AND status NOT IN ('completed', 'rejected', 'responded')
            """,
            (detail, at, request_id),
        )
    return "rejected"
