"""PostgreSQL access for the governed databases and the governance schema (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from governance.connections import get_connection


def conninfo_for(conn_id: str) -> str:
    """libpq URL of the Airflow connection ``conn_id``."""
    return get_connection(conn_id).postgres_conninfo()


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
