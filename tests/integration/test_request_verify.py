"""``python -m governance request verify``: the record the Privacy requests page and intake write,
and four eyes for an erasure (its verification at intake is its approval)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from governance.crypto import cipher_from_airflow, hasher_from_airflow
from governance.identity import SubjectIdentities
from governance.migrations import migrate
from governance.privacy_requests import InvalidRequest, create_request, verify_request
from governance.workflows import dsr_erasure, dsr_export
from governance.workflows.dsr_erasure import request_approval_state

AT = datetime(2026, 11, 3, 10, 0, tzinfo=UTC)
SUBJECT = SubjectIdentities(email="sam.verify@example.com")

pytestmark = pytest.mark.integration


@pytest.fixture
def governance_db(make_db: Callable[[str], str]) -> str:
    url = make_db("verify")
    migrate(url)
    return url


def _record(url: str, kind: str, *, recorder: str | None = None) -> str:
    hasher, cipher = hasher_from_airflow(), cipher_from_airflow()
    with psycopg.connect(url) as conn:
        request_id = create_request(conn, kind=kind, identities=SUBJECT, hasher=hasher, cipher=cipher,  # type: ignore[arg-type]
                                    received_at=AT)  # fmt: skip
        if recorder:
            conn.execute("INSERT INTO governance.request_actions (request_id, action, actor) VALUES (%s, 'recorded', %s)",
                         (request_id, recorder))  # fmt: skip
    return request_id


def test_the_verification_methods_are_the_ones_the_workflows_record() -> None:
    from governance.privacy_requests import VERIFICATION_METHOD_CODES

    assert set(VERIFICATION_METHOD_CODES) == set(dsr_erasure.VERIFICATION_METHODS)
    assert set(VERIFICATION_METHOD_CODES.values()) == set(dsr_export.VERIFICATION_OPTIONS.values())


def test_verifying_an_erasure_by_its_recorder_is_refused_and_by_someone_else_verifies_and_approves_it(
    governance_db: str,
) -> None:
    request_id = _record(governance_db, "erasure", recorder="clerk")
    with pytest.raises(InvalidRequest, match="four eyes"):
        verify_request(governance_db, request_id, method="id_document", by="clerk", at=AT)
    with psycopg.connect(governance_db) as conn:
        assert request_approval_state(conn, request_id) == (False, False)
    assert verify_request(governance_db, request_id, method="id_document", by="officer", at=AT) == "id_document"
    with psycopg.connect(governance_db) as conn:
        assert request_approval_state(conn, request_id) == (True, True)
        row = conn.execute("SELECT status, verification_method, approved_by FROM governance.privacy_requests"
                           " WHERE request_id = %s", (request_id,)).fetchone()  # fmt: skip
        actions = conn.execute("SELECT action, actor FROM governance.request_actions WHERE request_id = %s ORDER BY action_id",
                               (request_id,)).fetchall()  # fmt: skip
    assert row == ("verified", "id_document", "officer")
    assert actions == [("recorded", "clerk"), ("verified", "officer")]


def test_a_second_verification_keeps_the_first_and_a_bad_method_changes_nothing(governance_db: str) -> None:
    request_id = _record(governance_db, "export")
    with pytest.raises(InvalidRequest, match="--method must be one of"):
        verify_request(governance_db, request_id, method="trust me", by="officer", at=AT)
    assert verify_request(governance_db, request_id, method="email_link", by="officer", at=AT) == (
        "reply from the e-mail address on file"
    )
    assert verify_request(governance_db, request_id, method="id_document", by="other", at=AT) == (
        "reply from the e-mail address on file"
    )
    with psycopg.connect(governance_db) as conn:
        count = conn.execute("SELECT count(*) FROM governance.request_actions WHERE request_id = %s AND action = 'verified'",
                             (request_id,)).fetchone()  # fmt: skip
    assert count == (1,)
