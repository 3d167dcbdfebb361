"""Rows whose only link to the person is a mention (data map: ``orphan`` and ``export`` of a
mention reference). ``messages.user_id`` declares ``orphan: delete_row, export: include``: a
message the user wrote with no caller is theirs (exported with their data, deleted on erasure);
one with a caller is the caller's (never in the user's export; its body stays, the user cleared)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from governance.datamap import load_datamap
from governance.export.collect import ExportSubject
from governance.identity import SubjectIdentities
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import run_erasure
from tests.integration.test_export_bundle import bundle_keys, gate, read_bundle, write

pytestmark = [pytest.mark.slow(seconds=40), pytest.mark.integration]

EMAIL = "staff.only.writer@example.org"
USER_ID, STAFF_ONLY, WITH_CALLER = 1999000200, 1999000201, 1999000202
STAFF_BODY = "Note to the team: Robin Staffwriter is off on Friday"
CALLER_BODY = "Thanks, Robin will call you back"


def _plant(url: str) -> None:
    """A user with a staff-only message (no caller) and a message to a caller of their business."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with psycopg.connect(url) as conn:
        business, caller = conn.execute("SELECT business_id, min(id) FROM app.callers GROUP BY business_id"
                                        " ORDER BY business_id LIMIT 1").fetchone()  # fmt: skip
        conn.execute("INSERT INTO app.users (id, business_id, full_name, email, created_at) VALUES (%s, %s, %s, %s, %s)",
                     (USER_ID, business, "Robin Staffwriter", EMAIL, now))  # fmt: skip
        for message, caller_id, body in ((STAFF_ONLY, None, STAFF_BODY), (WITH_CALLER, caller, CALLER_BODY)):
            conn.execute("INSERT INTO app.messages (id, business_id, caller_id, user_id, channel, direction, body, sent_at)"
                         " VALUES (%s, %s, %s, %s, 'chat', 'outbound', %s, %s)",
                         (message, business, caller_id, USER_ID, body, now))  # fmt: skip


def _message(url: str, message: int) -> tuple[Any, ...] | None:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT user_id, caller_id, body FROM app.messages WHERE id = %s", (message,)).fetchone()


def test_staff_only_message_is_exported_and_erased_with_its_writer_and_a_callers_message_only_loses_the_link(
    reference_clone: Deployment, s3: Any, make_bucket: Callable[[str], str]
) -> None:
    url = reference_clone.app_url
    _plant(url)
    datamap = load_datamap()
    subject = ExportSubject(
        request_id="exp-20260601-00000000mo01", identities=SubjectIdentities.parse(email=EMAIL, region="US"),
        received_on=date(2026, 6, 1), business_scope=None,
    )  # fmt: skip
    bucket = make_bucket("mention-only-export")
    summary = write(datamap, subject, reference_clone, s3, bucket, "exports/mo.zip.age")
    archive = read_bundle(s3, bucket, "exports/mo.zip.age")
    # The staff-only message is the user's; the caller's message is the caller's, never the user's.
    assert bundle_keys(archive, "messages") == {STAFF_ONLY}
    assert STAFF_BODY in archive.read("data/aircalls_app/messages.csv").decode()
    assert CALLER_BODY not in archive.read("data/aircalls_app/messages.csv").decode()
    assert gate(datamap, summary, subject, s3, bucket, "exports/mo.zip.age").passed

    run = run_erasure({"email": EMAIL}, "mention-only", until="processors")
    assert _message(url, STAFF_ONLY) is None  # deleted: it named the person and was nobody else's
    assert _message(url, WITH_CALLER)[0] is None  # the link to the person is cleared ...
    assert _message(url, WITH_CALLER)[1] is not None and _message(url, WITH_CALLER)[2] == CALLER_BODY  # ... the rest stays

    # Residue: the staff-only message comes back (a restore): verification fails and says where.
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO app.messages (id, business_id, caller_id, user_id, channel, direction, body, sent_at)"
                     " SELECT %s, business_id, NULL, NULL, channel, direction, %s, sent_at FROM app.messages WHERE id = %s",
                     (STAFF_ONLY, STAFF_BODY, WITH_CALLER))  # fmt: skip
    from governance.workflows import dsr_erasure as wf

    with pytest.raises(AirflowFailException) as failure:
        wf.verify_erasure(run.summary)
    assert "aircalls_app.messages.user_id (1 mention_only_rows)" in str(failure.value)
    assert STAFF_BODY not in str(failure.value) and EMAIL not in str(failure.value)
