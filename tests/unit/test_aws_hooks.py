"""The S3 and DynamoDB hooks refuse a missing Airflow connection instead of falling back to ambient
AWS credentials and endpoints (which would reach real AWS, or nothing, with no clear error)."""

from __future__ import annotations

import pytest

from governance.connections import ConnectionNotConfigured
from governance.connectors.dynamodb import dynamodb_hook
from governance.objectstore import s3_hook


@pytest.mark.parametrize("make_hook", [s3_hook, dynamodb_hook], ids=["s3", "dynamodb"])
def test_a_missing_aws_connection_is_a_configuration_error_naming_how_to_set_it(make_hook: object) -> None:
    with pytest.raises(ConnectionNotConfigured, match="'gt_no_such_aws' is not configured: set AIRFLOW_CONN_GT_NO_SUCH_AWS"):
        make_hook("gt_no_such_aws")  # type: ignore[operator]
