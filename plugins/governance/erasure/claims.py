"""Which run carries out an erasure request: one at a time, and a killed run is taken over.

A run claims the request when it starts to execute its plan (``execute_database``). Another run
that holds it and is alive (it worked on the request within ``GOVERNANCE_CLAIM_STALE_AFTER_S``;
the claiming run first waits for the person's lock, so a holder inside a step has finished it)
keeps it: the new run fails changing nothing, and neither its certificate task nor its outcome
task writes anything for the request. A holder that has done nothing for longer is taken to be
dead (a killed run stays ``running`` in Airflow and never releases its claim): the new run takes
the request over, and the request records that it superseded the earlier runs, and when
(``governance.request_runs``; the maintenance pass then closes the dead run in Airflow).
"""

from __future__ import annotations

from datetime import datetime

from governance.db import connect
from governance.erasure.store import last_work_at
from governance.workflows.request_intake import (
    ClaimHeld,
    ClaimRefused,
    RequestClaim,
    claim_request,
    live_holder,
)

__all__ = ["ClaimHeld", "ClaimRefused", "RequestClaim", "claim_erasure", "held_by_another_run"]


def claim_erasure(request_id: str, *, dag_run_id: str, at: datetime, conninfo: str) -> RequestClaim:
    """Claim the request for this run (raises :class:`ClaimHeld` when a live run holds it, and
    :class:`ClaimRefused` when the request was finished meanwhile)."""
    return claim_request(request_id, dag_run_id=dag_run_id, at=at, last_activity=last_work_at, conninfo=conninfo)


def held_by_another_run(request_id: str, *, dag_run_id: str, at: datetime, conninfo: str) -> str | None:
    """The live run other than this one that holds the request (its outcome is its own), or None."""
    with connect(conninfo) as conn:
        return live_holder(conn, request_id, dag_run_id=dag_run_id, at=at, last_activity=last_work_at)
