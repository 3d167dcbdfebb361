"""Shared helpers of the erasure tests (no tests here): a module-scoped clone of the reference
deployment, snapshots of everyone's data, and the erasure workflow run task by task."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment, cloned_deployment

APP_TABLES = (
    "businesses", "users", "callers", "calls", "messages", "appointments", "support_tickets", "payments",
    "marketing_preferences", "usage_events",
)  # fmt: skip
PK = {"marketing_preferences": "user_id"}
APPROVAL = {
    "chosen_options": ["Approve"],
    "params_input": {"verification_method": "id_document"},
    "responded_by_user": {"id": "7", "name": "privacy-officer"},
}
AS_OF = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def shared_clone(reference_deployment: Deployment, s3: Any, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One writable copy of the reference deployment for a whole module: its tests erase
    different people and each checks only what its own erasure did."""
    with cloned_deployment(reference_deployment, s3, request.module.__name__.rsplit(".", 1)[-1][5:]) as (clone, _):
        yield clone


def snapshot(url: str) -> dict[str, dict[Any, str]]:
    """Every row of every app table as a digest, by table and primary key."""
    out: dict[str, dict[Any, str]] = {}
    with psycopg.connect(url) as conn:
        for table in APP_TABLES:
            pk = PK.get(table, "id")
            rows = conn.execute(f"SELECT {pk}, md5(row_to_json(t)::text) FROM app.{table} t")  # noqa: S608 - fixed names
            out[table] = {r[0]: r[1] for r in rows}
    return out


def diff(before: dict[str, dict[Any, str]], after: dict[str, dict[Any, str]]) -> dict[str, dict[str, set[Any]]]:
    """Per table: keys deleted, changed and added between two snapshots."""
    out: dict[str, dict[str, set[Any]]] = {}
    for table in APP_TABLES:
        b, a = before[table], after[table]
        out[table] = {
            "deleted": set(b) - set(a),
            "changed": {k for k in set(b) & set(a) if b[k] != a[k]},
            "added": set(a) - set(b),
        }
    return out


def conf_for(key: str, *, email: bool = True, phone: bool = True, **extra: Any) -> dict[str, Any]:
    subject = cast_member(key)
    conf: dict[str, Any] = {}
    if email and subject.email:
        conf["email"] = subject.email
    if phone and subject.phone:
        conf["phone"] = subject.phone
    conf.update(extra)
    return conf


def run_id_for(label: str) -> str:
    return f"manual__test_{label}_{hashlib.sha256(label.encode()).hexdigest()[:6]}"


@dataclass
class ErasureRun:
    handle: dict[str, Any]
    summary: dict[str, Any]
    results: dict[str, Any]


def run_erasure(
    conf: dict[str, Any],
    label: str,
    *,
    dry_run: bool = False,
    override: bool = False,
    approval: dict[str, Any] | None = APPROVAL,
    until: str = "close",
    as_of: datetime = AS_OF,
    handle: dict[str, Any] | None = None,
) -> ErasureRun:
    """The DAG's tasks in order, as functions (what dag.test does, minus Airflow): stops after
    ``until`` (plan, database, objects, processors, verify, close)."""
    from governance.workflows import dsr_erasure as wf

    run_id = run_id_for(label)
    handle = handle or wf.open_erasure_request(conf, run_id=run_id, received_at=as_of)
    summary = wf.plan_erasure(handle, dry_run=dry_run, override=override, dag_id="dsr_erasure", run_id=run_id,
                              as_of=as_of)  # fmt: skip
    results: dict[str, Any] = {}
    run = ErasureRun(handle, summary, results)
    if until == "plan" or dry_run:
        return run
    results["database"] = wf.execute_database(summary, approval=approval, run_id=run_id)
    results["suppression"] = wf.record_suppression(summary)
    if until == "database":
        return run
    results["objects"] = wf.delete_objects(summary)
    if until == "objects":
        return run
    results["processors"] = wf.erase_processors(summary)
    if until == "processors":
        return run
    results["verify"] = wf.verify_erasure(summary)
    if until == "verify":
        return run
    results["certificate"] = wf.issue_certificate(handle, dag_id="dsr_erasure", run_id=run_id)
    results["close"] = wf.close_erasure_request(handle, run_id=run_id)
    return run


def plan_keys(url: str, plan_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT plan FROM governance.erasure_plans WHERE plan_id = %s", (plan_id,)).fetchone()
    assert row is not None
    return dict(row[0])


# The erasure plan's effects that delete a row, and those that change one (the row stays).
DELETING = ("delete_rows", "delete_expired_kept_rows", "delete_mention_only_rows")
CHANGING = ("clear_mention", "minimise_kept_rows", "rewrite_rows", "clear_mention_only_rows")


def planned(plan: dict[str, Any], table: str, *effects: str) -> set[Any]:
    """Keys the plan lists for ``app``-table ``table`` under ``effects``."""
    return {k for s in plan["database"] if s["table"] == table and s["effect"] in effects for k in s["keys"]}


def all_versions(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        keys += [v["Key"] for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
    return keys


def recording_keys_of_callers(url: str, caller_ids: tuple[int, ...]) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT business_id, id, recording_key FROM app.calls WHERE caller_id = ANY(%s) AND recording_key IS NOT NULL",
            (list(caller_ids),),
        ).fetchall()
    return [r[2] for r in rows] + [f"transcripts/{r[0]}/{r[1]}.json" for r in rows]


def identities_text(key: str) -> list[str]:
    """Strings that must never appear in logs, XCom or documents for cast member ``key``."""
    subject = cast_member(key)
    values = [v for v in (subject.email, subject.phone, subject.e164, subject.full_name, subject.caller_email) if v]
    return sorted({v for v in values} | {v.lower() for v in values})


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def processor_holdings(d: Deployment, email: str) -> dict[str, int]:
    """How many records each processor stand-in holds for ``email``, read over HTTP."""
    low = email.lower()
    return {
        "crm": sum(1 for c in d.crm.contacts() if (c.get("email") or "").lower() == low),
        "payments": sum(1 for c in d.payments.customers() if (c.get("email") or "").lower() == low),
        "support_desk": sum(1 for r in d.support_desk.requesters() if (r.get("email") or "").lower() == low),
    }


def others_in_processors(d: Deployment, email: str | None) -> str:
    """A digest of every processor record not of ``email``, read over HTTP (nobody else changes)."""
    low = (email or "").lower()

    def others(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if (r.get("email") or "").lower() != low]

    state = {"crm": others(d.crm.contacts()), "payments": others(d.payments.customers()),
             "desk": others(d.support_desk.requesters())}  # fmt: skip
    return hashlib.sha256(dumps(state).encode()).hexdigest()


@dataclass
class Before:
    """Ground truth taken before an erasure: everyone's rows, the person's objects and records."""

    rows: dict[str, dict[Any, str]]
    recordings: list[str]
    others_in_processors: str


def ground_truth_before(d: Deployment, key: str) -> Before:
    subject = cast_member(key)
    recordings = recording_keys_of_callers(d.app_url, subject.caller_ids)
    return Before(snapshot(d.app_url), recordings, others_in_processors(d, subject.email))


def assert_erased_exactly_once(
    d: Deployment, s3: Any, key: str, request_id: str, before: Before, *, ledger: bool = True
) -> None:
    """Independent SQL, boto3 and HTTP checks after an erasure request completed, whatever faults
    its runs met: the person is gone everywhere; nobody else's rows changed (only the keys of the
    one plan carried out); one certificate; one suppression entry per identity, recorded once;
    the request completed; the audit ledger (written by Airflow runs: ``ledger``) verifies against
    an anchor of its head."""
    from governance.ledger import ANCHOR_PREFIX, ledger_keyring, read_anchors, verify_ledger

    subject = cast_member(key)
    with psycopg.connect(d.app_url) as conn:
        status = conn.execute("SELECT status FROM governance.privacy_requests WHERE request_id = %s",
                              (request_id,)).fetchone()  # fmt: skip
        plans = conn.execute("SELECT plan_id, plan FROM governance.erasure_plans WHERE request_id = %s AND NOT dry_run"
                             " AND status NOT IN ('superseded', 'planned')", (request_id,)).fetchall()  # fmt: skip
        certificates = conn.execute(
            "SELECT count(*) FROM governance.erasure_certificates c JOIN governance.erasure_plans p USING (plan_id)"
            " WHERE p.request_id = %s", (request_id,)).fetchone()  # fmt: skip
        suppression = conn.execute("SELECT identity_kind, count(*) FROM governance.suppression_list"
                                   " WHERE request_id = %s GROUP BY 1 ORDER BY 1", (request_id,)).fetchall()  # fmt: skip
        users = conn.execute("SELECT count(*) FROM app.users WHERE lower(email) = lower(%s) OR id = %s",
                             (subject.email or "", subject.user_id)).fetchone()  # fmt: skip
        callers = conn.execute("SELECT count(*) FROM app.callers WHERE id = ANY(%s) OR phone = %s",
                               (list(subject.caller_ids), subject.e164 or "")).fetchone()  # fmt: skip
    assert status == ("completed",)
    assert len(plans) == 1, "one plan carried out, whatever the number of runs"
    assert certificates == (1,), "one certificate"
    kinds = sorted(k for k, v in (("email", subject.email), ("phone", subject.phone)) if v)
    assert suppression == [(k, 1) for k in kinds], "one suppression entry per identity"
    assert users == (0,) and callers == (0,), "the person is gone from the app database"
    for version_key in before.recordings:
        assert not all_versions(s3, d.bucket, version_key), "every version of the person's objects is gone"
    if subject.email:
        assert processor_holdings(d, subject.email) == {"crm": 0, "payments": 0, "support_desk": 0}
    assert others_in_processors(d, subject.email) == before.others_in_processors, "nobody else's records changed"
    plan = dict(plans[0][1])
    change = diff(before.rows, snapshot(d.app_url))
    for table, c in change.items():  # nobody else's fingerprint changed
        assert c["added"] == set(), table
        assert c["deleted"] == planned(plan, table, *DELETING), table
        assert c["changed"] == planned(plan, table, *CHANGING), table
    if not ledger:
        return
    with psycopg.connect(d.app_url) as conn:
        report = verify_ledger(conn, ledger_keyring(), read_anchors(s3, d.bucket), anchor_store=d.bucket)
    assert report.ok and report.rows > 0 and not report.unanchored, report.summary()
    assert any(o["Key"].startswith(ANCHOR_PREFIX) for o in s3.list_objects_v2(Bucket=d.bucket).get("Contents", []))
