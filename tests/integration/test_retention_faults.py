"""Faults in a retention sweep, on a copy of the reference deployment, through the function each
mapped ``sweep_target`` task runs (no DAG run needed: the fault is inside one target):

* a run killed in the middle of a rule (between deleting a batch's objects and deleting its rows)
  is retried: the rule finishes, every expired call and every version of its objects is gone, and
  the two tries together count each row and each object once;
* one object the store refuses to delete (under an S3 Object Lock legal hold) is retried, then
  reported: the run fails naming the count, every other expired call and object is gone, and the
  call naming the refused object keeps its row, so a later run deletes both.

Ground truth is hand-written SQL and boto3 listings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from governance.config import INCLUDE_DIR
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=50), pytest.mark.integration]

RULE = "calls_2_years"
TARGET = {"system": "aircalls_app", "kind": "table", "name": "calls", "rules": [RULE], "orphans": False, "wave": 0}
EXPIRED = 150  # calls past the cutoff: as_of is set so that only the oldest this many are
AS_OF = datetime(2026, 11, 28, tzinfo=UTC)  # replaced per clone by the day that expires EXPIRED calls


class Killed(BaseException):
    """Stands for the worker being killed: not an Exception, so nothing in the sweep handles it."""


def expired_calls(url: str) -> dict[int, int]:
    """``{call id: business id}`` of calls older than two years."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, business_id FROM app.calls WHERE started_at < %s - interval '2 years'", (AS_OF,))
        return dict(rows.fetchall())


def young_calls(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, md5(t::text) FROM app.calls t WHERE started_at >= %s - interval '2 years'", (AS_OF,))
        return dict(rows.fetchall())


def object_versions(s3: Any, bucket: str, keys: set[str]) -> dict[str, list[str]]:
    """Every version and delete marker of each of ``keys`` that has any."""
    found: dict[str, list[str]] = {}
    for folder in {k.rsplit("/", 1)[0] + "/" for k in keys}:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=folder):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry["Key"] in keys:
                    found.setdefault(entry["Key"], []).append(entry["VersionId"])
    return found


def call_object_keys(calls: dict[int, int]) -> set[str]:
    return {f"recordings/{b}/{c}.wav" for c, b in calls.items()} | {f"transcripts/{b}/{c}.json" for c, b in calls.items()}


def record(url: str, run_id: str) -> tuple[str, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status, rows_affected, objects_affected FROM governance.retention_runs"
                           " WHERE run_id = %s AND rule = %s", (run_id, RULE)).fetchone()  # fmt: skip
    assert row is not None
    return row[0], row[1], row[2]


@pytest.fixture
def clone(reference_clone: Deployment) -> Iterator[Deployment]:
    """The copy, with ``AS_OF`` set so that the oldest ``EXPIRED`` calls are past two years (few
    batches, few objects: the faults are what is tested, not the volume)."""
    global AS_OF
    from governance.migrations import migrate

    migrate(reference_clone.app_url)
    with psycopg.connect(reference_clone.app_url) as conn:
        row = conn.execute("SELECT started_at + interval '2 years' FROM app.calls ORDER BY started_at, id OFFSET %s LIMIT 1",
                           (EXPIRED,)).fetchone()  # fmt: skip
    assert row is not None
    AS_OF = row[0]
    yield reference_clone


def options() -> dict[str, Any]:
    return {"dry_run": False, "as_of": AS_OF.isoformat(), "rules": [RULE], "orphan_grace_days": 7}


def test_a_run_killed_mid_rule_is_retried_to_the_end_and_counts_each_row_and_object_once(
    clone: Deployment, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from governance.retention import engine
    from governance.workflows.retention_sweep import sweep_one_target

    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    data["settings"]["retention_batch_size"] = 40  # several batches
    small = tmp_path / "datamap.yaml"
    small.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(small))
    url = clone.app_url
    expired, young = expired_calls(url), young_calls(url)
    objects = object_versions(s3, clone.bucket, call_object_keys(expired))
    assert len(expired) > 2 * 40 and objects

    # Killed on the third batch, after its objects went and before its rows did.
    real = engine._delete_objects
    calls = {"n": 0}

    def killed_on_third_batch(*args: Any, **kwargs: Any) -> set[str]:
        failed = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return failed

    monkeypatch.setattr(engine, "_delete_objects", killed_on_third_batch)
    with pytest.raises(Killed):
        sweep_one_target(TARGET, options(), run_id="killed-run")  # type: ignore[arg-type]
    status, rows_first, objects_first = record(url, "killed-run")
    left = expired_calls(url)
    assert status == "failed" and rows_first == 2 * 40 == len(expired) - len(left)
    assert objects_first > 0 and set(object_versions(s3, clone.bucket, call_object_keys(left))) < set(objects)

    # The task's retry (same run): the rule finishes, nothing is done twice.
    monkeypatch.setattr(engine, "_delete_objects", real)
    sweep_one_target(TARGET, options(), run_id="killed-run")  # type: ignore[arg-type]
    status, rows_second, objects_second = record(url, "killed-run")
    assert status == "done" and expired_calls(url) == {} and young_calls(url) == young
    assert object_versions(s3, clone.bucket, set(objects)) == {}
    assert rows_first + rows_second == len(expired)
    assert objects_first + objects_second == len(objects)
    # Again the same day: nothing left.
    sweep_one_target(TARGET, options(), run_id="same-day")  # type: ignore[arg-type]
    assert record(url, "same-day") == ("done", 0, 0)


def test_an_object_the_store_refuses_to_delete_is_retried_reported_and_keeps_its_row_for_the_next_run(
    clone: Deployment, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from governance.retention.engine import RetentionIncomplete
    from governance.workflows.retention_sweep import sweep_one_target

    url = clone.app_url
    expired = expired_calls(url)
    keys = call_object_keys(expired)
    # A bucket with S3 Object Lock, holding the same objects; one recording under a legal hold.
    locked = f"gt-locked-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    s3.put_bucket_versioning(Bucket=locked, VersioningConfiguration={"Status": "Enabled"})  # as S3 reports it
    existing = set(object_versions(s3, clone.bucket, keys))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3.copy_object(Bucket=locked, Key=k, CopySource={"Bucket": clone.bucket, "Key": k}), existing))
    refused = sorted(k for k in existing if k.startswith("recordings/"))[0]
    s3.put_object_legal_hold(Bucket=locked, Key=refused, LegalHold={"Status": "ON"})
    refused_call = int(refused.rsplit("/", 1)[1].split(".")[0])
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", locked)

    with pytest.raises(RetentionIncomplete, match=r"calls: 1 object\(s\) could not be deleted"):
        sweep_one_target(TARGET, options(), run_id="refused")  # type: ignore[arg-type]
    assert set(expired_calls(url)) == {refused_call}  # the rest went; the call naming the object stays
    assert set(object_versions(s3, locked, existing)) == {refused}  # every other object, every version

    # Once the store lets it go, the next run deletes the object and then its row.
    s3.put_object_legal_hold(Bucket=locked, Key=refused, LegalHold={"Status": "OFF"})
    sweep_one_target(TARGET, options(), run_id="after-release")  # type: ignore[arg-type]
    assert expired_calls(url) == {} and object_versions(s3, locked, existing) == {}
    assert record(url, "after-release")[1:] == (1, 1)
