"""S3 API access (AWS, MinIO or the embedded server) through the amazon provider's ``S3Hook``.

The ``aircalls_objects`` connection (type ``aws``) is read by the hook, so everything it supports
applies: an access key pair in login/password (or none: the instance role / environment),
``role_arn`` and ``assume_role_method`` to assume a role, ``region_name``, ``endpoint_url`` (or
``service_config.s3.endpoint_url``) for MinIO or a local server, ``config_kwargs`` for botocore,
``verify``, profiles; and ``test_connection`` from the UI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from governance.connections import not_configured
from governance.deadlines import Deadlines

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

# Used when the connection sets no config_kwargs: path-style addressing (MinIO and local servers
# need it; AWS accepts it). Timeouts and retries come from governance.deadlines (always applied:
# a connection's own config_kwargs may tighten them, never leave a call without a deadline).
DEFAULT_CLIENT_CONFIG: dict[str, Any] = {
    "s3": {"addressing_style": "path"},
    "signature_version": "s3v4",
}


class ObjectStoreUnavailable(RuntimeError):
    """The object store did not answer within the configured deadlines (governance.deadlines)."""


def not_answering(exc: BaseException, client: Any) -> ObjectStoreUnavailable | None:
    """An ``ObjectStoreUnavailable`` naming the endpoint when ``exc`` is a connect or read timeout
    (or a refused connection) after botocore's retries; None for any other error."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    if not isinstance(exc, ConnectTimeoutError | ReadTimeoutError | EndpointConnectionError):
        return None

    deadlines = Deadlines.from_env()
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "?")
    return ObjectStoreUnavailable(
        f"object store not answering at {endpoint}: {type(exc).__name__} after {deadlines.s3_max_attempts} "
        f"attempt(s) (connect {deadlines.s3_connect_s:g} s, read {deadlines.s3_read_s:g} s); what was done is "
        "recorded and a retry continues from there"
    )


def require_connection(hook: Any, conn_id: str) -> None:
    """Fail with :func:`not_configured` when the Airflow connection ``conn_id`` does not exist.

    AWS hooks fall back to an empty connection (ambient credentials, AWS endpoints) when the id is
    missing; for a governed system that is a configuration error, not a default."""
    try:
        hook.get_connection(conn_id)
    except Exception as exc:
        if type(exc).__name__ == "AirflowNotFoundException":
            raise not_configured(conn_id) from exc
        raise


def s3_hook(conn_id: str) -> S3Hook:
    """The ``S3Hook`` for the Airflow connection ``conn_id``; the connection's own
    ``config_kwargs`` win over :data:`DEFAULT_CLIENT_CONFIG`."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.config import Config

    hook = S3Hook(aws_conn_id=conn_id)
    require_connection(hook, conn_id)
    wrapper = hook.conn_config
    bounded = Config(**Deadlines.from_env().s3_config())
    base = wrapper.botocore_config if wrapper.botocore_config is not None else Config(**DEFAULT_CLIENT_CONFIG)
    # What the connection sets itself wins; what it leaves unset gets the project's deadlines.
    wrapper.botocore_config = bounded.merge(base)
    return hook


def s3_client(conn_id: str) -> Any:
    """The boto3 S3 client of the connection's ``S3Hook`` (credentials, assumed role, region and
    endpoint as the hook resolves them)."""
    return s3_hook(conn_id).get_conn()
