"""S3 API access (MinIO, the embedded server or AWS) from the ``aircalls_objects`` connection."""

from __future__ import annotations

from typing import Any

from governance.connections import ConnectionInfo, get_connection


def s3_client_for(info: ConnectionInfo) -> Any:
    """A boto3 S3 client for an ``aws`` connection: login/password are the access key pair,
    ``extra.endpoint_url`` points at MinIO or a local server, ``extra.region_name`` the region."""
    import boto3
    from botocore.config import Config

    extra = info.extra
    return boto3.client(
        "s3",
        endpoint_url=extra.get("endpoint_url") or None,
        aws_access_key_id=info.login or extra.get("aws_access_key_id"),
        aws_secret_access_key=info.password or extra.get("aws_secret_access_key"),
        region_name=extra.get("region_name", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            signature_version="s3v4",
        ),
    )


def s3_client(conn_id: str) -> Any:
    """A boto3 S3 client for the Airflow connection ``conn_id``."""
    return s3_client_for(get_connection(conn_id))
