"""The erasure certificate (JSON and HTML) and the person's lock keys: pure, no services."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from governance.crypto import IdentityHasher, Keyring
from governance.erasure.certificate import build_certificate, render_html
from governance.erasure.locking import lock_keys
from governance.erasure.planner import DatabaseStep, ErasureWork, KeptItem, ObjectWork, ProcessorWork
from governance.identity import SubjectIdentities

EMAIL = "Ada.Lovelace@Example.com"


def _hasher(key: bytes = b"k" * 32) -> IdentityHasher:
    return IdentityHasher(Keyring.from_parts("h1", base64.b64encode(key).decode()))


def _work() -> ErasureWork:
    return ErasureWork(
        plan_id="epl-" + "1" * 20, request_id="era-20261128-0123456789ab", as_of="2026-11-28T00:00:00+00:00",
        business_id=None, identity_kinds=["email"], datamap_version="v1", datamap_sha256="ab" * 32,
        database=[DatabaseStep(1, "aircalls_app", "calls", "delete_rows", [1, 2]),
                  DatabaseStep(2, "aircalls_app", "payments", "minimise_kept_rows", [7], ["user_id"])],
        objects=[ObjectWork("aircalls_objects", "bucket", "recordings", keys=["recordings/1/1.wav"])],
        processors=[ProcessorWork("crm", ["c-1"])],
        kept=[KeptItem("aircalls_app.payments", "rows", 1, "legal_exception", "Tax law <keeps> it", law="26 CFR",
                       until="2030-01-01T00:00:00+00:00", until_latest="2030-01-01T00:00:00+00:00", keys=[7])],
    )  # fmt: skip


def test_certificate_says_what_was_erased_kept_and_verified_with_keyed_hashes_only() -> None:
    hasher = _hasher()
    identities = SubjectIdentities.parse(email=EMAIL)
    hashes = [(k, hasher.key_id, hasher.hash(k, v)) for k, v in identities.items()]
    progress = {
        "db:aircalls_app:001:calls:delete_rows": {"affected": 2},
        "db:aircalls_app:002:payments:minimise_kept_rows": {"affected": 1},
        "db:aircalls_app": {"affected": 3},
        "objects:aircalls_objects:recordings": {"affected": 1},
        "processor:crm:c-1": {"affected": 1, "detail": {"outcome": "erased"}},
    }
    certificate = build_certificate(
        _work(), plan_row={"status": "verified"}, progress=progress,
        verification={"passed": True, "engine": "great_expectations 1.x", "residue": [], "checks": []},
        subject_hashes=hashes, ledger={"dag_id": "dsr_erasure", "run_id": "r1", "run_last_seq": 41, "head_seq": 44},
        issued_at=datetime(2026, 11, 28, tzinfo=UTC), approval={"approved_by": "officer"},
    )  # fmt: skip
    assert certificate["outcome"] == "erased" and certificate["ledger"]["run_last_seq"] == 41
    assert certificate["subject"] == [{"identity_kind": "email", "hash_key_id": "h1", "keyed_hash": hashes[0][2]}]
    assert certificate["erased"]["databases"][0] == {"table": "aircalls_app.calls", "effect": "delete_rows", "planned": 2,
                                                     "affected": 2, "fields": []}  # fmt: skip
    assert certificate["erased"]["processors"] == [{"processor": "crm", "records": 1, "erased": 1, "already_absent": 0}]
    assert certificate["kept"][0]["until"].startswith("2030") and "keys" not in certificate["kept"][0]
    document = json.dumps(certificate)
    page = render_html(certificate)
    for text in (EMAIL, EMAIL.lower(), "recordings/1/1.wav", "c-1"):
        assert text not in document and text not in page
    assert "Tax law &lt;keeps&gt; it" in page and "<keeps>" not in page
    assert "passed" in page and "26 CFR" in page


def test_lock_keys_are_stable_per_person_and_differ_between_people() -> None:
    hasher = _hasher()
    ada = SubjectIdentities.parse(email=EMAIL, phone="+1 415 555 0100", region="US")
    again = SubjectIdentities.parse(email=" ada.lovelace@example.COM ", phone="(415) 555-0100", region="US")
    other = SubjectIdentities.parse(email="grace@example.com")
    assert lock_keys(hasher, ada) == lock_keys(hasher, again) == sorted(lock_keys(hasher, ada))
    assert len(lock_keys(hasher, ada)) == 2 and not set(lock_keys(hasher, ada)) & set(lock_keys(hasher, other))
    assert all(-(2**63) <= k < 2**63 for k in lock_keys(hasher, ada))
