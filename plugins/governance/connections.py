"""Reading Airflow connections for the governed systems.

Every system is reached through an Airflow connection (environment ``AIRFLOW_CONN_<ID>``, the
metadata database or a secrets backend), inside tasks and from the command line alike. Airflow is
imported lazily: importing ``airflow.sdk`` costs seconds, and pure modules must not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote


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

    def postgres_conninfo(self) -> str:
        """A libpq URL for a ``postgres`` connection (``schema`` holds the database name)."""
        auth = quote(self.login or "postgres", safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = self.host or "127.0.0.1"
        port = self.port or 5432
        database = quote(self.schema or "postgres", safe="")
        return f"postgresql://{auth}@{host}:{port}/{database}"

    def base_url(self) -> str:
        """An http(s) base URL for an ``http`` connection, without a trailing slash."""
        host = self.host
        if "://" not in host:
            scheme = self.extra.get("scheme") or (self.conn_type if self.conn_type in ("http", "https") else "http")
            host = f"{scheme}://{host}"
        if self.port:
            host = f"{host.rstrip('/')}:{self.port}"
        return host.rstrip("/")


def get_connection(conn_id: str) -> ConnectionInfo:
    """Resolve ``conn_id`` through Airflow's secrets backends.

    Raises ConnectionNotConfigured with the id (never the contents) when it does not exist.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # Airflow raises AirflowNotFoundException, or a comms error outside tasks
        raise ConnectionNotConfigured(
            f"Airflow connection {conn_id!r} is not configured: set AIRFLOW_CONN_{conn_id.upper()} "
            "or add it in the Airflow UI (see README, 'Configuration')"
        ) from exc
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
