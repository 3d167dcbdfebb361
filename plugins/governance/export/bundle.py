"""The export bundle as a ZIP: entries streamed in, each hashed, laid out deterministically.

A bundle is one ZIP per request::

    index.html                                   what is here, in plain words (always)
    manifest.json                                every file with SHA-256 and size, counts (always)
    data/{system}/{table}.{json|csv|html}        rows of each table, in the chosen formats
    files/{system}/{object key}                  recordings, transcripts: the objects as stored
    processors/{processor}/{record}/{call}.json  what each processor returned for the person

Determinism (a re-run over unchanged data gives the same bytes for every entry): entries are
written in a fixed order with the same timestamp (1980-01-01) and permissions, JSON with a fixed
key order, and nothing in an entry depends on when it was written. The generation time appears
only in ``manifest.json``, whose per-file hashes and ``files_digest`` therefore match between runs.

Memory stays flat however many entries a bundle has: :class:`StreamingZip` writes each entry
once (local header, data, data descriptor: the output is never sought) and spools its
central-directory record to a temporary file, and :class:`BundleWriter` spools each entry's
manifest line the same way. ZIP64 records are written when sizes, offsets or the entry count
need them, so archives of any size open with standard tools.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from governance.export.spool import SealedSpool

BUNDLE_FORMAT = "aircalls-export/1"
INDEX_PATH = "index.html"
MANIFEST_PATH = "manifest.json"
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
_SPOOL_IN_MEMORY = 256 * 1024

FileKind = Literal["data", "object", "processor", "index"]


class UnsafeBundlePath(ValueError):
    """A name that would not stay inside the bundle folder when unzipped."""


def safe_path(*segments: str) -> str:
    """Join segments into an entry path; each may itself contain '/' (object keys) but no '..',
    no absolute or empty part and no unusual characters (unzipping must stay in its folder)."""
    parts: list[str] = []
    for segment in segments:
        for part in str(segment).split("/"):
            if not _SAFE_SEGMENT.match(part) or part in (".", ".."):
                raise UnsafeBundlePath("a bundle path segment is empty, relative or has unusual characters")
            parts.append(part)
    return "/".join(parts)


def safe_segment(value: str) -> str:
    """``value`` if it is a safe single path segment, else a stable hash of it."""
    text = str(value)
    if _SAFE_SEGMENT.match(text) and text not in (".", ".."):
        return text
    return "id-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# A streaming ZIP writer


class BinarySink(Protocol):
    def write(self, data: bytes, /) -> Any: ...


ZIP64_LIMIT = (1 << 31) - 1  # as Python's zipfile: beyond this, ZIP64 fields
ZIP_FILECOUNT_LIMIT = (1 << 16) - 1
_DOS_DATE = (FIXED_DATE_TIME[0] - 1980) << 9 | FIXED_DATE_TIME[1] << 5 | FIXED_DATE_TIME[2]
_DOS_TIME = FIXED_DATE_TIME[3] << 11 | FIXED_DATE_TIME[4] << 5 | FIXED_DATE_TIME[5] // 2
_FLAG_DATA_DESCRIPTOR = 0x08
_FLAG_UTF8 = 0x800
_STORED, _DEFLATED = 0, 8
_VERSION, _VERSION_ZIP64 = 20, 45
_MADE_BY_UNIX = 3 << 8
_FILE_MODE = 0o100644 << 16


class _ZipEntry:
    """One entry being written: compresses, counts and checksums as bytes arrive."""

    def __init__(self, emit: Callable[[bytes], Any], compress: bool) -> None:
        self._emit = emit
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15) if compress else None
        self.crc = 0
        self.size = 0
        self.compressed = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if not data:
            return 0
        self._hash.update(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        out = self._deflate.compress(data) if self._deflate is not None else bytes(data)
        if out:
            self.compressed += len(out)
            self._emit(out)
        return len(data)

    def flush(self) -> None:
        pass

    def _finish(self) -> None:
        if self._deflate is not None:
            tail = self._deflate.flush()
            self.compressed += len(tail)
            self._emit(tail)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


@dataclass
class DeferredEntry:
    """An entry written aside (see :meth:`StreamingZip.deferred_entry`)."""

    entry: _ZipEntry
    spool: SealedSpool
    compress: bool

    def close(self) -> None:
        self.spool.close()


class StreamingZip:
    """A ZIP written front to back into ``sink``; central directory spooled until ``close()``."""

    def __init__(self, sink: BinarySink) -> None:
        self._sink = sink
        self._offset = 0
        self._count = 0
        self._central = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        self._open = False
        self._closed = False

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self._offset += len(data)

    @contextmanager
    def entry(self, name: str, *, compress: bool, zip64: bool = False) -> Iterator[_ZipEntry]:
        """Write one entry; ``zip64`` when it may exceed 2 GiB (its size is not known ahead)."""
        if self._open or self._closed:
            raise ValueError("one entry at a time, before close()")
        self._open = True
        encoded = name.encode("utf-8")
        flags, method, header_offset = self._local_header(encoded, compress=compress, zip64=zip64)
        entry = _ZipEntry(self._emit, compress)
        try:
            yield entry
        finally:
            self._open = False
        entry._finish()
        if not zip64 and (entry.size > ZIP64_LIMIT or entry.compressed > ZIP64_LIMIT):
            raise ValueError(f"entry {name} is larger than 2 GiB: write it with zip64=True")
        self._end_entry(encoded, flags, method, entry, header_offset, zip64)

    def _local_header(self, encoded: bytes, *, compress: bool, zip64: bool) -> tuple[int, int, int]:
        flags = _FLAG_DATA_DESCRIPTOR | (0 if encoded.isascii() else _FLAG_UTF8)
        method = _DEFLATED if compress else _STORED
        version = _VERSION_ZIP64 if zip64 else _VERSION
        header_offset = self._offset
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        sizes = 0xFFFFFFFF if zip64 else 0
        self._emit(struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", version, flags, method, _DOS_TIME, _DOS_DATE,
                               0, sizes, sizes, len(encoded), len(extra)) + encoded + extra)  # fmt: skip
        return flags, method, header_offset

    def _end_entry(self, encoded: bytes, flags: int, method: int, entry: _ZipEntry, header_offset: int, zip64: bool) -> None:
        size_format = "<4sLQQ" if zip64 else "<4sLLL"
        self._emit(struct.pack(size_format, b"PK\x07\x08", entry.crc, entry.compressed, entry.size))
        self._central_record(encoded, flags, method, entry, header_offset, zip64)

    def deferred_entry(self, *, compress: bool) -> DeferredEntry:
        """An entry written now, while another entry may be open, and placed in the archive later
        (:meth:`add_deferred`); its (compressed) bytes wait in a :class:`SealedSpool`."""
        spool = SealedSpool()
        return DeferredEntry(_ZipEntry(spool.write, compress), spool, compress)

    def add_deferred(self, name: str, deferred: DeferredEntry) -> None:
        """Place ``deferred`` in the archive as ``name``: the same bytes :meth:`entry` would have
        written for the same content (ZIP64 fields only when its sizes need them)."""
        if self._open or self._closed:
            raise ValueError("one entry at a time, before close()")
        entry = deferred.entry
        entry._finish()
        zip64 = entry.size > ZIP64_LIMIT or entry.compressed > ZIP64_LIMIT
        encoded = name.encode("utf-8")
        flags, method, header_offset = self._local_header(encoded, compress=deferred.compress, zip64=zip64)
        for chunk in deferred.spool.chunks():
            self._emit(chunk)
        self._end_entry(encoded, flags, method, entry, header_offset, zip64)

    def _central_record(self, name: bytes, flags: int, method: int, entry: _ZipEntry, offset: int, zip64: bool) -> None:
        extra_values = []
        size, compressed, local = entry.size, entry.compressed, offset
        if zip64 or size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
            extra_values += [size, compressed]
            size = compressed = 0xFFFFFFFF
        if offset > ZIP64_LIMIT:
            extra_values.append(offset)
            local = 0xFFFFFFFF
        extra = struct.pack("<HH" + "Q" * len(extra_values), 1, 8 * len(extra_values), *extra_values) if extra_values else b""
        version = _VERSION_ZIP64 if extra_values or zip64 else _VERSION
        self._central.write(
            struct.pack("<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02", _MADE_BY_UNIX | version, version, flags, method,
                        _DOS_TIME, _DOS_DATE, entry.crc, compressed, size, len(name), len(extra), 0, 0, 0,
                        _FILE_MODE, local) + name + extra  # fmt: skip
        )
        self._count += 1

    def close(self) -> None:
        """Write the central directory and the end records (the sink stays open)."""
        if self._closed:
            return
        self._closed = True
        start = self._offset
        self._central.seek(0)
        while chunk := self._central.read(1 << 20):
            self._emit(chunk)
        self._central.close()
        size = self._offset - start
        count = self._count
        if count > ZIP_FILECOUNT_LIMIT or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
            end64 = self._offset
            self._emit(struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, _MADE_BY_UNIX | _VERSION_ZIP64, _VERSION_ZIP64,
                                   0, 0, count, count, size, start))  # fmt: skip
            self._emit(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
            count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
        self._emit(struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, count, count, size, start, 0))


# --------------------------------------------------------------------------------------------
# The bundle


@dataclass(frozen=True)
class BundleFile:
    """One entry of the bundle as the manifest lists it."""

    path: str
    sha256: str
    bytes: int
    kind: FileKind
    dataset: str | None = None
    format: str | None = None


def _digest_line(path: str, sha256: str, size: int) -> bytes:
    return (json.dumps([path, sha256, size], separators=(",", ":")) + "\n").encode()


def files_digest(files: Sequence[BundleFile | Mapping[str, Any]]) -> str:
    """SHA-256 over every file's path, hash and size, in the manifest's order (the order the
    entries were written): equal for equal bundle contents."""
    digest = hashlib.sha256()
    for f in files:
        if isinstance(f, Mapping):
            digest.update(_digest_line(f["path"], f["sha256"], int(f["bytes"])))
        else:
            digest.update(_digest_line(f.path, f.sha256, f.bytes))
    return digest.hexdigest()


class BundleWriter:
    """Writes bundle entries into ``sink`` (a write-only stream), recording each entry's hash.

    Per-entry records are spooled to a temporary file, so memory does not grow with the number
    of entries; ``files()`` reads them back in write order.
    """

    def __init__(self, sink: BinarySink) -> None:
        self._zip = StreamingZip(sink)
        self._records = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, mode="w+b")
        self._digest = hashlib.sha256()
        self.count = 0

    @contextmanager
    def entry(self, path: str, *, kind: FileKind, dataset: str | None = None, fmt: str | None = None,
              compress: bool = True, size_hint: int | None = None) -> Iterator[_ZipEntry]:  # fmt: skip
        """Open one entry for streaming writes; it is recorded when the block ends. Entries of
        unknown size (``size_hint`` None) may grow to 2 GiB; larger ones need a hint."""
        zip64 = size_hint is not None and size_hint > ZIP64_LIMIT
        with self._zip.entry(path, compress=compress, zip64=zip64) as out:
            yield out
        self._record(BundleFile(path, out.sha256, out.size, kind, dataset, fmt))

    @contextmanager
    def entries(self, paths: Sequence[str], *, kind: FileKind, dataset: str | None = None,
                formats: Sequence[str | None] = (), compress: bool = True) -> Iterator[list[_ZipEntry]]:  # fmt: skip
        """Open several entries written side by side from one pass over their source (a table's
        rows in every chosen format); ``formats`` gives each one's format. The first streams
        straight into the bundle, the others into sealed spools (only ciphertext on disk) placed
        right after it, in order, when the block ends: the bundle is the same as when each entry
        is written on its own with :meth:`entry`."""
        if not paths:
            raise ValueError("entries() needs at least one path")
        fmts = list(formats) or [None] * len(paths)
        if len(fmts) != len(paths):
            raise ValueError("give one format per path")
        deferred = [self._zip.deferred_entry(compress=compress) for _ in paths[1:]]
        try:
            with self.entry(paths[0], kind=kind, dataset=dataset, fmt=fmts[0], compress=compress) as first:
                yield [first, *(d.entry for d in deferred)]
            for path, fmt, aside in zip(paths[1:], fmts[1:], deferred, strict=True):
                self._zip.add_deferred(path, aside)
                self._record(BundleFile(path, aside.entry.sha256, aside.entry.size, kind, dataset, fmt))
        finally:
            for aside in deferred:
                aside.close()

    def _record(self, record: BundleFile) -> None:
        self._records.write((json.dumps(asdict(record), sort_keys=True) + "\n").encode())
        self._digest.update(_digest_line(record.path, record.sha256, record.bytes))
        self.count += 1

    def add_bytes(self, path: str, data: bytes, *, kind: FileKind, dataset: str | None = None,
                  fmt: str | None = None, compress: bool = True) -> None:  # fmt: skip
        with self.entry(path, kind=kind, dataset=dataset, fmt=fmt, compress=compress) as out:
            out.write(data)

    @property
    def files_digest(self) -> str:
        """:func:`files_digest` of the entries written so far."""
        return self._digest.hexdigest()

    def file_lines(self) -> Iterator[bytes]:
        """Each entry's manifest record (a JSON object, one per line), in write order."""
        self._records.seek(0)
        for line in self._records:
            yield line.rstrip(b"\n")
        self._records.seek(0, 2)

    def files(self) -> list[BundleFile]:
        """The entries written so far (reads the spool: for small bundles and tests)."""
        return [BundleFile(**json.loads(line)) for line in self.file_lines()]

    def add_manifest(self, manifest: BundleManifest) -> None:
        """Write ``manifest.json`` (its file list streamed from the spool) as the last entry."""
        with self._zip.entry(MANIFEST_PATH, compress=True) as out:
            for chunk in manifest.json_chunks(self.file_lines()):
                out.write(chunk)

    def close(self) -> None:
        """Write the central directory (the sink stays open)."""
        self._zip.close()
        self._records.close()


@dataclass
class BundleManifest:
    """``manifest.json``: everything needed to check the bundle, and nothing personal.

    ``generated_at`` is the only field that changes when an unchanged bundle is generated again.
    ``files`` lists every entry but the manifest itself, in the order they were written.
    """

    request_id: str
    generated_at: str
    received_on: str
    data_map_version: str
    data_map_sha256: str
    business_scope: list[int] | None
    formats: list[str]
    files: list[dict[str, Any]]
    tables: dict[str, dict[str, Any]]
    objects: dict[str, dict[str, Any]]
    processors: dict[str, dict[str, Any]]
    mentions: dict[str, int]
    categories: list[str]
    found_data: bool
    files_digest: str = ""
    bundle_format: str = BUNDLE_FORMAT
    notes: list[str] = field(default_factory=list)
    # Per system searched: {"kind", "tables" or "prefixes", "rows" or "objects"} (counts only).
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per DynamoDB table: {"items", "files", "categories"} (counts only).
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def json_chunks(self, file_lines: Iterator[bytes] | None = None) -> Iterator[bytes]:
        """The manifest as JSON (keys sorted, one file per line), the file list streamed from
        ``file_lines`` (JSON objects) or taken from ``files``."""
        data = asdict(self)
        data.pop("files")
        lines = file_lines if file_lines is not None else (
            json.dumps(f, sort_keys=True).encode() for f in self.files
        )  # fmt: skip
        yield b"{"
        keys = sorted([*data, "files"])
        for i, key in enumerate(keys):
            yield b"\n" + json.dumps(key).encode() + b": "
            if key == "files":
                yield b"["
                for n, line in enumerate(lines):
                    yield (b"\n  " if n == 0 else b",\n  ") + line
                yield b"\n]"
            else:
                yield json.dumps(data[key], sort_keys=True, ensure_ascii=False).encode()
            if i < len(keys) - 1:
                yield b","
        yield b"\n}\n"

    def to_json(self) -> bytes:
        return b"".join(self.json_chunks())

    @classmethod
    def from_json(cls, raw: bytes) -> BundleManifest:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("bundle_format") != BUNDLE_FORMAT:
            raise ValueError("not a manifest of this bundle format")
        return cls(**data)

    def table_rows(self) -> dict[str, int]:
        return {name: int(info["rows"]) for name, info in self.tables.items()}
