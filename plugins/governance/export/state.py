"""The export's own rows in the governance schema (``include/sql/governance/0004_export.sql``).

* Passphrases: one per request, generated on first use, stored encrypted with the governance
  encryption key (context bound to the request), revealed only to privacy staff through
  ``python -m governance export-passphrase`` and counted when revealed.
* Bundle records: per request and run, the counts, checksums and gate result of the bundle, so a
  cleared task or a later run can see what an earlier one produced. Never a location or link.

The request's own outcome is written by ``governance.workflows.request_intake`` (close_request,
reject_request), called only by the DAG's last task.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from governance.crypto import IdentityCipher

# Crockford's base32 alphabet: no I, L, O or U, so the passphrase survives being read aloud.
PASSPHRASE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PASSPHRASE_GROUPS = 6
PASSPHRASE_GROUP_SIZE = 4  # 24 symbols x 5 bits = 120 random bits


class ExportStateError(LookupError):
    pass


def new_passphrase() -> str:
    """A random passphrase like ``7KQ2-M9XD-4RTP-8HZC-3NVW-6JYB`` (120 bits)."""
    groups = [
        "".join(secrets.choice(PASSPHRASE_ALPHABET) for _ in range(PASSPHRASE_GROUP_SIZE))
        for _ in range(PASSPHRASE_GROUPS)
    ]
    return "-".join(groups)


def _context(request_id: str) -> str:
    return f"export_passphrases:{request_id}"


def ensure_passphrase(conn: psycopg.Connection[Any], request_id: str, *, cipher: IdentityCipher, at: datetime) -> str:
    """The request's passphrase, created on first call (concurrent callers get the same one)."""
    candidate = new_passphrase()
    conn.execute(
        """
        INSERT INTO governance.export_passphrases (request_id, passphrase_encrypted, encryption_key_id, created_at)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (request_id) DO NOTHING
        """,
        (request_id, cipher.encrypt(candidate, context=_context(request_id)), cipher.key_id, at),
    )
    return _load(conn, request_id, cipher)


def _load(conn: psycopg.Connection[Any], request_id: str, cipher: IdentityCipher) -> str:
    row = conn.execute(
        "SELECT passphrase_encrypted FROM governance.export_passphrases WHERE request_id = %s", (request_id,)
    ).fetchone()
    if row is None:
        raise ExportStateError(f"no export passphrase for {request_id}: the bundle has not been built yet")
    return cipher.decrypt(str(row[0]), context=_context(request_id))


def stored_passphrase(conn: psycopg.Connection[Any], request_id: str, *, cipher: IdentityCipher) -> str:
    """The passphrase of an existing bundle (for the quality gate; not counted as a reveal)."""
    return _load(conn, request_id, cipher)


def reveal_passphrase(
    conn: psycopg.Connection[Any], request_id: str, *, cipher: IdentityCipher, at: datetime, by: str
) -> str:
    """The passphrase for staff to pass on; the reveal is counted with when and by whom."""
    passphrase = _load(conn, request_id, cipher)
    conn.execute(
        """
        UPDATE governance.export_passphrases
           SET reveal_count = reveal_count + 1, last_revealed_at = %s, last_revealed_by = %s
         WHERE request_id = %s
        """,
        (at, by, request_id),
    )
    return passphrase


def record_staged(conn: psycopg.Connection[Any], *, request_id: str, run_id: str, summary: dict[str, Any], at: datetime) -> None:
    """Record (or replace, for a re-run of the same run) the bundle a build wrote."""
    conn.execute(
        """
        INSERT INTO governance.export_bundles (
            request_id, run_id, status, generated_at, data_map_version, files, files_digest, plaintext_bytes,
            ciphertext_bytes, ciphertext_sha256, bundle_counts, source_counts, updated_at)
        VALUES (%(request_id)s, %(run_id)s, 'staged', %(generated_at)s, %(data_map_version)s, %(files)s,
            %(files_digest)s, %(plaintext_bytes)s, %(ciphertext_bytes)s, %(ciphertext_sha256)s,
            %(bundle_counts)s, %(source_counts)s, %(at)s)
        ON CONFLICT (request_id, run_id) DO UPDATE SET
            status = 'staged', generated_at = EXCLUDED.generated_at, data_map_version = EXCLUDED.data_map_version,
            files = EXCLUDED.files, files_digest = EXCLUDED.files_digest, plaintext_bytes = EXCLUDED.plaintext_bytes,
            ciphertext_bytes = EXCLUDED.ciphertext_bytes, ciphertext_sha256 = EXCLUDED.ciphertext_sha256,
            bundle_counts = EXCLUDED.bundle_counts, source_counts = EXCLUDED.source_counts, gate_result = NULL,
            published_at = NULL, link_expires_at = NULL, updated_at = EXCLUDED.updated_at
        """,
        {
            "request_id": request_id,
            "run_id": run_id,
            "generated_at": summary["generated_at"],
            "data_map_version": summary["data_map_version"],
            "files": summary["files"],
            "files_digest": summary["files_digest"],
            "plaintext_bytes": summary["plaintext_bytes"],
            "ciphertext_bytes": summary["ciphertext_bytes"],
            "ciphertext_sha256": summary["ciphertext_sha256"],
            "bundle_counts": json.dumps(summary["bundle_counts"], sort_keys=True),
            "source_counts": json.dumps(summary["source_counts"], sort_keys=True),
            "at": at,
        },
    )


def load_bundle_record(conn: psycopg.Connection[Any], *, request_id: str, run_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM governance.export_bundles WHERE request_id = %s AND run_id = %s", (request_id, run_id)
        ).fetchone()
    if row is None:
        raise ExportStateError(f"no bundle was built for {request_id} in this run")
    return dict(row)


def record_gate(
    conn: psycopg.Connection[Any], *, request_id: str, run_id: str, passed: bool, result: dict[str, Any], at: datetime
) -> None:
    conn.execute(
        """
        UPDATE governance.export_bundles SET status = %s, gate_result = %s, updated_at = %s
         WHERE request_id = %s AND run_id = %s
        """,
        ("gate_passed" if passed else "gate_failed", json.dumps(result, sort_keys=True), at, request_id, run_id),
    )


def set_bundle_status(
    conn: psycopg.Connection[Any],
    *,
    request_id: str,
    run_id: str,
    status: str,
    at: datetime,
    published_at: datetime | None = None,
    link_expires_at: datetime | None = None,
) -> None:
    conn.execute(
        """
        UPDATE governance.export_bundles
           SET status = %s, published_at = COALESCE(%s, published_at),
               link_expires_at = COALESCE(%s, link_expires_at), updated_at = %s
         WHERE request_id = %s AND run_id = %s
        """,
        (status, published_at, link_expires_at, at, request_id, run_id),
    )
