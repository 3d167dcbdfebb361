"""Reading Airflow connections that no provider hook serves: the key connections (hash and
encryption keys, read by :mod:`governance.crypto`) and the alerts webhook (the notifier).

The governed systems are reached through the providers' hooks instead: ``PostgresHook``
(:mod:`governance.db`), ``S3Hook`` (:mod:`governance.objectstore`) and ``HttpHook``
(:mod:`governance.connectors.processors`). Connections come from the environment
(``AIRFLOW_CONN_<ID>``), the metadata database or a secrets backend, inside tasks and from the
command line alike. Airflow is imported lazily: importing ``airflow.sdk`` costs seconds, and pure
modules (and DAG parsing) must not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConnectionNotConfigured(LookupError):
    """An Airflow connection the workflow needs is missing."""


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow connection this package uses (no Airflow types leak out)."""

    conn_id: str
    conn_type: str = ""
    host: str = ""
    port: int | None = None
    login: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def base_url(self) -> str:
        """An http(s) base URL for an ``http`` connection, without a trailing slash (the alerts
        webhook; processors get theirs from ``HttpHook``)."""
        host = self.host
        if "://" not in host:
            scheme = self.extra.get("scheme") or (self.conn_type if self.conn_type in ("http", "https") else "http")
            host = f"{scheme}://{host}"
        if self.port:
            host = f"{host.rstrip('/')}:{self.port}"
        return host.rstrip("/")


def not_configured(conn_id: str) -> ConnectionNotConfigured:
    """The error for a missing connection: names the id and how to set it, never any contents."""
    return ConnectionNotConfigured(
        f"Airflow connection {conn_id!r} is not configured: set AIRFLOW_CONN_{conn_id.upper()} "
        "or add it in the Airflow UI (see README, 'Connections')"
    )


def get_connection(conn_id: str) -> ConnectionInfo:
    """Resolve ``conn_id`` through Airflow's secrets backends.

    Raises ConnectionNotConfigured with the id (never the contents) when it does not exist.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # Airflow raises AirflowNotFoundException, or a comms error outside tasks
        raise not_configured(conn_id) from exc
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host or "",
        port=conn.port,
        login=conn.login or "",
        password=conn.password or "",
        schema=conn.schema or "",
        extra=dict(conn.extra_dejson or {}),
    )
