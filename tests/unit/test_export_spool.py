"""The sealed spool that holds a table's other formats while the first streams into the bundle:
what reaches the disk is ciphertext, and what comes back is exactly what was written."""

from __future__ import annotations

import io
import os
import zipfile

from governance.export.bundle import BundleWriter
from governance.export.spool import SealedSpool


def test_a_spool_larger_than_its_memory_puts_only_ciphertext_on_disk_and_gives_back_every_byte() -> None:
    secret = b"maria.lopez@example.com,+14155550132\r\n"
    data = secret * 20_000 + os.urandom(1000)  # ~760 KiB, over the 64 KiB memory limit
    spool = SealedSpool(max_memory=64 * 1024)
    for start in range(0, len(data), 10_007):
        spool.write(data[start : start + 10_007])
    on_disk = spool._file._file  # rolled over to a real temporary file
    assert not isinstance(on_disk, io.BytesIO)
    back = b"".join(spool.chunks())
    on_disk.seek(0)
    stored = on_disk.read()
    spool.close()
    assert back == data
    assert len(stored) > len(data) and secret not in stored and b"maria" not in stored


def test_entries_written_side_by_side_make_the_same_bundle_as_entries_written_one_after_another() -> None:
    files = {"data/s/t.json": b'[\n{"id": 1}\n]\n' * 5000, "data/s/t.csv": b"id\r\n1\r\n" * 9000, "data/s/t.html": b""}

    def one_by_one() -> bytes:
        out = io.BytesIO()
        writer = BundleWriter(out)
        for path, content in files.items():
            with writer.entry(path, kind="data", dataset="s.t", fmt=path.rsplit(".", 1)[1]) as entry:
                entry.write(content)
        writer.close()
        return out.getvalue()

    def side_by_side() -> bytes:
        out = io.BytesIO()
        writer = BundleWriter(out)
        paths = list(files)
        with writer.entries(paths, kind="data", dataset="s.t", formats=[p.rsplit(".", 1)[1] for p in paths]) as entries:
            for start in range(0, 100_000, 4096):
                for path, entry in zip(paths, entries, strict=True):
                    entry.write(files[path][start : start + 4096])
        writer.close()
        return out.getvalue()

    bundle = side_by_side()
    assert bundle == one_by_one()
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == files
