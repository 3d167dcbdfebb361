"""Advisory locks on a person's keyed hashes: erasures of the same person run one at a time.

Every erasure task that reads or changes the person's data holds, on the governance database, a
session advisory lock per identity (derived from the identity's keyed hash, never the identity),
taken in a fixed order so two requests naming overlapping identities cannot deadlock each other.
Erasures of different people take different locks and run in parallel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from governance.crypto import IdentityHasher
from governance.identity import SubjectIdentities

# High bits name the purpose, so these locks never collide with the migration or ledger locks.
_PURPOSE = 0x45_52  # "ER"


def lock_keys(hasher: IdentityHasher, identities: SubjectIdentities) -> list[int]:
    """Signed 64-bit advisory lock keys for the person's identities, sorted."""
    keys = set()
    for kind, value in identities.items():
        digest = hasher.hash(kind, value)
        keys.add((_PURPOSE << 48) | int(digest[:12], 16))
    return sorted(k - (1 << 64) if k >= 1 << 63 else k for k in keys)


@contextmanager
def subject_lock(conninfo: str, hasher: IdentityHasher, identities: SubjectIdentities, *, timeout_s: float = 900) -> Iterator[None]:
    """Hold the person's locks for the duration of the block (waiting up to ``timeout_s``)."""
    conn = psycopg.connect(conninfo, autocommit=True, application_name="governance-erasure-lock")
    try:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout_s * 1000)}ms")))
        for key in lock_keys(hasher, identities):
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock_all()")
        finally:
            conn.close()
