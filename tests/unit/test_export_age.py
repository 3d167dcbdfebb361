"""age passphrase encryption, streamed: the files this project writes open with pyrage (the
reference age implementation, rage) and files pyrage writes open here; tampering, truncation
and wrong passphrases are refused; memory stays at one chunk however much is written."""

from __future__ import annotations

import io
import os

import pyrage
import pytest

from governance.export.age import (
    CHUNK_SIZE,
    MAX_WORK_FACTOR,
    AgeError,
    AgeRandomAccessReader,
    AgeWriter,
    decrypt_bytes,
    decrypt_chunks,
    encrypt_bytes,
)

PASSPHRASE = "7KQ2-M9XD-4RTP-8HZC-3NVW-6JYB"
SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 17]


@pytest.mark.parametrize("size", SIZES)
def test_our_files_open_with_pyrage_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    ours = encrypt_bytes(data, PASSPHRASE, work_factor=10)
    assert ours.startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert pyrage.passphrase.decrypt(ours, PASSPHRASE) == data
    assert decrypt_bytes(ours, PASSPHRASE) == data


def test_files_written_by_pyrage_with_its_default_work_factor_open_here() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)  # several chunks, the last one short
    assert decrypt_bytes(pyrage.passphrase.encrypt(data, PASSPHRASE), PASSPHRASE) == data


def test_every_file_gets_a_fresh_key_so_equal_plaintexts_encrypt_differently() -> None:
    assert encrypt_bytes(b"same", PASSPHRASE, work_factor=10) != encrypt_bytes(b"same", PASSPHRASE, work_factor=10)


def test_a_wrong_passphrase_is_refused() -> None:
    with pytest.raises(AgeError, match="wrong passphrase"):
        decrypt_bytes(encrypt_bytes(b"secret", PASSPHRASE, work_factor=10), "not-the-passphrase")


def test_a_truncated_file_is_refused_rather_than_read_short() -> None:
    sealed = encrypt_bytes(os.urandom(3 * CHUNK_SIZE), PASSPHRASE, work_factor=10)
    with pytest.raises(AgeError, match="altered or truncated"):
        decrypt_bytes(sealed[: -(CHUNK_SIZE // 2)], PASSPHRASE)
    with pytest.raises(AgeError):
        decrypt_bytes(sealed[:60], PASSPHRASE)


def test_altered_header_payload_or_trailing_data_are_refused() -> None:
    sealed = bytearray(encrypt_bytes(os.urandom(1000), PASSPHRASE, work_factor=10))
    header_end = sealed.index(b"\n---") + 1
    flipped_header = bytes(sealed[:header_end]).replace(b"scrypt", b"scrypu") + bytes(sealed[header_end:])
    with pytest.raises(AgeError):
        decrypt_bytes(flipped_header, PASSPHRASE)
    payload = bytearray(sealed)
    payload[-20] ^= 0x01
    with pytest.raises(AgeError, match="altered"):
        decrypt_bytes(bytes(payload), PASSPHRASE)
    with pytest.raises(AgeError):
        decrypt_bytes(bytes(sealed) + b"extra", PASSPHRASE)
    full = encrypt_bytes(os.urandom(CHUNK_SIZE), PASSPHRASE, work_factor=10)
    with pytest.raises(AgeError, match="after its final chunk"):
        decrypt_bytes(full + b"extra", PASSPHRASE)


def test_a_work_factor_above_the_limit_is_refused_before_deriving_a_key() -> None:
    sealed = encrypt_bytes(b"x", PASSPHRASE, work_factor=10).replace(b" 10\n", f" {MAX_WORK_FACTOR + 1}\n".encode(), 1)
    with pytest.raises(AgeError, match="above the limit"):
        decrypt_bytes(sealed, PASSPHRASE)


def test_the_writer_holds_at_most_one_chunk_and_the_reader_yields_chunks() -> None:
    sink = io.BytesIO()
    writer = AgeWriter(sink, PASSPHRASE, work_factor=10)
    piece = os.urandom(1024 * 1024 + 3)
    for _ in range(8):
        writer.write(piece)
        assert len(writer._pending) <= CHUNK_SIZE
    writer.close()
    sink.seek(0)
    chunks = list(decrypt_chunks(sink, PASSPHRASE))
    assert max(len(c) for c in chunks) == CHUNK_SIZE
    assert b"".join(chunks) == piece * 8


@pytest.mark.parametrize("size", SIZES)
def test_the_random_access_view_reads_any_range_as_the_plaintext_at_every_chunk_boundary(size: int) -> None:
    data = os.urandom(size)
    view = AgeRandomAccessReader(io.BytesIO(encrypt_bytes(data, PASSPHRASE, work_factor=10)), PASSPHRASE)
    assert view.seek(0, io.SEEK_END) == size
    for start, length in ((0, size), (max(size - 3, 0), 10), (CHUNK_SIZE - 2, 5), (size // 2, CHUNK_SIZE + 7)):
        view.seek(start)
        assert view.read(length) == data[start : start + length]
    view.seek(0)
    assert view.read() == data


def test_the_random_access_view_opens_pyrage_files_and_refuses_an_altered_chunk_when_it_is_read() -> None:
    data = os.urandom(3 * CHUNK_SIZE + 5)
    sealed = bytearray(pyrage.passphrase.encrypt(data, PASSPHRASE))
    view = AgeRandomAccessReader(io.BytesIO(bytes(sealed)), PASSPHRASE)
    view.seek(2 * CHUNK_SIZE + 1)
    assert view.read(4) == data[2 * CHUNK_SIZE + 1 : 2 * CHUNK_SIZE + 5]
    sealed[-10] ^= 1  # inside the last chunk (5 bytes and its 16-byte tag)
    altered = AgeRandomAccessReader(io.BytesIO(bytes(sealed)), PASSPHRASE)
    assert altered.read(16) == data[:16], "untouched chunks still read"
    altered.seek(3 * CHUNK_SIZE)
    with pytest.raises(AgeError, match="altered or truncated"):
        altered.read(1)
    with pytest.raises(AgeError, match="wrong passphrase"):
        AgeRandomAccessReader(io.BytesIO(bytes(sealed)), "another-passphrase-entirely")
