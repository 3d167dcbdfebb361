"""Connectors: run the data map's plans against each kind of system.

The plans (``governance.datamap.plans``) are pure; these modules execute them:

* :mod:`.postgres`: identity resolution inside one snapshot, streaming export queries;
* :mod:`.objects`: object keys of resolved rows, reads and version-aware deletes on an S3 API;
* :mod:`.dynamodb`: a person's items by key and index Queries (never a Scan), batched deletes
  with retries of unprocessed items and throttling;
* :mod:`.processors`: third parties over HTTP through their declared request templates, with
  bounded retries.

Each system kind has one connector contract (:mod:`.base`: look up, export, erase, verify,
test), on the provider's hook for its connection. ``SYSTEM_KINDS`` is the registry of what the
map's ``kind`` values are served by (``base.CONNECTORS`` the classes); a map naming a kind with
no connector fails with a message saying to add one. A processor the request templates cannot
express names a Python connector class in the map (``connector: python``, ``class:
module:Class``; see :mod:`.base` and :mod:`.support_desk`).
"""

from __future__ import annotations

SYSTEM_KINDS: dict[str, str] = {
    "postgres": "governance.connectors.postgres",
    "s3": "governance.connectors.objects",
    "dynamodb": "governance.connectors.dynamodb",
    "http": "governance.connectors.processors",
}


from governance.connectors.base import UnsupportedSystemKind  # noqa: E402  (re-exported)


def connector_module(kind: str) -> str:
    """The module serving systems of ``kind``; UnsupportedSystemKind when there is none."""
    try:
        return SYSTEM_KINDS[kind]
    except KeyError:
        raise UnsupportedSystemKind(
            f"no connector for systems of kind {kind!r}: add one to governance.connectors.SYSTEM_KINDS"
        ) from None
