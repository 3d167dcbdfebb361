"""A legal hold on a person (known to the governance schema only by the keyed hash of a phone
number) keeps that person's expired rows out of the retention sweep, and the run record says so;
everyone else's expired rows go. Checked with hand-written SQL on a copy of the reference
deployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from governance_dev.seed import cast_member
from governance_dev.seed.cast import CAST_KEYS
from tests.fixtures.reference import Deployment

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
OLD_CALLS = "SELECT count(*) FROM app.calls WHERE caller_id = ANY(%s) AND started_at < %s - interval '2 years'"


def test_a_person_under_a_legal_hold_keeps_their_expired_calls_and_the_run_counts_them_held(
    reference_clone: Deployment,
) -> None:
    from governance.crypto import hasher_from_airflow
    from governance.migrations import migrate
    from governance.workflows.retention_sweep import plan_sweep, sweep_one_target

    url = reference_clone.app_url
    migrate(url)
    with psycopg.connect(url) as conn:
        subjects = [cast_member(k) for k in CAST_KEYS if cast_member(k).caller_ids and cast_member(k).e164]
        held = next(s for s in subjects if conn.execute(OLD_CALLS, (list(s.caller_ids), AS_OF)).fetchone()[0])  # type: ignore[index]
        held_before = conn.execute(OLD_CALLS, (list(held.caller_ids), AS_OF)).fetchone()[0]  # type: ignore[index]
        others_before = conn.execute(
            "SELECT count(*) FROM app.calls WHERE NOT caller_id = ANY(%s) AND started_at < %s - interval '2 years'",
            (list(held.caller_ids), AS_OF),
        ).fetchone()[0]  # type: ignore[index]
        hasher = hasher_from_airflow()
        assert held.e164 is not None
        conn.execute(
            "INSERT INTO governance.legal_holds (scope, identity_kind, subject_hash, hash_key_id, reason, starts_at, created_by)"
            " VALUES ('person', 'phone', %s, %s, 'Dispute: this caller''s records preserved', %s, 'legal-team')",
            (hasher.hash("phone", held.e164), hasher.key_id, AS_OF - timedelta(days=30)),
        )
    assert held_before > 0 and others_before > 0

    options = {"dry_run": False, "as_of": AS_OF.isoformat(), "rules": ["calls_2_years"], "orphan_grace_days": 7}
    (target,) = [t for t in plan_sweep(options) if t["name"] == "calls"]
    result = sweep_one_target(target, options, run_id="hold-test")

    with psycopg.connect(url) as conn:
        assert conn.execute(OLD_CALLS, (list(held.caller_ids), AS_OF)).fetchone()[0] == held_before  # type: ignore[index]
        assert conn.execute(
            "SELECT count(*) FROM app.calls WHERE NOT caller_id = ANY(%s) AND started_at < %s - interval '2 years'",
            (list(held.caller_ids), AS_OF),
        ).fetchone()[0] == 0  # type: ignore[index]
        held_count, reasons = conn.execute(
            "SELECT held, held_reasons FROM governance.retention_runs WHERE run_id = 'hold-test' AND rule = 'calls_2_years'"
        ).fetchone()  # type: ignore[misc]
    assert (held_count, reasons) == (held_before, {"legal_hold": held_before})
    assert result["rules"]["calls_2_years"]["rows"] == others_before
