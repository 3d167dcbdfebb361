"""Export bundles for access requests (privacy policy 5.1), used by the ``dsr_export`` DAG.

* :mod:`.collect`: the bundle writer, driven only by the data map (resolution in one snapshot
  per database, tables, objects, processors) into ZIP -> age -> S3 multipart upload, streamed;
* :mod:`.bundle`: the ZIP layout, per-entry hashing, ``manifest.json``;
* :mod:`.formats`: JSON, CSV and HTML data files (and reading them back);
* :mod:`.index`: ``index.html``, the plain-words summary for the person;
* :mod:`.age`: age passphrase encryption and decryption, streamed;
* :mod:`.storage`: bundle locations, multipart upload with SSE, object read-ahead;
* :mod:`.gate`: the Great Expectations quality gate on the written bundle;
* :mod:`.state`: passphrases and bundle records in the governance schema;
* :mod:`.passphrase_command`, :mod:`.decrypt_command`: ``python -m governance export-passphrase``
  and ``decrypt-bundle``.

Importing this package imports nothing heavy; the submodules load their dependencies when used.
"""

from __future__ import annotations
