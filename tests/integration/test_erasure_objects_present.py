"""The erasure plan counts the objects really stored, not keys computed from rows.

A prefix's candidate keys come from the person's rows (``recordings/{business_id}/{id}.wav``);
some may never have been uploaded, others have several versions. The dry run and the approval
step must show the objects and versions actually present, listed per prefix, with the candidates
that hold nothing counted apart; the certificate then lists what was removed. Ground truth is
listed straight from the bucket.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from governance.datamap import load_datamap
from governance.erasure.readable import erasure_plan_text
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import conf_for, plan_keys, run_erasure, shared_clone

pytestmark = pytest.mark.integration
__all__ = ["shared_clone"]

SUBJECT = "caller_only"  # recorded and transcribed calls at business C


def _stored_versions(s3: Any, bucket: str, key: str) -> int:
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
    return sum(1 for page in pages for v in page.get("Versions", []) if v["Key"] == key)


def test_plan_shows_objects_and_versions_present_and_counts_missing_candidates_apart_and_certificate_lists_removals(
    shared_clone: Deployment, s3: Any
) -> None:
    bucket = shared_clone.bucket
    first = run_erasure(conf_for(SUBJECT), "objects-present-a", dry_run=True)
    candidates = {f"{o['system']}.{o['prefix']}": list(o["keys"])
                  for o in plan_keys(shared_clone.app_url, first.summary["plan_id"])["objects"] if o["keys"]}  # fmt: skip
    recordings = next(k for k in candidates if k.endswith(".recordings"))
    assert len(candidates[recordings]) >= 2, candidates
    gone, twice = candidates[recordings][:2]
    # One recording was never stored (every version removed); another was re-uploaded (two versions).
    for v in s3.list_object_versions(Bucket=bucket, Prefix=gone).get("Versions", []):
        s3.delete_object(Bucket=bucket, Key=gone, VersionId=v["VersionId"])
    s3.put_object(Bucket=bucket, Key=twice, Body=b"re-recorded")

    truth = {
        where: {key: _stored_versions(s3, bucket, key) for key in keys} for where, keys in candidates.items()
    }
    assert truth[recordings][gone] == 0 and truth[recordings][twice] == 2

    plan = run_erasure(conf_for(SUBJECT), "objects-present-b", dry_run=True, handle=first.handle).summary
    for where, versions in truth.items():
        assert plan["objects"][where] == sum(1 for n in versions.values() if n), where
        assert plan["object_versions"][where] == sum(versions.values()), where
        assert plan["objects_absent"].get(where, 0) == sum(1 for n in versions.values() if not n), where
    assert plan["objects"][recordings] == len(candidates[recordings]) - 1

    text = erasure_plan_text(plan, dry_run=True, datamap=load_datamap())
    assert "not stored (nothing to delete)" in text
    assert f"({sum(truth[recordings].values())} in all)" in text

    erased = run_erasure(conf_for(SUBJECT), "objects-present-c", handle=first.handle)
    assert erased.results["verify"]["passed"]
    for versions in truth.values():
        for key in versions:
            assert _stored_versions(s3, bucket, key) == 0, f"{key} still has a version"
    with psycopg.connect(shared_clone.app_url) as conn:
        row = conn.execute(
            "SELECT certificate FROM governance.erasure_certificates WHERE plan_id = %s", (erased.summary["plan_id"],)
        ).fetchone()
    assert row is not None
    listed = {o["prefix"]: o for o in row[0]["erased"]["objects"]}
    removed = listed[recordings]
    assert removed["present_when_planned"] == len(candidates[recordings]) - 1
    assert removed["versions_when_planned"] == sum(truth[recordings].values())
    assert removed["not_stored"] == 1
    assert removed["deleted_with_all_versions"] == removed["present_when_planned"]
