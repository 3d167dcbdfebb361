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
from governance.connectors.base import Connector, DatabaseConnector, ObjectStoreConnector, processor_connector
from governance.connectors.dynamodb import ItemStoreConnector
from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.datamap import load_datamap
from governance.datamap.model import DynamoDBSystem, ObjectStoreSystem, PostgresSystem
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


class SystemUnhealthy(RuntimeError):
    """A governed system or processor does not answer with its configured connection."""


def governed_systems() -> list[str]:
    """The name of every system and processor of the data map, in map order (names only: the
    healthcheck maps one task over them, so each shows, fails and retries on its own)."""

    datamap = load_datamap()
    return [system.name for system in datamap.systems] + [processor.name for processor in datamap.processors]


def _connector_for(name: str) -> tuple[str, Connector, str | None]:
    """``(kind, connector, schema)`` of the system or processor ``name`` of the data map."""

    datamap = load_datamap()
    system = datamap.system(name)
    if isinstance(system, PostgresSystem):
        return system.kind, DatabaseConnector(system.connection_id), system.db_schema
    if isinstance(system, ObjectStoreSystem):
        return system.kind, ObjectStoreConnector(system.connection_id, system.bucket.resolve()), None
    if isinstance(system, DynamoDBSystem):
        tables = [table.table_name.resolve() for table in system.tables]
        return system.kind, ItemStoreConnector(system.connection_id, tables), None
    processor = next((p for p in datamap.processors if p.name == name), None)
    if processor is None:
        known = ", ".join(governed_systems())
        raise SystemUnhealthy(f"{name!r} is neither a system nor a processor of the data map (it has: {known})")
    return f"processor ({processor.connector})", processor_connector(processor, attempts=1), None


def check_governed_system(name: str) -> dict[str, Any]:
    """The system or processor ``name`` answers with its Airflow connection through its connector's
    ``test()`` (the same check as the connection form's Test button); for a PostgreSQL system, its
    mapped schema exists too. SystemUnhealthy names the system and the connector's reason."""

    kind, connector, schema = _connector_for(name)
    try:
        ok, message = connector.test()
        if ok and schema is not None:
            assert isinstance(connector, DatabaseConnector)
            with connect(connector.conninfo()) as conn:
                found = conn.execute(
                    "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (schema,)
                ).fetchone()
            if not found or not found[0]:
                ok, message = False, f"the database answers but has no schema {schema!r}"
    finally:
        close = getattr(connector, "close", None)
        if close is not None:
            close()
    if not ok:
        raise SystemUnhealthy(f"{name} ({kind}) is not healthy: {message}")
    return {"system": name, "kind": kind, "message": message}
