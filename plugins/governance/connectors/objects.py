"""Objects on an S3 API: the person's objects, streamed reads, and deletes of every version.

Keys come from resolved rows (``DatabaseFootprint.object_keys``) and privacy-request prefixes;
nothing here lists a whole bucket. Deletes remove every version and delete marker of a key when
the bucket is versioned, so an erased recording cannot be restored from an old version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def head(client: Any, bucket: str, key: str) -> ObjectInfo | None:
    """Size and ETag of ``key``, or None when it does not exist."""
    try:
        meta = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return ObjectInfo(key, int(meta["ContentLength"]), str(meta.get("ETag", "")).strip('"'))


def existing(client: Any, bucket: str, keys: Iterable[str]) -> tuple[list[ObjectInfo], list[str]]:
    """Split ``keys`` into (objects that exist, keys that do not)."""
    found: list[ObjectInfo] = []
    missing: list[str] = []
    for key in keys:
        info = head(client, bucket, key)
        if info is None:
            missing.append(key)
        else:
            found.append(info)
    return found, missing


def keys_under(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every current key under ``prefix`` (a request's export folder, say)."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def is_versioned(client: Any, bucket: str) -> bool:
    return client.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")


@dataclass(frozen=True)
class PresentObjects:
    """What is really stored for some candidate keys and folders: ``objects`` keys holding data
    (at least one stored version), ``versions`` stored versions of them (delete markers are not
    data and are not counted), ``absent`` candidates with nothing stored."""

    objects: int
    versions: int
    absent: int


def _versions_by_key(client: Any, bucket: str, prefix: str, *, versioned: bool) -> dict[str, int]:
    """Stored versions per key under ``prefix`` (a key or a folder)."""
    counts: dict[str, int] = {}
    if not versioned:
        for key in keys_under(client, bucket, prefix):
            counts[key] = 1
        return counts
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Versions", []):
            counts[entry["Key"]] = counts.get(entry["Key"], 0) + 1
    return counts


def present_objects(client: Any, bucket: str, keys: Iterable[str] = (), folders: Iterable[str] = ()) -> PresentObjects:
    """List what is stored for candidate ``keys`` (each exactly) and ``folders`` (everything under
    each): the objects and versions actually present, and the candidates that have nothing.
    Lists by each key's own prefix, never the whole bucket."""
    versioned = is_versioned(client, bucket)
    objects = versions = absent = 0
    for key in sorted(set(keys)):
        stored = _versions_by_key(client, bucket, key, versioned=versioned).get(key, 0)  # Prefix matches longer keys too
        objects += bool(stored)
        versions += stored
        absent += not stored
    for folder in sorted(set(folders)):
        under = _versions_by_key(client, bucket, folder, versioned=versioned)
        objects += len(under)
        versions += sum(under.values())
        absent += not under
    return PresentObjects(objects, versions, absent)


def delete_everywhere(client: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete ``keys`` with every version and delete marker; return how many keys had anything.

    Idempotent: keys already gone count as nothing and raise nothing.
    """
    keys = sorted(set(keys))
    if not keys:
        return 0
    versioned = is_versioned(client, bucket)
    deleted_keys: set[str] = set()
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        targets: list[dict[str, str]] = []
        if versioned:
            for key in chunk:
                paginator = client.get_paginator("list_object_versions")
                for page in paginator.paginate(Bucket=bucket, Prefix=key):
                    for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                        if entry["Key"] == key:  # Prefix also matches longer keys
                            targets.append({"Key": key, "VersionId": entry["VersionId"]})
        else:
            targets = [{"Key": key} for key in chunk if head(client, bucket, key) is not None]
        for batch_start in range(0, len(targets), 1000):
            batch = targets[batch_start : batch_start + 1000]
            result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                codes = sorted({e.get("Code", "?") for e in result["Errors"]})
                raise RuntimeError(f"the object store refused {len(result['Errors'])} deletes ({', '.join(codes)})")
        deleted_keys.update(t["Key"] for t in targets)
    return len(deleted_keys)
