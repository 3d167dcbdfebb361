"""A temporary store for bundle bytes that never holds plaintext on disk.

A table's rows are read once and written into every chosen format at once (see
:func:`governance.export.formats.write_formats`), but a ZIP holds its entries one after another:
while the first format streams straight into the bundle, the others wait here until it is done.
:class:`SealedSpool` keeps up to ``max_memory`` bytes in memory and the rest in a temporary file,
and what it writes there is sealed first (ChaCha20-Poly1305 in 64 KiB chunks, under a random key
that lives only in this object), so a killed worker leaves ciphertext in the temporary directory,
never personal data (#12 item 7). What waits here is the entry's compressed bytes, so the spool
is a fraction of the data's size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
MAX_MEMORY = 1024 * 1024


class SealedSpool:
    """Write bytes, then read them back once with :meth:`chunks`; only ciphertext reaches a file."""

    def __init__(self, *, max_memory: int = MAX_MEMORY) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        self._aead = ChaCha20Poly1305(os.urandom(32))  # one key per spool, never stored
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory, prefix="export-spool-", suffix=".sealed")
        self._pending = bytearray()
        self._sealed = 0
        self._reading = False
        self.size = 0

    def _seal(self, chunk: bytes | bytearray | memoryview) -> None:
        self._file.write(self._aead.encrypt(self._sealed.to_bytes(12, "big"), bytes(chunk), None))
        self._sealed += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._reading:
            raise ValueError("write to a spool that is being read back")
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= CHUNK_SIZE:
            view = memoryview(self._pending)
            start = 0
            while len(view) - start >= CHUNK_SIZE:
                self._seal(view[start : start + CHUNK_SIZE])
                start += CHUNK_SIZE
            rest = bytes(view[start:])
            view.release()
            self._pending = bytearray(rest)
        return len(data)

    def chunks(self) -> Iterator[bytes]:
        """Everything written, in order, one chunk (<= 64 KiB) at a time."""
        if not self._reading:
            if self._pending:
                self._seal(self._pending)
                self._pending = bytearray()
            self._reading = True
        self._file.seek(0)
        for counter in range(self._sealed):
            sealed = self._file.read(CHUNK_SIZE + TAG_SIZE)
            yield self._aead.decrypt(counter.to_bytes(12, "big"), sealed, None)

    def close(self) -> None:
        self._file.close()
        self._pending = bytearray()
