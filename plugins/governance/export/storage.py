"""Where bundles live and how bytes move to and from the object store, streamed.

* :class:`MultipartUploadSink`: a write-only stream that uploads what is written to it as an S3
  multipart upload with server-side encryption, one part at a time in a background thread (memory:
  at most two parts), hashing the bytes as they pass. Nothing is visible under the key until
  ``close()`` completes the upload; ``abort()`` (or an exception inside ``with``) leaves nothing.
* :func:`fetch_objects`: the person's objects in a fixed order, a few fetched ahead in parallel
  (small ones whole, large ones streamed), absent keys reported as such.
* :func:`bundle_locations`: the keys of a request's staged and published bundle, under the
  data map's privacy-request prefix (``exports/{request_id}/``).

Keys are never logged or returned to XCom: they embed request ids under the exports prefix, and
the published key is the bundle's location, which goes only to the request's ``result_uri``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from governance.datamap.model import ObjectStoreSystem
from governance.datamap.plans import render_key

PART_SIZE = 8 * 1024 * 1024
SSE = "AES256"
# Objects up to this size are fetched whole by the read-ahead threads; larger ones are streamed.
WHOLE_OBJECT_LIMIT = 4 * 1024 * 1024
READ_AHEAD = 8
STREAM_CHUNK = 1024 * 1024


class ExportStorageError(RuntimeError):
    """The object store refused a bundle operation (the message names no key)."""


@dataclass(frozen=True)
class BundleLocations:
    """Bucket and keys of one request's bundle (never logged: see the module docstring)."""

    system: str
    connection_id: str
    bucket: str
    folder: str
    dataset_prefix: str  # the prefix lineage names (the data map's static prefix, e.g. "exports")

    @property
    def published_key(self) -> str:
        request_id = self.folder.rstrip("/").rsplit("/", 1)[-1]
        return f"{self.folder}aircalls-export-{request_id}.zip.age"

    @property
    def staging_folder(self) -> str:
        return f"{self.folder}staging/"

    def staging_key(self, run_id: str) -> str:
        # The run id may hold characters keys should not (':', '+'); its hash is stable per run.
        return f"{self.staging_folder}{hashlib.sha256(run_id.encode()).hexdigest()[:20]}.zip.age"

    def download_name(self) -> str:
        return self.published_key.rsplit("/", 1)[-1]


def presigned_download_link(s3: Any, locations: BundleLocations, *, days: int) -> str:
    """A presigned GET of the published bundle, valid ``days`` days, saved under its own name."""
    return str(
        s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": locations.bucket,
                "Key": locations.published_key,
                "ResponseContentDisposition": f'attachment; filename="{locations.download_name()}"',
            },
            ExpiresIn=int(timedelta(days=days).total_seconds()),
        )
    )


def bundle_locations(datamap: Any, request_id: str) -> BundleLocations:
    """Where ``request_id``'s bundle goes: the map's ``owned_by: privacy_request`` prefix."""

    for system in datamap.object_systems:
        assert isinstance(system, ObjectStoreSystem)
        for prefix in system.prefixes:
            if prefix.owned_by == "privacy_request":
                folder = render_key(prefix.key_template, {"request_id": request_id})
                if not folder.endswith("/"):
                    raise ExportStorageError(
                        f"{system.name}.{prefix.name}: an export prefix's key_template must name a folder "
                        "ending in '/' (e.g. exports/{request_id}/)"
                    )
                return BundleLocations(
                    system=system.name,
                    connection_id=system.connection_id,
                    bucket=system.bucket.resolve(),
                    folder=folder,
                    dataset_prefix=prefix.static_prefix.rstrip("/") or prefix.name,
                )
    raise ExportStorageError(
        "the data map declares no object prefix with owned_by: privacy_request for export bundles"
    )


class MultipartUploadSink:
    """Upload everything written to ``bucket/key`` (multipart, SSE), hashing it on the way.

    ``sha256`` and ``size`` describe the uploaded bytes once closed. Use as a context manager: an
    exception aborts the upload, so a failed export never leaves a partial object.
    """

    def __init__(self, s3: Any, bucket: str, key: str, *, part_size: int = PART_SIZE, sse: str = SSE) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts (but the last) must be at least 5 MiB")
        self._s3 = s3
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self.size = 0
        self._parts: list[dict[str, Any]] = []
        self._pending: Future[dict[str, Any]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle-upload")
        try:
            created = s3.create_multipart_upload(
                Bucket=bucket, Key=key, ServerSideEncryption=sse, ContentType="application/octet-stream"
            )
        except Exception as exc:
            self._pool.shutdown(wait=False)
            raise ExportStorageError(f"could not start the bundle upload ({type(exc).__name__})") from exc
        self._upload_id = created["UploadId"]
        self._done = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        answer = self._s3.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _ship(self, body: bytes) -> None:
        if self._pending is not None:  # at most one part in flight: memory stays at two parts
            self._parts.append(self._pending.result())
            self._pending = None
        self._pending = self._pool.submit(self._upload_part, len(self._parts) + 1, body)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("write to a closed upload")
        self._hash.update(data)
        self.size += len(data)
        self._buffer += data
        if len(self._buffer) >= self._part_size:
            body = bytes(self._buffer)
            self._buffer = bytearray()
            self._ship(body)
        return len(data)

    def flush(self) -> None:
        """Parts are shipped as they fill."""

    def close(self) -> None:
        """Upload the last part and complete the upload: only now does the object exist."""
        if self._done:
            return
        try:
            if self._buffer or not self._parts and self._pending is None:
                self._ship(bytes(self._buffer))
                self._buffer = bytearray()
            if self._pending is not None:
                self._parts.append(self._pending.result())
                self._pending = None
            self._s3.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        except Exception as exc:
            self.abort()
            raise ExportStorageError(f"the bundle upload failed ({type(exc).__name__})") from exc
        self._done = True
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Give up: the parts uploaded so far are discarded (idempotent)."""
        if self._done:
            return
        self._done = True
        if self._pending is not None:
            try:
                self._pending.result()
            except Exception:  # the abort below discards it either way
                pass
        self._pool.shutdown(wait=True)
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception:  # best effort: a lifecycle rule also expires incomplete uploads
            pass

    def __enter__(self) -> MultipartUploadSink:
        return self

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FetchedObject:
    """One object's bytes: held whole when small, else streamed from the response body."""

    def __init__(self, key: str, size: int, data: bytes | None, body: Any | None) -> None:
        self.key = key
        self.size = size
        self._data = data
        self._body = body

    def chunks(self, size: int = STREAM_CHUNK) -> Iterator[bytes]:
        if self._data is not None:
            view = memoryview(self._data)
            for start in range(0, len(view), size):
                yield bytes(view[start : start + size])
            return
        assert self._body is not None
        try:
            while chunk := self._body.read(size):
                yield chunk
        finally:
            self._body.close()

    def discard(self) -> None:
        if self._body is not None:
            self._body.close()


def _is_absent(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _fetch(s3: Any, bucket: str, key: str) -> FetchedObject | None:
    from botocore.exceptions import ClientError

    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _is_absent(exc):
            return None
        raise
    size = int(answer["ContentLength"])
    body = answer["Body"]
    if size <= WHOLE_OBJECT_LIMIT:
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != size:
            raise ExportStorageError("an object was shorter than its announced length")
        return FetchedObject(key, size, data, None)
    return FetchedObject(key, size, None, body)


def fetch_objects(
    s3: Any, bucket: str, keys: Iterable[str], *, read_ahead: int = READ_AHEAD
) -> Iterator[tuple[str, FetchedObject | None]]:
    """``(key, object or None when absent)`` in the order of ``keys``, ``read_ahead`` fetched in
    parallel. Memory: at most ``read_ahead`` small objects (<= 4 MiB each) at a time."""
    pool = ThreadPoolExecutor(max_workers=max(1, read_ahead), thread_name_prefix="bundle-fetch")
    window: deque[tuple[str, Future[FetchedObject | None]]] = deque()
    keys_iter = iter(keys)
    try:
        for key in keys_iter:
            window.append((key, pool.submit(_fetch, s3, bucket, key)))
            if len(window) >= read_ahead:
                break
        while window:
            key, future = window.popleft()
            next_key = next(keys_iter, None)
            if next_key is not None:
                window.append((next_key, pool.submit(_fetch, s3, bucket, next_key)))
            yield key, future.result()
    finally:
        for _key, future in window:
            if not future.cancel():
                try:
                    fetched = future.result()
                    if fetched is not None:
                        fetched.discard()
                except Exception:  # the caller is already failing or done
                    pass
        pool.shutdown(wait=True)

