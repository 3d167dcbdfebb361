"""PostgreSQL access for the governed databases and the governance schema, through the postgres
provider's hook (psycopg 3).

Every SQL system is an Airflow connection of type ``postgres`` (``AIRFLOW_CONN_<ID>``, the
metadata database or a secrets backend). :class:`GovernancePostgresHook` is the provider's
``PostgresHook`` with two changes that keep identities out of Airflow:

* ``log_sql`` is off by default, and statements it runs never log or report their parameters
  (``PostgresHook.run`` logs ``parameters`` at info level and sends them to hook lineage, and our
  parameters are e-mail addresses and phone numbers);
* a connection is opened with an ``application_name`` saying which part of the workflow holds it.

Everything the provider reads from the connection applies: host, port, login, password, database
(``schema``), every libpq extra (``sslmode``, ``sslrootcert``, ``options``, ``connect_timeout``,
...), IAM authentication (``iam``/``aws_conn_id`` for RDS and Redshift tokens) and
``test_connection`` in the UI. :func:`conninfo_for` renders the hook's libpq arguments as a
conninfo string for the code that opens its own (streaming, transactional) psycopg connections;
:func:`hook_connection` opens one through ``hook.get_conn()`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg.conninfo import make_conninfo

from governance.connections import ConnectionNotConfigured, not_configured
from governance.deadlines import Deadlines

# Not libpq keywords: what the provider passes to psycopg's Connection.connect besides them.
_NOT_LIBPQ = frozenset({"row_factory", "cursor_factory", "autocommit"})


class GovernancePostgresHook(PostgresHook):
    """``PostgresHook`` that never logs or reports statement parameters (identities are bind
    parameters) and names its connections (``application_name``)."""

    hook_name = "Postgres (governance)"

    def __init__(self, *args: Any, application_name: str = "governance", **kwargs: Any) -> None:
        kwargs.setdefault("log_sql", False)
        super().__init__(*args, **kwargs)
        self.application_name = application_name
        self._captured: dict[str, Any] | None = None

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        conn_args.setdefault("application_name", self.application_name)
        # Server-side deadlines (statement, lock, idle in transaction) for every session; options
        # the connection's extras set come after, so they win.
        conn_args["options"] = " ".join(filter(None, [Deadlines.from_env().pg_options(), conn_args.get("options")]))
        if self._captured is not None:  # connection_args(): the arguments, no connection
            self._captured.update(conn_args)
            return None
        return super()._create_connection(conn_args)

    def connection_args(self) -> dict[str, Any]:
        """The libpq arguments ``get_conn()`` opens a connection with (credentials included, with
        IAM tokens fetched now): built by the provider from the connection and its extras."""
        self._captured = {}
        try:
            try:
                super().get_conn()
            except Exception as exc:
                if type(exc).__name__ == "AirflowNotFoundException":
                    raise not_configured(self.get_conn_id()) from exc
                raise
            return {k: v for k, v in self._captured.items() if v is not None and k not in _NOT_LIBPQ}
        finally:
            self._captured = None
            self.conn = None

    def conninfo(self) -> str:
        """The connection as a libpq conninfo string (for ``psycopg.connect``)."""
        return make_conninfo("", **self.connection_args())

    def _run_command(self, cur: Any, sql_statement: str, parameters: Any) -> None:
        """Run one statement: the statement may be logged (when ``log_sql``), its parameters never,
        and hook lineage gets the statement without them."""
        from airflow.providers.common.sql.hooks.lineage import send_sql_hook_lineage

        if self.log_sql:
            self.log.info("Running statement: %s (parameters not logged)", sql_statement)
        if parameters:
            cur.execute(sql_statement, tuple(parameters) if isinstance(parameters, list) else parameters)
        else:
            cur.execute(sql_statement)
        send_sql_hook_lineage(context=self, sql=sql_statement, cur=cur)
        if cur.rowcount is not None and cur.rowcount >= 0:
            self.log.info("Rows affected: %s", cur.rowcount)


def postgres_hook(conn_id: str, *, application_name: str = "governance") -> GovernancePostgresHook:
    """The hook for the Airflow connection ``conn_id``."""
    return GovernancePostgresHook(postgres_conn_id=conn_id, application_name=application_name)


def conninfo_for(conn_id: str, *, application_name: str = "governance") -> str:
    """libpq conninfo of the Airflow connection ``conn_id``, as its hook would connect.

    Raises ConnectionNotConfigured (naming the id, never the contents) when it does not exist.
    """
    return postgres_hook(conn_id, application_name=application_name).conninfo()


@contextmanager
def connect(conninfo: str, *, autocommit: bool = False, application_name: str = "governance") -> Iterator[psycopg.Connection]:
    """Open a connection; commit on success, roll back on error, always close."""
    conn = psycopg.connect(conninfo, autocommit=autocommit, application_name=application_name)
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            conn.rollback()
        raise
    finally:
        conn.close()


@contextmanager
def hook_connection(conn_id: str, *, autocommit: bool = False, application_name: str = "governance") -> Iterator[psycopg.Connection]:
    """A connection opened by the hook's ``get_conn()``; commit on success, roll back on error."""
    hook = postgres_hook(conn_id, application_name=application_name)
    try:
        conn = hook.get_conn()
    except Exception as exc:
        if type(exc).__name__ == "AirflowNotFoundException":
            raise not_configured(conn_id) from exc
        raise
    assert isinstance(conn, psycopg.Connection), "the postgres provider runs on psycopg 3 here"
    conn.autocommit = autocommit
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit:
            conn.rollback()
        raise
    finally:
        conn.close()


__all__ = [
    "ConnectionNotConfigured",
    "GovernancePostgresHook",
    "conninfo_for",
    "connect",
    "hook_connection",
    "postgres_hook",
]
