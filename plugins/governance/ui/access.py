"""Who may do what on the Privacy requests page.

Authentication is Airflow's: the page's routes depend on
:func:`airflow.api_fastapi.core_api.security.get_user`, which reads the same JWT the Airflow UI
uses (the ``_token`` cookie, or an ``Authorization: Bearer`` header), so there is no second login
and a request without a valid session is refused (401/403) before any handler runs.

Authorisation has two layers, both must allow an action:

* the role of the user, configured per action in Airflow's configuration, section
  ``[governance]`` (``AIRFLOW__GOVERNANCE__APPROVE_ROLES=admin,op`` etc.):
  ``view_roles``, ``record_roles``, ``approve_roles``, ``reveal_roles`` (comma-separated role
  names as the auth manager names them; ``*`` allows every authenticated user);
* Airflow's own permission on the DAG behind the action (triggering a run of the DAG, answering
  its Required actions), asked of the configured auth manager.

Approving is further limited to ``[governance] approvers`` when that is set
(:mod:`governance.approvers`), as the approval steps themselves are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from governance.approvers import approver_refusal

Action = Literal["view", "record", "approve", "reveal"]
DEFAULT_ROLES: dict[str, str] = {
    "view": "*",
    "record": "admin,op,user",
    "approve": "admin,op",
    "reveal": "admin,op",
}


@dataclass(frozen=True)
class Staff:
    """The authenticated user as the page records them (name and roles; never a password)."""

    name: str
    roles: tuple[str, ...]
    user: Any = None

    @property
    def role(self) -> str:
        return ",".join(self.roles)


def staff_of(user: Any) -> Staff:
    """Name and roles of an auth-manager user (simple auth manager: ``role``; FAB: ``roles``)."""
    roles: list[str] = []
    role = getattr(user, "role", None)
    if role:
        roles.append(str(role).lower())
    for item in getattr(user, "roles", None) or []:
        roles.append(str(getattr(item, "name", item)).lower())
    return Staff(name=str(user.get_name()), roles=tuple(dict.fromkeys(roles)), user=user)


def allowed_roles(action: Action) -> set[str]:
    """Roles configured for ``action`` (``[governance] <action>_roles``)."""
    from airflow.configuration import conf

    value = conf.get("governance", f"{action}_roles", fallback=DEFAULT_ROLES[action]) or ""
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def role_allows(staff: Staff, action: Action) -> bool:
    roles = allowed_roles(action)
    return "*" in roles or bool(roles & set(staff.roles))


def airflow_allows(staff: Staff, action: Action, dag_id: str | None) -> bool:
    """Airflow's own permission for the DAG behind the action (always true for view/reveal)."""
    if dag_id is None or action in ("view", "reveal") or staff.user is None:
        return True
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    if action == "record":
        return bool(get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                         details=DagDetails(id=dag_id), user=staff.user))  # fmt: skip
    entity = DagAccessEntity.HITL_DETAIL
    return bool(get_auth_manager().is_authorized_dag(method="PUT", access_entity=entity, details=DagDetails(id=dag_id),
                                                     user=staff.user))  # fmt: skip


def approver_allows(staff: Staff, action: Action) -> bool:
    """``[governance] approvers``, when set, names the only users who may approve
    (:mod:`governance.approvers`; the workflows refuse anyone else's answer too)."""
    if action != "approve":
        return True

    user_id = str(staff.user.get_id()) if staff.user is not None else staff.name
    return approver_refusal({"id": user_id, "name": staff.name}) is None


def may(staff: Staff, action: Action, dag_id: str | None = None) -> bool:
    return role_allows(staff, action) and approver_allows(staff, action) and airflow_allows(staff, action, dag_id)
