"""Keyed hashes and reversible encryption of identities, with rotatable keys.

Keys live in Airflow connections (or whatever secrets backend Airflow is configured with), never
in the repository or the database:

* ``governance_hash_key``: HMAC-SHA256 key for look-up hashes of identities.
* ``governance_encryption_key``: AES-256-GCM key for identities stored in privacy requests.

Connection layout (both): ``login`` = the active key id, ``password`` = the key, base64 (32
bytes), ``extra.retired`` = ``{key_id: base64_key}`` for keys still needed to read or match old
records. Rotation: generate a new key, move the old one into ``retired``, re-encrypt at leisure.

Every stored hash and ciphertext records its key id, so old records remain readable and
searchable after a rotation: look-ups compute the hash under every known key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from governance.config import ENCRYPTION_KEY_CONN_ID, HASH_KEY_CONN_ID

KEY_BYTES = 32
_TOKEN_VERSION = "v1"


class KeyMaterialError(LookupError):
    """Key material is missing, malformed or unknown (the message never contains key bytes)."""


def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"key {key_id!r} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyMaterialError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class Keyring:
    """An active key plus retired keys, each with an id."""

    active_id: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise KeyMaterialError(f"active key {self.active_id!r} is not in the keyring")

    @classmethod
    def from_parts(cls, active_id: str, active_key_b64: str, retired: Mapping[str, str] | None = None) -> Keyring:
        if not active_id:
            raise KeyMaterialError("the key id (connection login) is empty")
        keys = {kid: _decode_key(kid, enc) for kid, enc in (retired or {}).items()}
        keys[active_id] = _decode_key(active_id, active_key_b64)
        return cls(active_id=active_id, keys=keys)

    @classmethod
    def from_connection(cls, conn_id: str) -> Keyring:
        from governance.connections import get_connection

        info = get_connection(conn_id)
        if not info.password:
            raise KeyMaterialError(f"connection {conn_id!r} has no key in its password field")
        return cls.from_parts(info.login, info.password, info.extra.get("retired") or {})

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_id]

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyMaterialError(f"key {key_id!r} is not in the keyring (retired and removed?)") from None


class IdentityHasher:
    """HMAC-SHA256 of normalised identities, domain-separated by identity kind.

    ``hash(kind, value)`` gives the active key's hash; ``lookup_hashes`` gives one per known key so
    records hashed before a rotation are still found.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def key_id(self) -> str:
        return self.keyring.active_id

    @staticmethod
    def _digest(key: bytes, kind: str, value: str) -> str:
        return hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def hash(self, kind: str, value: str) -> str:
        return self._digest(self.keyring.active_key, kind, value)

    def hash_with(self, key_id: str, kind: str, value: str) -> str:
        return self._digest(self.keyring.key(key_id), kind, value)

    def lookup_hashes(self, kind: str, value: str) -> dict[str, str]:
        """``{key_id: hash}`` under every key in the ring."""
        return {kid: self._digest(key, kind, value) for kid, key in self.keyring.keys.items()}


class IdentityCipher:
    """AES-256-GCM encryption of short identity strings.

    Token format: ``v1:<key_id>:<base64(nonce || ciphertext+tag)>``. The key id and a caller-given
    context (e.g. the request id and field) are bound as associated data, so a ciphertext copied
    to another row or field fails to decrypt.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @property
    def key_id(self) -> str:
        return self.keyring.active_id

    def encrypt(self, plaintext: str, *, context: str) -> str:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        aad = f"{self.keyring.active_id}|{context}".encode()
        sealed = AESGCM(self.keyring.active_key).encrypt(nonce, plaintext.encode(), aad)
        return f"{_TOKEN_VERSION}:{self.keyring.active_id}:{base64.b64encode(nonce + sealed).decode()}"

    @staticmethod
    def token_key_id(token: str) -> str:
        parts = token.split(":", 2)
        if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
            raise KeyMaterialError("not an identity ciphertext of a known version")
        return parts[1]

    def decrypt(self, token: str, *, context: str) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key_id = self.token_key_id(token)
        blob = base64.b64decode(token.split(":", 2)[2])
        aad = f"{key_id}|{context}".encode()
        try:
            return AESGCM(self.keyring.key(key_id)).decrypt(blob[:12], blob[12:], aad).decode()
        except InvalidTag:
            raise KeyMaterialError("ciphertext does not decrypt under its key and context (tampered or moved)") from None

    def reencrypt(self, token: str, *, context: str) -> str:
        """Re-encrypt under the active key (rotation); a no-op for tokens already under it."""
        if self.token_key_id(token) == self.keyring.active_id:
            return token
        return self.encrypt(self.decrypt(token, context=context), context=context)


def hasher_from_airflow() -> IdentityHasher:
    return IdentityHasher(Keyring.from_connection(HASH_KEY_CONN_ID))


def cipher_from_airflow() -> IdentityCipher:
    return IdentityCipher(Keyring.from_connection(ENCRYPTION_KEY_CONN_ID))


def new_key_b64() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def generate_key_connection(purpose: Literal["hash", "encryption"], key_id: str | None = None) -> dict[str, Any]:
    """A fresh connection definition (Airflow's JSON form) holding a new random key."""
    kid = key_id or f"{purpose[:3]}-{secrets.token_hex(4)}"
    return {"conn_type": "generic", "login": kid, "password": new_key_b64(), "extra": {"retired": {}}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="print a new key as an Airflow connection (JSON)")
    gen.add_argument("--purpose", choices=["hash", "encryption"], required=True)
    gen.add_argument("--key-id", default=None)
    gen.add_argument(
        "--rotate-from",
        metavar="ENV_VAR",
        default=None,
        help="name of an env var holding the current connection JSON: its key moves to extra.retired",
    )


def run(args: argparse.Namespace) -> int:
    conn = generate_key_connection(args.purpose, args.key_id)
    if args.rotate_from:
        current = json.loads(os.environ[args.rotate_from])
        retired = dict((current.get("extra") or {}).get("retired") or {})
        retired[current["login"]] = current["password"]
        conn["extra"]["retired"] = retired
    print(json.dumps(conn))
    return 0
