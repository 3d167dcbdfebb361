"""Erasure of the cast's people on one shared copy of the reference deployment, task by task:
after each erasure the person's rows, objects and processor records are gone, and every other
row is unchanged except the mention references the plan lists (snapshot before and after)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_erasure_support import (
    CHANGING,
    DELETING,
    all_versions,
    conf_for,
    diff,
    plan_keys,
    planned,
    recording_keys_of_callers,
    run_erasure,
    shared_clone,  # noqa: F401 - fixture
    snapshot,
)

pytestmark = pytest.mark.integration


def _only_planned_changes(d: dict[str, dict[str, set[Any]]], plan: dict[str, Any]) -> None:
    """Nothing outside the plan changed: deletions and rewrites are exactly the planned keys."""
    for table, change in d.items():
        assert change["added"] == set(), table
        assert change["deleted"] == planned(plan, table, *DELETING), table
        assert change["changed"] == planned(plan, table, *CHANGING), table


def test_person_who_is_user_and_caller_is_erased_everywhere_and_nobody_else_changes(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    subject = cast_member("both_user_and_caller")
    url = shared_clone.app_url
    recordings = recording_keys_of_callers(url, subject.caller_ids)
    assert recordings
    before = snapshot(url)
    run = run_erasure(conf_for("both_user_and_caller"), "both")
    plan = plan_keys(url, run.summary["plan_id"])
    after = snapshot(url)
    d = diff(before, after)
    _only_planned_changes(d, plan)
    assert subject.user_id in d["users"]["deleted"] and set(subject.caller_ids) <= d["callers"]["deleted"]
    assert d["calls"]["deleted"] and d["usage_events"]["deleted"] and d["marketing_preferences"]["deleted"]
    # Recent payments are kept by tax law, minimised: no account link, no address, masked card.
    kept = planned(plan, "payments", "minimise_kept_rows")
    assert len(kept) == 3
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id, card_last4, billing_address, amount_cents, processor_charge_id FROM app.payments"
            " WHERE id = ANY(%s)", (list(kept),),
        ).fetchall()  # fmt: skip
    assert rows and all(r[0] is None and r[1] == "****" and r[2] is None and r[3] and r[4] for r in rows)
    # Objects gone with every version; processor records gone at both processors.
    for key in recordings:
        assert all_versions(s3, shared_clone.bucket, key) == [], key
    email = (subject.email or "").lower()
    assert not [c for c in shared_clone.payments.customers() if c["email"].lower() == email]
    assert not [c for c in shared_clone.crm.contacts() if c["email"].lower() == email]
    assert shared_clone.payments.deleted_ids() and shared_clone.crm.deleted_ids()
    # The request is completed, pointing at the certificate; the certificate names no identity.
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"
    certificate_uri = run.results["close"]["result_uri"]
    assert certificate_uri.startswith(f"s3://{shared_clone.bucket}/governance/erasure-certificates/")
    body = s3.get_object(Bucket=shared_clone.bucket, Key=certificate_uri.split("/", 3)[3])["Body"].read().decode()
    for text in (subject.email, subject.e164, subject.full_name, "Maria", "López"):
        assert text and text.lower() not in body.lower()
    assert "payments_tax_records" not in body or "Tax law" in body


def test_user_who_handled_calls_leaves_the_calls_with_the_reference_cleared(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    subject = cast_member("call_handler")
    url = shared_clone.app_url
    with psycopg.connect(url) as conn:
        handled = {r[0] for r in conn.execute("SELECT id FROM app.calls WHERE handled_by_user_id = %s", (subject.user_id,))}
    assert len(handled) > 100
    before = snapshot(url)
    run = run_erasure(conf_for("call_handler"), "handler")
    plan = plan_keys(url, run.summary["plan_id"])
    d = diff(before, snapshot(url))
    _only_planned_changes(d, plan)
    assert planned(plan, "calls", "clear_mention") == handled == d["calls"]["changed"]
    assert d["calls"]["deleted"] == set()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM app.calls WHERE id = ANY(%s) AND handled_by_user_id IS NULL",
                            (list(handled),)).fetchone()[0] == len(handled)  # fmt: skip
    assert d["usage_events"]["deleted"] and subject.user_id in d["users"]["deleted"]
    assert run.results["close"]["status"] == "completed"


def test_caller_without_account_loses_calls_messages_appointments_recordings_and_crm_contact(
    shared_clone: Deployment, s3: Any  # noqa: F811
) -> None:
    subject = cast_member("caller_only")
    url = shared_clone.app_url
    recordings = recording_keys_of_callers(url, subject.caller_ids)
    assert len(recordings) == 12  # six recorded calls: recording and transcript each
    before = snapshot(url)
    run = run_erasure(conf_for("caller_only"), "caller")
    plan = plan_keys(url, run.summary["plan_id"])
    d = diff(before, snapshot(url))
    _only_planned_changes(d, plan)
    assert d["callers"]["deleted"] == set(subject.caller_ids)
    assert len(d["calls"]["deleted"]) == 6 and len(d["messages"]["deleted"]) == 3 and d["appointments"]["deleted"]
    assert d["users"]["deleted"] == set()
    for key in recordings:
        assert all_versions(s3, shared_clone.bucket, key) == [], key
    assert not [c for c in shared_clone.crm.contacts() if c["email"].lower() == (subject.email or "").lower()]
    assert run.summary["processors"] == {"payments_processor": 0, "crm": 1, "support_desk": 1}
    assert not [r for r in shared_clone.support_desk.requesters()
                if (r["email"] or "").lower() == (subject.email or "").lower()]  # fmt: skip


def test_erasing_one_user_of_a_shared_business_leaves_the_other_user_and_the_business(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    one, other = cast_member("shared_business_user_1"), cast_member("shared_business_user_2")
    url = shared_clone.app_url
    before = snapshot(url)
    run = run_erasure(conf_for("shared_business_user_1"), "shared1")
    d = diff(before, snapshot(url))
    _only_planned_changes(d, plan_keys(url, run.summary["plan_id"]))
    assert d["users"]["deleted"] == {one.user_id}
    assert other.user_id not in d["users"]["deleted"] | d["users"]["changed"]
    assert d["businesses"] == {"deleted": set(), "changed": set(), "added": set()}
    assert [c for c in shared_clone.crm.contacts() if c["email"].lower() == (other.email or "").lower()]


def test_payments_older_than_seven_years_go_and_younger_ones_stay_minimised_until_their_date(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    subject = cast_member("payer")
    url = shared_clone.app_url
    with psycopg.connect(url) as conn:
        paid = dict(conn.execute("SELECT id, paid_at FROM app.payments WHERE user_id = %s", (subject.user_id,)).fetchall())
    run = run_erasure(conf_for("payer"), "payer")
    plan = plan_keys(url, run.summary["plan_id"])
    expired = planned(plan, "payments", "delete_expired_kept_rows")
    kept = planned(plan, "payments", "minimise_kept_rows")
    assert expired | kept == set(paid) and not expired & kept
    cutoff = run.summary["as_of"]
    from datetime import datetime

    as_of = datetime.fromisoformat(cutoff)
    assert {k for k, at in paid.items() if at.replace(year=at.year + 7) <= as_of} == expired
    assert len(expired) == 12 and len(kept) == 84  # 2018-12..2019-11 past 7 years at 2026-11-28
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM app.payments WHERE id = ANY(%s)", (list(expired),)).fetchone()[0] == 0
        left = conn.execute(
            "SELECT count(*) FROM app.payments WHERE id = ANY(%s) AND user_id IS NULL AND billing_address IS NULL"
            " AND card_last4 = '****'", (list(kept),)).fetchone()[0]  # fmt: skip
    assert left == len(kept)
    [item] = [k for k in run.summary["kept"] if k["reason"] == "legal_exception"]
    assert item["count"] == 84 and item["where"] == "aircalls_app.payments"
    assert item["until"].startswith("2026-12") and item["until_latest"].startswith("2033-11")
    assert item["fields_kept"] == ["amount_cents", "processor_charge_id", "paid_at"]


def test_request_scoped_to_one_business_erases_only_that_business_rows(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    subject = cast_member("multi_business_caller")
    at_c = subject.caller_ids[subject.caller_business_ids.index(3)]
    url = shared_clone.app_url
    before = snapshot(url)
    contacts_before = len(shared_clone.crm.contacts())
    run = run_erasure(conf_for("multi_business_caller", business_id=3), "scoped")
    d = diff(before, snapshot(url))
    _only_planned_changes(d, plan_keys(url, run.summary["plan_id"]))
    assert d["callers"]["deleted"] == {at_c}
    assert run.summary["processors_skipped"] == ["payments_processor", "crm", "support_desk"]
    assert len(shared_clone.crm.contacts()) == contacts_before


def test_person_found_nowhere_gets_an_empty_plan_a_passing_verification_and_a_certificate(
    shared_clone: Deployment,  # noqa: F811
) -> None:
    before = snapshot(shared_clone.app_url)
    run = run_erasure(conf_for("no_data"), "nobody")
    assert diff(before, snapshot(shared_clone.app_url)) == {
        t: {"deleted": set(), "changed": set(), "added": set()} for t in before
    }
    assert all(v == {} or all(n == 0 for n in v.values()) for v in run.summary["tables"].values())
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"


def test_person_known_only_to_the_payments_processor_is_erased_there(shared_clone: Deployment) -> None:  # noqa: F811
    subject = cast_member("processor_only_payments")
    email = (subject.email or "").lower()
    assert [c for c in shared_clone.payments.customers() if c["email"].lower() == email]
    run = run_erasure(conf_for("processor_only_payments"), "proconly")
    assert run.summary["processors"]["payments_processor"] == 1
    assert not [c for c in shared_clone.payments.customers() if c["email"].lower() == email]
    assert run.results["processors"]["processors"]["payments_processor"]["erased"] == 1
