"""The bundle's pure parts: data files in three formats read back to the same rows, a ZIP that is
byte-identical when written twice, entry paths that cannot leave the folder when unzipped, the
manifest's digest, the plain-words index, passphrases and the workflow's form helpers."""

from __future__ import annotations

import io
import json
import re
import zipfile
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from governance.datamap import load_datamap
from governance.datamap.model import TableRef
from governance.export.bundle import (
    BundleManifest,
    BundleWriter,
    UnsafeBundlePath,
    files_digest,
    safe_path,
    safe_segment,
)
from governance.export.formats import FORMATS, plain_value, read_rows, write_rows
from governance.export.index import BundleContents, TableExport, render_index, retention_words
from governance.export.state import PASSPHRASE_ALPHABET, new_passphrase
from governance.workflows import dsr_export as workflow

COLUMNS = ["id", "name", "note", "at", "amount", "raw", "doc", "flag"]
ROWS = [
    (1, "María López", 'quote " comma , and\nnewline', datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), Decimal("12.50"),
     b"\x00\xff", {"b": 1, "a": [1, None]}, True),
    (2, None, "", None, None, None, None, False),
]  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_the_same_rows(fmt: str) -> None:
    out = io.BytesIO()
    assert write_rows(fmt, out, COLUMNS, [(COLUMNS, ROWS[:1]), (COLUMNS, ROWS[1:])]) == 2  # type: ignore[arg-type]
    out.seek(0)
    back = list(read_rows(fmt, out))  # type: ignore[arg-type]
    assert [r["id"] for r in back] in ([1, 2], ["1", "2"])
    first = back[0]
    assert first["name"] == "María López"
    assert first["note"] == 'quote " comma , and\nnewline'
    assert str(first["at"]) == "2026-01-02T03:04:05+00:00"
    assert back[1]["name"] is None


def test_values_render_the_same_way_every_time() -> None:
    assert plain_value(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00+00:00"
    assert plain_value(date(2026, 1, 2)) == "2026-01-02"
    assert plain_value(Decimal("1.10")) == "1.10"
    assert plain_value(b"\x01") == "AQ=="


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    sink = io.BytesIO()

    class Unseekable:
        def write(self, data: bytes) -> int:
            return sink.write(data)

        def flush(self) -> None:
            pass

    writer = BundleWriter(Unseekable())
    for path, data in entries:
        writer.add_bytes(path, data, kind="data", compress=path.endswith(".json"))
    writer.close()
    return sink.getvalue()


def test_the_same_entries_give_byte_identical_zips_with_fixed_timestamps() -> None:
    entries = [("data/a/t.json", b'[\n{"id": 1}\n]\n'), ("files/s/recordings/1/2.wav", bytes(range(256)) * 40)]
    first, second = _zip(entries), _zip(entries)
    assert first == second
    archive = zipfile.ZipFile(io.BytesIO(first))
    assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert archive.read("files/s/recordings/1/2.wav") == entries[1][1]


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs", "a//b", "a/./b", "a/../b", "x\\y", ""])
def test_entry_paths_cannot_leave_the_bundle_folder(bad: str) -> None:
    with pytest.raises(UnsafeBundlePath):
        safe_path("files", bad)
    assert re.match(r"^(id-[0-9a-f]{16}|[A-Za-z0-9][A-Za-z0-9._\-]*)$", safe_segment(bad))


def test_the_manifest_streams_its_file_list_and_its_digest_follows_the_written_entries() -> None:
    files = [{"path": "b", "sha256": "2", "bytes": 2}, {"path": "a", "sha256": "1", "bytes": 1}]
    assert files_digest(files) == files_digest([dict(f) for f in files])
    assert files_digest(files) != files_digest(list(reversed(files))), "the manifest's order is the write order"
    manifest = BundleManifest(
        request_id="exp-20260115-00000000000a", generated_at="2026-01-15T00:00:00+00:00", received_on="2026-01-15",
        data_map_version="v", data_map_sha256="s", business_scope=None, formats=["json"], files=files, tables={},
        objects={}, processors={}, mentions={}, categories=[], found_data=False, files_digest=files_digest(files),
    )  # fmt: skip
    streamed = b"".join(manifest.json_chunks(json.dumps(f, sort_keys=True).encode() for f in files))
    assert streamed == manifest.to_json()
    assert BundleManifest.from_json(streamed) == manifest
    assert list(json.loads(streamed)) == sorted(json.loads(streamed)), "keys in a fixed (sorted) order"

    sink = io.BytesIO()
    writer = BundleWriter(sink)
    writer.add_bytes("data/a/t.json", b"[]\n", kind="data")
    writer.add_bytes("index.html", b"<html></html>", kind="index")
    manifest.files, manifest.files_digest = [], writer.files_digest
    writer.add_manifest(manifest)
    writer.close()
    written = BundleManifest.from_json(zipfile.ZipFile(io.BytesIO(sink.getvalue())).read("manifest.json"))
    assert [f["path"] for f in written.files] == ["data/a/t.json", "index.html"]
    assert files_digest(written.files) == written.files_digest


def test_zip64_records_open_with_standard_tools(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits lowered so a small archive needs every ZIP64 record a multi-gigabyte bundle would:
    64-bit sizes and offsets in the central directory, and the ZIP64 end records."""
    import shutil
    import subprocess

    import governance.export.bundle as bundle

    monkeypatch.setattr(bundle, "ZIP64_LIMIT", 200)
    monkeypatch.setattr(bundle, "ZIP_FILECOUNT_LIMIT", 10)
    path = tmp_path / "zip64.zip"
    with path.open("wb") as sink:
        writer = BundleWriter(sink)
        for n in range(12):
            writer.add_bytes(f"files/s/{n}.txt", b"x" * 50, kind="object", compress=n % 2 == 0)
        with writer.entry("files/s/big.bin", kind="object", size_hint=5 * 1024**3, compress=False) as out:
            out.write(b"y" * 1000)
        writer.close()
    archive = zipfile.ZipFile(path)
    assert len(archive.namelist()) == 13 and archive.testzip() is None
    assert archive.read("files/s/11.txt") == b"x" * 50 and archive.read("files/s/big.bin") == b"y" * 1000
    assert archive.getinfo("files/s/11.txt").header_offset > 200, "offsets beyond the limit were read back"
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tqq", str(path)], capture_output=True, check=False).returncode == 0


def test_the_index_explains_an_empty_bundle_and_carries_no_values() -> None:
    datamap = load_datamap()
    contents = BundleContents(
        request_id="exp-20260115-00000000000a", received_on=date(2026, 1, 15), business_scope=None,
        identity_kinds=("email",), formats=("json",),
        tables=[TableExport(TableRef("aircalls_app", "users"), 0, ())],
    )  # fmt: skip
    page = render_index(datamap, contents).decode()
    assert "found no data about you" in page and "exp-20260115-00000000000a" in page
    assert "@" not in page.replace("privacy@aircalls.ai", "")
    rule = next(r for r in datamap.retention if r.name == "calls_2_years")
    assert retention_words(rule).startswith("Deleted 2 years after the \u201cstarted at\u201d date.")


def test_passphrases_are_long_random_and_easy_to_read_aloud() -> None:
    phrases = {new_passphrase() for _ in range(50)}
    assert len(phrases) == 50
    for phrase in phrases:
        assert re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){5}", phrase)
        assert not set(phrase.replace("-", "")) - set(PASSPHRASE_ALPHABET)
        assert not set("ILOU") & set(phrase)


def test_form_helpers_refuse_what_cannot_be_served() -> None:
    assert workflow.parse_formats(None) == ["json", "csv"]
    assert workflow.parse_formats(["html", "json"]) == ["json", "html"]
    with pytest.raises(workflow.ExportRefused, match="pdf"):
        workflow.parse_formats(["pdf"])
    assert workflow.parse_link_days(None) == 7
    for bad in (0, 8, "x"):
        with pytest.raises(workflow.ExportRefused):
            workflow.parse_link_days(bad)
    assert workflow.verification_route({"verified": True}) == "record_verification"
    assert workflow.verification_route({"verified": False}) == "verify_identity"
    assert workflow.failed_step({"build_bundle": "upstream_failed", "check_bundle": "failed"}) == "check_bundle"
    assert workflow.is_rejection({"chosen_options": [workflow.REJECT_OPTION]})
    assert not workflow.is_rejection(None)
