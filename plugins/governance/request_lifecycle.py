"""The privacy-request lifecycle: its states, which may follow which, and the writers that move a
request along it (policy 5 and 11).

::

    received ──► awaiting_verification ──► verified ──► dispatched ──► in_progress ──► completed ──► responded
        │                 │                   │  ▲          │              │  ▲            ▲
        └─────────────────┴───────────────────┴──┼──────────┴──────────────┴──┼── rejected ─┘
                                                 └──────── failed ◄───────────┘
    any open state ──► extended (once, with a reason and a new deadline) ──► on as from that state

* ``received``: recorded (CLI, Privacy requests page, a trigger form); ``awaiting_verification``:
  the intake checked it (its identities decrypt and are well formed, it is no duplicate) and it
  waits for staff to verify the person; ``verified``: staff verified it (for an erasure, also its
  approval); ``dispatched``: the intake or the page started its workflow run (one run id per
  dispatch attempt, derived from the request id); ``in_progress``: the run claimed it;
  ``completed`` / ``failed`` / ``rejected``: the outcome, written by the workflow's last task
  (the intake writes ``failed`` only for a run that ended without an outcome, and ``rejected`` for
  a request it cannot serve or that duplicates an open one); ``failed`` goes back to
  ``verified`` when staff clear it for a retry (:func:`retry_request`: the next dispatch gets a
  new run id), or to ``in_progress`` when its run is cleared and re-run in Airflow;
  ``responded``: the person was told the outcome (when and how); ``extended``: the deadline was
  extended, once, with a reason.

The database enforces it: a trigger on ``governance.privacy_requests`` (migration 0014) refuses
any status change that is not in :data:`TRANSITIONS` (the same table, kept equal by a test) and
appends every change to ``governance.request_transitions``. Refusals surface here as
:class:`InvalidTransition`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

from governance.privacy_requests import UnknownRequest

STATES = (
    "received", "awaiting_verification", "verified", "dispatched", "in_progress", "completed", "failed",
    "rejected", "extended", "responded",
)  # fmt: skip
FINAL_STATES = ("completed", "rejected", "responded")
OPEN_STATES = tuple(s for s in STATES if s not in FINAL_STATES)
# from -> the states that may follow it (``extended`` is entered from any open state, once).
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"awaiting_verification", "verified", "in_progress", "failed", "rejected"}),
    "awaiting_verification": frozenset({"verified", "in_progress", "failed", "rejected"}),
    "verified": frozenset({"dispatched", "in_progress", "failed", "rejected"}),
    "dispatched": frozenset({"in_progress", "completed", "failed", "rejected"}),
    "in_progress": frozenset({"completed", "failed", "rejected"}),
    "failed": frozenset({"verified", "in_progress", "completed", "rejected"}),
    "completed": frozenset({"responded", "received", "verified"}),
    "rejected": frozenset({"responded", "received", "verified"}),
    "responded": frozenset({"received", "verified"}),
}
RESPONSE_CHANNELS = ("email", "post", "phone", "portal", "in_person")
MIN_REASON = 10
# GDPR Art. 12(3): the period may be extended by two further months where necessary.
MAX_EXTENSION = timedelta(days=62)
_INVALID_TRANSITION_SQLSTATE = "GVT01"


class InvalidTransition(ValueError):
    """The request may not move to that state; nothing was changed."""


def allowed(current: str, new: str, *, extended_from: str | None = None, already_extended: bool = False) -> bool:
    """Whether a request in ``current`` (``extended`` reads through ``extended_from``) may go to
    ``new`` (the same rule as the database trigger)."""
    effective = extended_from if current == "extended" else current
    if effective is None or new == current:
        return new == current
    if new == "extended":
        return not already_extended and effective in OPEN_STATES
    return new == effective or new in TRANSITIONS.get(effective, frozenset())


@contextmanager
def transition_detail(conn: psycopg.Connection[Any], detail: str | None) -> Iterator[None]:
    """Inside a transaction: the words the lifecycle trigger records with the status change, and
    the trigger's refusal raised as :class:`InvalidTransition`."""
    with conn.transaction():
        # Always set (to '' when None): the setting lasts until the outer transaction ends.
        conn.execute("SELECT set_config('governance.transition_detail', %s, true)", (detail or "",))
        try:
            yield
        except psycopg.Error as exc:
            if exc.sqlstate == _INVALID_TRANSITION_SQLSTATE:
                raise InvalidTransition(exc.diag.message_primary or str(exc)) from None
            raise


def set_status(
    conn: psycopg.Connection[Any], request_id: str, status: str, *, at: datetime, detail: str | None = None,
    expect: tuple[str, ...] | None = None, **columns: Any,
) -> str:
    """Move the request to ``status`` (and set ``columns``); return the status it had.

    ``expect``: the (effective) states it must be in, else InvalidTransition; the trigger refuses
    any move outside the lifecycle. ``detail`` (no personal data) is kept with the transition.
    """
    from psycopg import sql


    with transition_detail(conn, detail):
        row = conn.execute(
            "SELECT status, effective_status FROM governance.privacy_requests WHERE request_id = %s FOR UPDATE",
            (request_id,),
        ).fetchone()
        if row is None:
            raise UnknownRequest(f"no privacy request {request_id}")
        if expect is not None and row[1] not in expect:
            raise InvalidTransition(f"privacy request {request_id} is {row[0]}, not {' or '.join(expect)}")
        assignments: list[sql.Composable] = [sql.SQL("status = %(status)s"), sql.SQL("updated_at = %(at)s")]
        assignments += [sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in columns]
        conn.execute(
            sql.SQL("UPDATE governance.privacy_requests SET {} WHERE request_id = %(request_id)s").format(
                sql.SQL(", ").join(assignments)
            ),
            {"status": status, "at": at, "request_id": request_id, **columns},
        )
    return str(row[0])


def extend_deadline(
    conn: psycopg.Connection[Any], request_id: str, *, extra: timedelta, reason: str, by: str, at: datetime
) -> datetime:
    """The legal extension: once per request, with a reason (at least 10 characters, no personal
    data), by at most :data:`MAX_EXTENSION`. The request goes to ``extended`` (and on from there
    as from the state it was in); the first deadline is kept in ``original_due_at``. Returns the
    new deadline. InvalidTransition when it was extended before or is finished."""
    reason, by = (reason or "").strip(), (by or "").strip()
    if len(reason) < MIN_REASON:
        raise InvalidTransition(f"give a reason of at least {MIN_REASON} characters for the extension")
    if not by:
        raise InvalidTransition("say who extends the deadline")
    if extra <= timedelta(0) or extra > MAX_EXTENSION:
        raise InvalidTransition(f"an extension is between 1 and {MAX_EXTENSION.days} days")
    row = conn.execute("SELECT due_at FROM governance.privacy_requests WHERE request_id = %s", (request_id,)).fetchone()
    if row is None:
        raise UnknownRequest(f"no privacy request {request_id}")
    new_due = row[0] + extra
    set_status(conn, request_id, "extended", at=at, detail=f"deadline extended by {extra.days} days: {reason}",
               due_at=new_due, original_due_at=row[0], extended_at=at, extended_by=by,
               extension_reason=reason)  # fmt: skip
    return new_due


def record_response(conn: psycopg.Connection[Any], request_id: str, *, via: str, at: datetime, by: str) -> None:
    """The person was told the outcome of a completed or rejected request (when, and how)."""
    if via not in RESPONSE_CHANNELS:
        raise InvalidTransition(f"say how the person was told: one of {', '.join(RESPONSE_CHANNELS)}")
    set_status(conn, request_id, "responded", at=at, detail=f"outcome sent by {via} ({by})",
               expect=("completed", "rejected"), responded_at=at, responded_via=via)  # fmt: skip


def retry_request(conn: psycopg.Connection[Any], request_id: str, *, reason: str, by: str, at: datetime) -> int:
    """Clear a failed request for a new dispatch: back to ``verified`` with the next dispatch
    attempt (so the next dispatch starts a new run, with its own run id). Returns the attempt."""
    reason = (reason or "").strip()
    if len(reason) < MIN_REASON:
        raise InvalidTransition(f"give a reason of at least {MIN_REASON} characters for the retry")
    row = conn.execute(
        "SELECT dispatch_attempt, verified_at FROM governance.privacy_requests WHERE request_id = %s", (request_id,)
    ).fetchone()
    if row is None:
        raise UnknownRequest(f"no privacy request {request_id}")
    if row[1] is None:
        raise InvalidTransition(f"privacy request {request_id} was never verified: verify it, do not retry it")
    attempt = int(row[0]) + 1
    set_status(conn, request_id, "verified", at=at, detail=f"cleared for retry by {by}: {reason}", expect=("failed",),
               dispatch_attempt=attempt, dispatch_run_id=None, dispatched_at=None)  # fmt: skip
    return attempt


def history(conn: psycopg.Connection[Any], request_id: str) -> list[tuple[str, str]]:
    """The request's status changes, oldest first: ``[(from, to), ...]``."""
    rows = conn.execute(
        "SELECT from_status, to_status FROM governance.request_transitions WHERE request_id = %s ORDER BY transition_id",
        (request_id,),
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]
