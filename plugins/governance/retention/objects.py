"""Objects for the retention sweep: which of a batch's keys exist (every version and delete
marker, listed concurrently), and their deletion. A dry run counts with the same listing, so it
reports what a real run deletes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from governance.connectors.objects import is_versioned

log = logging.getLogger(__name__)

_LIST_WORKERS = 8  # boto3 clients are thread-safe; listing versions is one request per key
_FOLDER_MIN_KEYS = 20  # a batch with this many keys in one folder lists the folder instead
_FOLDER_PAGES = 20  # ... unless the folder has more than this many pages of versions (1000 each)


@dataclass(frozen=True)
class ObjectVersions:
    """What exists of one key: ``targets`` for ``delete_objects`` (with version ids when the
    bucket is versioned)."""

    key: str
    targets: tuple[dict[str, str], ...]
    last_modified: datetime | None = None


class ObjectDeleteFailed(RuntimeError):
    """Some objects could not be deleted after the client's retries (names the count, not keys)."""


def _versions(client: Any, bucket: str, key: str, versioned: bool) -> ObjectVersions | None:
    if versioned:
        targets: list[dict[str, str]] = []
        latest: datetime | None = None
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry["Key"] == key:  # Prefix also matches longer keys
                    targets.append({"Key": key, "VersionId": entry["VersionId"]})
                    if entry.get("IsLatest"):
                        latest = entry.get("LastModified")
        return ObjectVersions(key, tuple(targets), latest) if targets else None
    try:
        meta = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return ObjectVersions(key, ({"Key": key},), meta.get("LastModified"))


def _folder(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def _versions_in_folder(client: Any, bucket: str, folder: str, wanted: set[str]) -> list[ObjectVersions] | None:
    """Versions of ``wanted`` keys by listing their folder once; None when the folder is larger
    than ``_FOLDER_PAGES`` pages (then each key is listed on its own)."""
    targets: dict[str, list[dict[str, str]]] = {}
    latest: dict[str, datetime | None] = {}
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=folder)
    for number, page in enumerate(pages):
        if number >= _FOLDER_PAGES:
            return None
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if entry["Key"] in wanted:
                targets.setdefault(entry["Key"], []).append({"Key": entry["Key"], "VersionId": entry["VersionId"]})
                if entry.get("IsLatest"):
                    latest[entry["Key"]] = entry.get("LastModified")
    return [ObjectVersions(k, tuple(v), latest.get(k)) for k, v in targets.items()]


def existing_versions(client: Any, bucket: str, keys: Iterable[str]) -> list[ObjectVersions]:
    """Every version and delete marker of each key that has any (keys with nothing are left out).

    Keys are listed one by one (concurrently); where a batch has many keys in one folder
    (``recordings/{business_id}/``), the folder is listed once instead, up to a bound."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    versioned = is_versioned(client, bucket)
    single: list[str] = []
    found: list[ObjectVersions | None] = []
    if versioned:
        folders: dict[str, set[str]] = {}
        for key in wanted:
            folders.setdefault(_folder(key), set()).add(key)
        for folder, members in folders.items():
            listed = _versions_in_folder(client, bucket, folder, members) if len(members) >= _FOLDER_MIN_KEYS else None
            if listed is None:
                single += sorted(members)
            else:
                found += listed
    else:
        single = wanted
    with ThreadPoolExecutor(max_workers=_LIST_WORKERS) as pool:
        found += list(pool.map(lambda k: _versions(client, bucket, k, versioned), single))
    return sorted((f for f in found if f is not None), key=lambda o: o.key)


def delete_versions(client: Any, bucket: str, objects: Iterable[ObjectVersions]) -> tuple[int, set[str]]:
    """Delete every listed version; return (keys deleted, the keys that failed). A failed key is
    retried once on its own before it counts as failed; the rest go on."""
    items = list(objects)
    targets = [t for o in items for t in o.targets]
    failed_keys: set[str] = set()
    for start in range(0, len(targets), 1000):
        batch = targets[start : start + 1000]
        result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        for error in result.get("Errors", []):
            # Retry exactly what was asked for that key: an error need not name the version, and a
            # delete without one only hides a versioned object behind a delete marker.
            version = error.get("VersionId")
            retry = [t for t in batch if t["Key"] == error["Key"] and (not version or t.get("VersionId") == version)]
            again = client.delete_objects(Bucket=bucket, Delete={"Objects": retry or [{"Key": error["Key"]}], "Quiet": True})
            if again.get("Errors"):
                failed_keys.add(error["Key"])
    if failed_keys:
        log.warning("%d object(s) could not be deleted; the run will fail at the end naming the count", len(failed_keys))
    return len({o.key for o in items} - failed_keys), failed_keys


def list_current(client: Any, bucket: str, prefix: str) -> Iterator[list[dict[str, Any]]]:
    """Pages of current objects under ``prefix`` (Key, LastModified), streamed."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        contents = page.get("Contents", [])
        if contents:
            yield contents
