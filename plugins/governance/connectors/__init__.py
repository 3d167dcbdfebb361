"""Connectors: run the data map's plans against each kind of system.

The plans (``governance.datamap.plans``) are pure; these modules execute them:

* :mod:`.postgres`: identity resolution inside one snapshot, streaming export queries;
* :mod:`.objects`: object keys of resolved rows, reads and version-aware deletes on an S3 API;
* :mod:`.processors`: third parties over HTTP through their declared request templates, with
  bounded retries.

``SYSTEM_KINDS`` is the registry of what the map's ``kind`` values are served by; a map naming a
kind with no connector fails with a message saying to add one.
"""

from __future__ import annotations

SYSTEM_KINDS: dict[str, str] = {
    "postgres": "governance.connectors.postgres",
    "s3": "governance.connectors.objects",
    "http": "governance.connectors.processors",
}


class UnsupportedSystemKind(LookupError):
    pass


def connector_module(kind: str) -> str:
    """The module serving systems of ``kind``; UnsupportedSystemKind when there is none."""
    try:
        return SYSTEM_KINDS[kind]
    except KeyError:
        raise UnsupportedSystemKind(
            f"no connector for systems of kind {kind!r}: add one to governance.connectors.SYSTEM_KINDS"
        ) from None
