from __future__ import annotations

import pytest

from governance.crypto import (
    IdentityCipher,
    IdentityHasher,
    KeyMaterialError,
    Keyring,
    generate_key_connection,
    new_key_b64,
)


def _ring(active: str = "k1", retired: dict[str, str] | None = None, key: str | None = None) -> Keyring:
    return Keyring.from_parts(active, key or new_key_b64(), retired)


def test_keyed_hash_is_stable_and_depends_on_key_and_kind() -> None:
    ring = _ring()
    hasher = IdentityHasher(ring)
    first = hasher.hash("email", "alice@example.com")
    assert first == IdentityHasher(ring).hash("email", "alice@example.com")
    assert len(first) == 64 and "alice" not in first
    assert hasher.hash("phone", "alice@example.com") != first  # domain separation by kind
    assert IdentityHasher(_ring()).hash("email", "alice@example.com") != first  # another key


def test_rotated_hash_key_still_finds_records_hashed_under_the_old_key() -> None:
    old_key = new_key_b64()
    old = IdentityHasher(Keyring.from_parts("k1", old_key))
    stored = (old.key_id, old.hash("email", "bob@example.com"))
    rotated = IdentityHasher(Keyring.from_parts("k2", new_key_b64(), {"k1": old_key}))
    assert rotated.key_id == "k2"
    assert stored in rotated.lookup_hashes("email", "bob@example.com").items()
    assert rotated.hash("email", "bob@example.com") != stored[1]


def test_encryption_round_trips_and_binds_key_id_and_context() -> None:
    cipher = IdentityCipher(_ring("enc-1"))
    token = cipher.encrypt("+15550102000", context="req-1:phone")
    assert token.startswith("v1:enc-1:") and "555" not in token
    assert cipher.decrypt(token, context="req-1:phone") == "+15550102000"
    with pytest.raises(KeyMaterialError, match="tampered or moved"):
        cipher.decrypt(token, context="req-2:phone")
    # Two encryptions of the same value differ (random nonce), so ciphertexts reveal no equality.
    assert cipher.encrypt("+15550102000", context="req-1:phone") != token


def test_rotated_encryption_key_decrypts_old_tokens_and_reencrypts_under_the_new_key() -> None:
    old_key = new_key_b64()
    token = IdentityCipher(Keyring.from_parts("enc-1", old_key)).encrypt("carol@example.com", context="c")
    rotated = IdentityCipher(Keyring.from_parts("enc-2", new_key_b64(), {"enc-1": old_key}))
    assert rotated.decrypt(token, context="c") == "carol@example.com"
    fresh = rotated.reencrypt(token, context="c")
    assert IdentityCipher.token_key_id(fresh) == "enc-2"
    assert rotated.decrypt(fresh, context="c") == "carol@example.com"
    # Once the old key is dropped from the ring, old tokens are unreadable; new ones are fine.
    dropped = IdentityCipher(Keyring.from_parts("enc-2", _b64(rotated.keyring.active_key)))
    with pytest.raises(KeyMaterialError, match="not in the keyring"):
        dropped.decrypt(token, context="c")
    assert dropped.decrypt(fresh, context="c") == "carol@example.com"


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("kid", "key"),
    [("", new_key_b64()), ("k", "not-base64!"), ("k", _b64(b"short"))],
    ids=["empty-key-id", "not-base64", "too-short"],  # stable ids: never a random key in a test id
)
def test_malformed_key_material_is_refused_without_echoing_it(kid: str, key: str) -> None:
    with pytest.raises(KeyMaterialError) as info:
        Keyring.from_parts(kid, key)
    assert key not in str(info.value) or not key


def test_keys_come_from_airflow_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    conn = generate_key_connection("hash", "hash-from-env")
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_TEST_KEYS", json.dumps(conn))
    ring = Keyring.from_connection("unit_test_keys")
    assert ring.active_id == "hash-from-env"
    assert _b64(ring.active_key) == conn["password"]
