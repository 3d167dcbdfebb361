"""Who may answer the approval steps of privacy requests: ``[governance] approvers``.

Airflow's configuration, section ``[governance]``, option ``approvers`` (environment
``AIRFLOW__GOVERNANCE__APPROVERS``): comma-separated Airflow user ids, each optionally followed by
``:display name`` (``alice, 42:Bob Smith``). The ids are what the auth manager calls a user's id:
the user name under the simple auth manager, the numeric id under FAB. When set, the erasure's
approval and the export's identity check are assigned to exactly these users (``assigned_users``
of Airflow's HITL operators, which the API enforces), and the workflow refuses an answer given by
anyone else before it records anything (whatever the auth manager allowed). Unset: whoever Airflow
lets answer a DAG's Required actions may, the four-eyes rules still apply.

Read at DAG parse time (configuration only, no database) and again when the answer is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class Approver(TypedDict):
    """One assignee, as Airflow's HITL operators take it (``HITLUser``)."""

    id: str
    name: str


def parse_approvers(value: str) -> list[Approver]:
    """``"alice, 42:Bob Smith"`` -> ``[{"id": "alice", "name": "alice"}, {"id": "42", "name": "Bob Smith"}]``."""
    approvers: list[Approver] = []
    for part in value.split(","):
        user_id, _, name = part.strip().partition(":")
        if user_id.strip():
            approvers.append(Approver(id=user_id.strip(), name=name.strip() or user_id.strip()))
    return approvers


def configured_approvers() -> list[Approver] | None:
    """The configured approvers, or None when the option is unset or empty (no restriction)."""
    from airflow.configuration import conf

    approvers = parse_approvers(conf.get("governance", "approvers", fallback="") or "")
    return approvers or None


def approver_refusal(responder: Mapping[str, Any] | Any) -> str | None:
    """Why ``responder`` (the HITL answer's ``responded_by_user``) may not answer, or None."""
    approvers = configured_approvers()
    if approvers is None:
        return None
    user_id = str(responder.get("id") or "") if isinstance(responder, Mapping) else ""
    if user_id in {a["id"] for a in approvers}:
        return None
    name = str(responder.get("name") or user_id or "unknown") if isinstance(responder, Mapping) else "unknown"
    return (f"{name} is not one of the configured approvers ([governance] approvers): nothing was changed; "
            "one of them must answer (clear the step to ask again)")  # fmt: skip
