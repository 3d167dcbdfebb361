"""age passphrase encryption (age-encryption.org/v1, scrypt recipient), streamed chunk by chunk.

Export bundles are encrypted in the age format so the person can open them with a free tool
(``age -d bundle.zip.age`` or ``rage -d``, which prompt for the passphrase) or with
``python -m governance decrypt-bundle``. ``pyrage.passphrase`` only encrypts and decrypts whole
byte strings in memory, and pyrage's streaming ``encrypt_io`` takes no passphrase recipient, so
this module writes the same format itself from the specification (https://c2sp.org/age) with
``cryptography``'s primitives, one 64 KiB chunk at a time: memory stays flat however large the
bundle. The unit tests check interoperability both ways against ``pyrage.passphrase``.

Format, in short: a text header (version line, one ``scrypt`` stanza wrapping a random 16-byte
file key under a key derived from the passphrase, an HMAC over the header), then a 16-byte nonce
and the payload in ChaCha20-Poly1305 chunks of 64 KiB whose nonces count up and mark the last.

The scrypt work factor defaults to 2^15: the passphrases this project issues carry 120 random
bits, so the key derivation need not make guessing slow, and a small factor keeps the memory
scrypt needs (32 MiB) inside the export's memory budget. Files from other age tools (work factor
18 by default) decrypt too, up to :data:`MAX_WORK_FACTOR`.
"""

from __future__ import annotations

import base64
import hmac
import io
import os
from collections.abc import Iterator
from hashlib import sha256
from typing import Any, Protocol

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
FILE_KEY_SIZE = 16
NONCE_SIZE = 16
DEFAULT_WORK_FACTOR = 15
MAX_WORK_FACTOR = 22
VERSION_LINE = b"age-encryption.org/v1"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_MAX_HEADER_BYTES = 64 * 1024


class AgeError(ValueError):
    """The input is not an age file this module can open, or the passphrase is wrong."""


class BinarySink(Protocol):
    def write(self, data: bytes, /) -> Any: ...


class BinarySource(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str, *, size: int | None = None) -> bytes:
    """Canonical unpadded base64 (the spec rejects padding and non-canonical encodings)."""
    if "=" in text or len(text) % 4 == 1:
        raise AgeError("malformed base64 in the age header")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise AgeError("malformed base64 in the age header") from None
    if _b64(raw) != text or (size is not None and len(raw) != size):
        raise AgeError("malformed base64 in the age header")
    return raw


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _scrypt_wrap_key(passphrase: str, salt: bytes, work_factor: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=2**work_factor, r=8, p=1).derive(passphrase.encode())


def _check_passphrase(passphrase: str) -> None:
    if not passphrase:
        raise AgeError("the passphrase is empty")


def _header(passphrase: str, file_key: bytes, work_factor: int) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    salt = os.urandom(16)
    body = _b64(ChaCha20Poly1305(_scrypt_wrap_key(passphrase, salt, work_factor)).encrypt(_ZERO_NONCE, file_key, None))
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append("")  # a stanza body ends with a line shorter than 64 columns
    text = "\n".join([VERSION_LINE.decode(), f"-> scrypt {_b64(salt)} {work_factor}", *lines, "---"]).encode()
    mac = hmac.new(_hkdf(file_key, b"", b"header"), text, sha256).digest()
    return text + b" " + _b64(mac).encode() + b"\n"


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class AgeWriter:
    """A write-only stream that encrypts everything written to it into ``sink`` as an age file.

    Holds at most one 64 KiB chunk. ``close()`` writes the final chunk (it does not close the
    sink). Not seekable, on purpose: ``zipfile`` then writes data descriptors instead of seeking.
    """

    def __init__(self, sink: BinarySink, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        _check_passphrase(passphrase)
        if not 1 <= work_factor <= MAX_WORK_FACTOR:
            raise AgeError(f"scrypt work factor must be between 1 and {MAX_WORK_FACTOR}")
        self._sink = sink
        file_key = os.urandom(FILE_KEY_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        sink.write(_header(passphrase, file_key, work_factor))
        sink.write(nonce)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._pending = bytearray()
        self._counter = 0
        self._closed = False
        self.plaintext_bytes = 0

    def _seal(self, chunk: bytes | bytearray | memoryview, *, last: bool) -> None:
        self._sink.write(self._aead.encrypt(_chunk_nonce(self._counter, last), bytes(chunk), None))
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        size = len(data)
        self.plaintext_bytes += size
        self._pending += data
        # Keep the last (possibly full) chunk back: only close() knows which chunk is final.
        if len(self._pending) > CHUNK_SIZE:
            view = memoryview(self._pending)
            start = 0
            while len(self._pending) - start > CHUNK_SIZE:
                self._seal(view[start : start + CHUNK_SIZE], last=False)
                start += CHUNK_SIZE
            rest = bytes(view[start:])
            view.release()
            self._pending = bytearray(rest)
        return size

    def flush(self) -> None:
        """Nothing to do: chunks are sealed as they fill (present for ``zipfile``)."""

    def close(self) -> None:
        if not self._closed:
            self._seal(self._pending, last=True)  # empty only when nothing was written at all
            self._pending = bytearray()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def encrypt_bytes(plaintext: bytes, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR) -> bytes:
    """The age file of ``plaintext`` (small inputs and tests)."""
    out = bytearray()

    class _Sink:
        def write(self, data: bytes) -> int:
            out.extend(data)
            return len(data)

    with AgeWriter(_Sink(), passphrase, work_factor=work_factor) as writer:
        writer.write(plaintext)
    return bytes(out)


class _Reader:
    """Exact reads and line reads over a stream that only has ``read(n)``."""

    def __init__(self, source: BinarySource) -> None:
        self._source = source
        self._buffer = bytearray()
        self._eof = False

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size and not self._eof:
            data = self._source.read(max(size - len(self._buffer), CHUNK_SIZE + TAG_SIZE))
            if not data:
                self._eof = True
            else:
                self._buffer += data

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        self._fill(size)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def at_end(self) -> bool:
        """Whether the stream has nothing left (reads ahead one byte, kept for the next read)."""
        self._fill(1)
        return not self._buffer

    def readline(self, limit: int) -> bytes:
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                line = bytes(self._buffer[: index + 1])
                del self._buffer[: index + 1]
                return line
            if self._eof or len(self._buffer) > limit:
                raise AgeError("not an age file (header line missing or too long)")
            self._fill(len(self._buffer) + 1)


def _read_file_key(reader: _Reader, passphrase: str, max_work_factor: int) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    header = bytearray()

    def line() -> bytes:
        raw = reader.readline(_MAX_HEADER_BYTES)
        header.extend(raw)
        if len(header) > _MAX_HEADER_BYTES:
            raise AgeError("the age header is too long")
        return raw[:-1]

    if line() != VERSION_LINE:
        raise AgeError("not an age v1 file (the first line is not 'age-encryption.org/v1')")
    stanzas: list[tuple[list[str], bytes]] = []
    current = line()
    while current.startswith(b"-> "):
        args = current[3:].decode("ascii", "strict").split(" ")
        body_lines: list[bytes] = []
        while True:
            body_line = line()
            body_lines.append(body_line)
            if len(body_line) < 64:
                break
        stanzas.append((args, _unb64(b"".join(body_lines).decode("ascii"))))
        current = line()
    if not current.startswith(b"--- "):
        raise AgeError("malformed age header (no MAC line)")
    mac = _unb64(current[4:].decode("ascii"), size=32)
    mac_input = bytes(header[: len(header) - len(current) - 1 + 3])  # up to and including '---'
    if len(stanzas) != 1 or stanzas[0][0][0] != "scrypt":
        raise AgeError("this age file is not encrypted with a passphrase (expected one scrypt stanza)")
    args, body = stanzas[0]
    if len(args) != 3 or not args[2].isdigit() or args[2].startswith("0"):
        raise AgeError("malformed scrypt stanza")
    salt = _unb64(args[1], size=16)
    work_factor = int(args[2])
    if work_factor > max_work_factor:
        raise AgeError(f"scrypt work factor {work_factor} is above the limit of {max_work_factor}")
    if len(body) != FILE_KEY_SIZE + TAG_SIZE:
        raise AgeError("malformed scrypt stanza body")
    try:
        file_key = ChaCha20Poly1305(_scrypt_wrap_key(passphrase, salt, work_factor)).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        raise AgeError("wrong passphrase (or the file was altered)") from None
    expected = hmac.new(_hkdf(file_key, b"", b"header"), mac_input, sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise AgeError("the age header was altered (MAC mismatch)")
    return file_key


def decrypt_chunks(source: BinarySource, passphrase: str, *, max_work_factor: int = MAX_WORK_FACTOR) -> Iterator[bytes]:
    """Plaintext of the age file read from ``source``, one chunk (<= 64 KiB) at a time.

    Raises AgeError for a wrong passphrase, an altered file or a truncated one (the end of the
    stream must come right after a chunk marked final).
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    _check_passphrase(passphrase)
    reader = _Reader(source)
    file_key = _read_file_key(reader, passphrase, max_work_factor)
    nonce = reader.read(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise AgeError("the age file is truncated (no payload)")
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    counter = 0
    while True:
        sealed = reader.read(CHUNK_SIZE + TAG_SIZE)
        last = len(sealed) < CHUNK_SIZE + TAG_SIZE or reader.at_end()
        try:
            chunk = aead.decrypt(_chunk_nonce(counter, last), sealed, None)
        except InvalidTag:
            if not last:  # a full final chunk followed by more bytes
                try:
                    aead.decrypt(_chunk_nonce(counter, True), sealed, None)
                except InvalidTag:
                    pass
                else:
                    raise AgeError("the age file has data after its final chunk") from None
            raise AgeError("the age payload was altered or truncated") from None
        if last and not chunk and counter > 0:
            raise AgeError("the age payload ends with an empty chunk")
        if last and not reader.at_end():
            raise AgeError("the age file has data after its final chunk")
        counter += 1
        yield chunk
        if last:
            return


def decrypt_to(source: BinarySource, sink: BinarySink, passphrase: str, *, max_work_factor: int = MAX_WORK_FACTOR) -> int:
    """Decrypt ``source`` into ``sink``; return the plaintext size."""
    size = 0
    for chunk in decrypt_chunks(source, passphrase, max_work_factor=max_work_factor):
        sink.write(chunk)
        size += len(chunk)
    return size


def decrypt_bytes(ciphertext: bytes, passphrase: str) -> bytes:
    return b"".join(decrypt_chunks(io.BytesIO(ciphertext), passphrase))


class AgeRandomAccessReader(io.RawIOBase):
    """A seekable, read-only view of the plaintext of an age file held in a seekable ``source``.

    Each read decrypts (and authenticates) only the 64 KiB chunks it touches, one at a time, so
    a ZIP inside an encrypted bundle can be read entry by entry with no plaintext ever written to
    disk and one chunk in memory. Call :func:`verify` (or read everything) first when the whole
    file must be known intact: a chunk is authenticated only when it is read.
    """

    def __init__(self, source: Any, passphrase: str, *, max_work_factor: int = MAX_WORK_FACTOR) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        super().__init__()
        _check_passphrase(passphrase)
        source.seek(0, io.SEEK_END)
        total = source.tell()
        source.seek(0)
        reader = _Reader(source)
        file_key = _read_file_key(reader, passphrase, max_work_factor)
        nonce = reader.read(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise AgeError("the age file is truncated (no payload)")
        self._payload_at = source.tell() - len(reader._buffer)
        payload = total - self._payload_at
        sealed = CHUNK_SIZE + TAG_SIZE
        self._chunks = max(1, -(-payload // sealed))
        self._size = payload - self._chunks * TAG_SIZE
        if self._size < 0:
            raise AgeError("the age payload was altered or truncated")
        self._source = source
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def _chunk(self, index: int) -> bytes:
        from cryptography.exceptions import InvalidTag

        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        sealed_size = CHUNK_SIZE + TAG_SIZE
        self._source.seek(self._payload_at + index * sealed_size)
        sealed = self._source.read(sealed_size)
        try:
            plain = self._aead.decrypt(_chunk_nonce(index, index == self._chunks - 1), sealed, None)
        except InvalidTag:
            raise AgeError("the age payload was altered or truncated") from None
        self._cached = (index, plain)
        return plain

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        written = 0
        while written < len(view) and self._pos < self._size:
            index, within = divmod(self._pos, CHUNK_SIZE)
            chunk = self._chunk(index)
            take = min(len(view) - written, len(chunk) - within)
            view[written : written + take] = chunk[within : within + take]
            written += take
            self._pos += take
        return written


def verify(source: BinarySource, passphrase: str, *, max_work_factor: int = MAX_WORK_FACTOR) -> int:
    """Authenticate a whole age file without keeping its plaintext; return the plaintext size."""
    return sum(len(chunk) for chunk in decrypt_chunks(source, passphrase, max_work_factor=max_work_factor))
