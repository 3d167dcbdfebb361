"""Checks that the governed systems and the project's own state are reachable and sound.

Each function returns a small JSON-safe summary (ids, counts, booleans: never data) for XCom.
"""

from __future__ import annotations

from typing import Any

from governance.config import (
    APP_CONN_ID,
    APP_SCHEMA,
    GOVERNANCE_CONN_ID,
    OBJECTS_CONN_ID,
    migration_role,
    objects_bucket,
)
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.db import connect, conninfo_for
from governance.migrations import ensure_schema
from governance.objectstore import s3_client


def migrate_governance_schema() -> dict[str, Any]:
    """Create or upgrade the governance schema (idempotent); where a migration role is configured,
    only check that it is current (tasks never migrate then)."""

    applied = ensure_schema(conninfo_for(GOVERNANCE_CONN_ID))
    return {"applied": applied, "migrated_by": "init service" if migration_role() else "this task"}


def check_app_database() -> dict[str, Any]:
    """The app database answers and its schema has tables."""

    with connect(conninfo_for(APP_CONN_ID)) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            (APP_SCHEMA,),
        ).fetchone()
    count = int(tables[0]) if tables else 0
    if count == 0:
        raise RuntimeError(f"schema {APP_SCHEMA!r} has no tables: is {APP_CONN_ID!r} the app database?")
    return {"server_version": version[0] if version else None, "tables": count}


def check_object_store() -> dict[str, Any]:
    """The bucket exists; report whether versioning and default encryption are on."""
    from botocore.exceptions import ClientError


    client = s3_client(OBJECTS_CONN_ID)
    bucket = objects_bucket()
    client.head_bucket(Bucket=bucket)
    versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "Disabled")
    try:
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        encryption = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
    except ClientError:
        encryption = None
    return {"bucket": bucket, "versioning": versioning, "default_encryption": encryption}


def check_keys() -> dict[str, Any]:
    """Both key connections load and work (hash stable, encryption round-trips)."""

    hasher = hasher_from_airflow()
    cipher = cipher_from_airflow()
    probe = "healthcheck@example.invalid"
    if hasher.hash("email", probe) != hasher.hash("email", probe):
        raise RuntimeError("keyed hash is not stable")
    if cipher.decrypt(cipher.encrypt(probe, context="healthcheck"), context="healthcheck") != probe:
        raise RuntimeError("encryption does not round-trip")
    return {
        "hash_key_id": hasher.key_id,
        "hash_keys": len(hasher.keyring.keys),
        "encryption_key_id": cipher.key_id,
        "encryption_keys": len(cipher.keyring.keys),
    }
