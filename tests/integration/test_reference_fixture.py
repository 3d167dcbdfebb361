"""The session's reference deployment and its clones are real, complete and independent."""

from __future__ import annotations

from typing import Any

import psycopg

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM app.{table}").fetchone()[0]  # noqa: S608 - fixed names
            for table in ("users", "callers", "calls", "payments", "usage_events")
        }


def test_clone_is_a_full_copy_and_changes_to_it_leave_the_reference_alone(
    reference_deployment: Deployment, reference_clone: Deployment, s3: Any
) -> None:
    assert _counts(reference_clone.app_url) == _counts(reference_deployment.app_url)
    assert reference_deployment.report is not None and reference_deployment.report.rows["calls"] > 0
    with psycopg.connect(reference_clone.app_url) as conn:
        conn.execute("DELETE FROM app.usage_events")
    assert _counts(reference_clone.app_url)["usage_events"] == 0
    assert _counts(reference_deployment.app_url)["usage_events"] > 0

    ref_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=reference_deployment.bucket, MaxKeys=1000)["Contents"]}
    clone_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=reference_clone.bucket, MaxKeys=1000)["Contents"]}
    assert clone_keys == ref_keys

    subject = cast_member("both_user_and_caller")
    customers = reference_clone.payments.customers()
    mine = [c for c in customers if c["email"].lower() == (subject.email or "").lower()]
    assert mine, "the clone's payments stand-in holds the cast member's customer"
    reference_clone.payments.reset()
    assert reference_deployment.payments.customers(), "resetting the clone's stand-in spares the reference"
