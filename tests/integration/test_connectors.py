"""Connectors run the data map's plans against the real systems of the reference deployment.

Ground truth is computed here independently, with hand-written SQL over the seeded tables, the
S3 server and the stand-ins' state, and compared with what resolution finds.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from governance.connectors import UnsupportedSystemKind, connector_module
from governance.connectors.objects import delete_everywhere, existing
from governance.connectors.postgres import resolve_in_database, stream_table
from governance.connectors.processors import ProcessorClient, ProcessorUnavailable
from governance.datamap import load_datamap
from governance.datamap.model import TableRef
from governance.datamap.plans import build_resolution_plan
from governance.identity import SubjectIdentities
from governance.resolution import plan_systems, system_snapshots
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment


def _subject(key: str, *, email: bool = True, phone: bool = True) -> SubjectIdentities:
    member = cast_member(key)
    return SubjectIdentities.parse(email=member.email if email else None, phone=member.phone if phone else None, region="US")


def _resolve(deployment: Deployment, subject: SubjectIdentities, scope: list[int] | None = None) -> Any:
    datamap = load_datamap()
    plan = build_resolution_plan(datamap, [k for k, _ in subject.items()], business_scope=scope is not None)
    with system_snapshots(datamap, plan_systems(plan), deployment.conninfo_for) as conns:
        return datamap, resolve_in_database(conns, plan, subject, datamap=datamap, scope_ids=scope)


def test_resolution_finds_exactly_the_rows_hand_written_sql_finds(reference_deployment: Deployment) -> None:
    member = cast_member("both_user_and_caller")
    subject = _subject("both_user_and_caller")
    _datamap, footprint = _resolve(reference_deployment, subject)
    with psycopg.connect(reference_deployment.app_url) as conn:
        users = [r[0] for r in conn.execute(
            "SELECT id FROM app.users WHERE lower(email) = %s OR phone_e164 = %s ORDER BY id",
            (subject.email, subject.phone))]  # fmt: skip
        callers = [r[0] for r in conn.execute(
            "SELECT id FROM app.callers WHERE phone = %s OR lower(email) = %s ORDER BY id",
            (subject.phone, subject.email))]  # fmt: skip
        calls = [r[0] for r in conn.execute(
            "SELECT id FROM app.calls WHERE caller_id = ANY(%s) ORDER BY id", (callers,))]  # fmt: skip
        events = conn.execute("SELECT count(*) FROM app.usage_events WHERE user_id = ANY(%s)", (users,)).fetchone()[0]
        handled = [r[0] for r in conn.execute(
            "SELECT id FROM app.calls WHERE handled_by_user_id = ANY(%s) ORDER BY id", (users,))]  # fmt: skip
    assert users == [member.user_id] and set(callers) == set(member.caller_ids)
    assert footprint.tables[TableRef("aircalls_app", "users")].keys == users
    assert footprint.tables[TableRef("aircalls_app", "callers")].keys == callers
    assert footprint.tables[TableRef("aircalls_app", "calls")].keys == calls
    assert footprint.tables[TableRef("aircalls_app", "usage_events")].count == events
    mention = {f"{m.step.edge.child}.{m.step.edge.field}": m.keys for m in footprint.mentions}
    assert mention["aircalls_app.calls.handled_by_user_id"] == handled
    assert "maria" not in repr(footprint.counts()).lower()
    # The analytics warehouse (another database): its facts and sessions reach the person only
    # through the app's ids found above; its marketing audience by e-mail.
    with psycopg.connect(reference_deployment.warehouse_url) as wh:
        facts = [r[0] for r in wh.execute(
            "SELECT call_id FROM analytics.call_facts WHERE call_id = ANY(%s) ORDER BY 1", (calls,))]  # fmt: skip
        sessions = [r[0] for r in wh.execute(
            "SELECT id FROM analytics.user_sessions WHERE user_id = ANY(%s) ORDER BY 1", (users,))]  # fmt: skip
        audience = [r[0] for r in wh.execute(
            "SELECT id FROM analytics.marketing_audience WHERE lower(email) = %s ORDER BY 1", (subject.email,))]  # fmt: skip
    assert facts == calls and sessions and audience
    assert footprint.tables[TableRef("aircalls_warehouse", "call_facts")].keys == facts
    assert footprint.tables[TableRef("aircalls_warehouse", "user_sessions")].keys == sessions
    assert footprint.tables[TableRef("aircalls_warehouse", "marketing_audience")].keys == audience


def test_identity_variants_resolve_to_the_same_rows(reference_deployment: Deployment) -> None:
    member = cast_member("both_user_and_caller")
    typed = SubjectIdentities.parse(email=member.email, phone=member.phone, region="US")
    shouted = SubjectIdentities.parse(email=f"  {(member.email or '').upper()} ", phone=f"+1 {member.e164[2:]}", region="US")  # type: ignore[index]
    _dm, first = _resolve(reference_deployment, typed)
    _dm, second = _resolve(reference_deployment, shouted)
    assert first.counts() == second.counts() and not first.is_empty


def test_business_scope_limits_resolution_to_that_business(reference_deployment: Deployment) -> None:
    member = cast_member("multi_business_caller")
    subject = SubjectIdentities.parse(phone=member.phone, region="US")
    one_business = member.caller_business_ids[0]
    _dm, scoped = _resolve(reference_deployment, subject, scope=[one_business])
    _dm, everywhere = _resolve(reference_deployment, subject)
    callers = TableRef("aircalls_app", "callers")
    assert len(everywhere.tables[callers].keys) == 3
    with psycopg.connect(reference_deployment.app_url) as conn:
        expected = [r[0] for r in conn.execute(
            "SELECT id FROM app.callers WHERE phone = %s AND business_id = %s", (member.e164, one_business))]  # fmt: skip
    assert scoped.tables[callers].keys == expected


def test_object_keys_of_resolved_calls_exist_in_the_bucket(reference_deployment: Deployment, s3: Any) -> None:
    _dm, footprint = _resolve(reference_deployment, _subject("caller_only"))
    keys = footprint.object_keys()
    all_keys = [k for ks in keys.values() for k in ks]
    assert all_keys, "the caller_only subject has recorded calls"
    found, missing = existing(s3, reference_deployment.bucket, all_keys)
    assert missing == [] and len(found) == len(all_keys)


def test_streaming_export_yields_every_mapped_column_of_exactly_the_resolved_rows(
    reference_deployment: Deployment,
) -> None:
    datamap = load_datamap()
    subject = _subject("caller_only")
    plan = build_resolution_plan(datamap, ["email", "phone"])
    calls = TableRef("aircalls_app", "calls")
    with system_snapshots(datamap, plan_systems(plan), reference_deployment.conninfo_for) as conns:
        footprint = resolve_in_database(conns, plan, subject, datamap=datamap)
        batches = list(stream_table(conns["aircalls_app"], datamap, footprint, calls, batch_rows=3))
    columns = batches[0][0]
    rows = [row for _cols, batch in batches for row in batch]
    assert columns == datamap.table(calls).field_names
    assert sorted(r[0] for r in rows) == footprint.tables[calls].keys
    assert len(batches) > 1, "small batches prove the server-side cursor streams"


def test_processor_lookup_finds_the_person_and_survives_transient_failures(reference_clone: Deployment) -> None:
    datamap = load_datamap()
    processor = next(p for p in datamap.processors if p.name == "payments_processor")
    subject = _subject("processor_only_payments", phone=False)
    reference_clone.payments.set_fault("error", status=503, count=2)
    with ProcessorClient(processor, backoff_s=0.01) as client:
        records = client.lookup(subject)
        assert len(records) == 1
        exported = client.export(records[0].record_id)
        assert exported["customer"][0]["id"] == records[0].record_id
        assert client.erase(records[0].record_id) == "erased"
        assert client.erase(records[0].record_id) == "absent"  # idempotent
    assert records[0].record_id in reference_clone.payments.deleted_ids()


def test_processor_down_fails_clearly_without_the_identity_in_the_message(reference_clone: Deployment) -> None:
    datamap = load_datamap()
    processor = next(p for p in datamap.processors if p.name == "crm")
    subject = _subject("caller_only", phone=False)
    reference_clone.crm.set_fault("error", status=503)
    with ProcessorClient(processor, attempts=3, backoff_s=0.01) as client:
        with pytest.raises(ProcessorUnavailable, match="crm lookup: still failing after 3 attempts") as info:
            client.lookup(subject)
    assert "kenji" not in str(info.value).lower() and "@" not in str(info.value)


def test_versioned_delete_removes_every_version_and_is_idempotent(s3: Any, make_bucket: Any) -> None:
    bucket = make_bucket("versions")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two", b"three"):
        s3.put_object(Bucket=bucket, Key="recordings/1/7.wav", Body=body)
    s3.put_object(Bucket=bucket, Key="recordings/1/70.wav", Body=b"a neighbour sharing the prefix")
    assert delete_everywhere(s3, bucket, ["recordings/1/7.wav"]) == 1
    versions = s3.list_object_versions(Bucket=bucket)
    left = {v["Key"] for v in versions.get("Versions", [])} | {m["Key"] for m in versions.get("DeleteMarkers", [])}
    assert left == {"recordings/1/70.wav"}
    assert delete_everywhere(s3, bucket, ["recordings/1/7.wav"]) == 0


def test_a_system_kind_without_connector_names_the_registry() -> None:
    with pytest.raises(UnsupportedSystemKind, match="add one to governance.connectors.SYSTEM_KINDS"):
        connector_module("mongodb")


# --------------------------------------------------------------------------------------------
# Hooks: every kind of system through its provider hook, connection from Airflow


def test_each_kind_of_system_passes_test_connection_through_its_hook(reference_env: Deployment) -> None:
    from governance.connectors.base import DatabaseConnector, ObjectStoreConnector, processor_connector

    datamap = load_datamap()
    for system in datamap.postgres_systems:
        assert DatabaseConnector(system.connection_id).test()[0], system.name
    for system in datamap.object_systems:
        ok, message = ObjectStoreConnector(system.connection_id, reference_env.bucket).test()
        assert ok, message
    for processor in datamap.processors:
        with processor_connector(processor) as connector:
            ok, message = connector.test()
            assert ok, f"{processor.name}: {message}"


def test_test_connection_fails_for_bad_credentials_and_unknown_connections(
    reference_env: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from governance.connections import ConnectionNotConfigured
    from governance.connectors.base import processor_connector
    from governance.db import conninfo_for

    datamap = load_datamap()
    desk = datamap.processor("support_desk")
    crm = datamap.processor("crm")
    assert desk is not None and crm is not None
    monkeypatch.setenv("AIRFLOW_CONN_SUPPORT_DESK", json.dumps(
        {"conn_type": "http", "host": reference_env.support_desk.url, "login": "governance", "password": "wrong"}))
    monkeypatch.setenv("AIRFLOW_CONN_CRM", json.dumps(
        {"conn_type": "http", "host": reference_env.crm.url, "password": "wrong"}))
    for processor in (desk, crm):
        with processor_connector(processor, attempts=1) as connector:
            assert connector.test()[0] is False, processor.name
    with pytest.raises(ConnectionNotConfigured, match="AIRFLOW_CONN_NO_SUCH_DB"):
        conninfo_for("no_such_db")


def test_postgres_hook_takes_extras_and_never_logs_parameters(
    reference_env: Deployment, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import json

    from governance.db import hook_connection, postgres_hook

    pg = reference_env.pg
    monkeypatch.setenv("AIRFLOW_CONN_EXTRAS_DB", json.dumps(
        {"conn_type": "postgres", "host": pg.host, "port": pg.port, "login": "postgres", "schema": reference_env.database,
         "extra": {"sslmode": "disable", "connect_timeout": 7, "options": "-c statement_timeout=12345"}}))  # fmt: skip
    hook = postgres_hook("extras_db", application_name="governance-test")
    info = psycopg.conninfo.conninfo_to_dict(hook.conninfo())
    assert (info["sslmode"], info["connect_timeout"], info["application_name"]) == ("disable", "7", "governance-test")
    with psycopg.connect(hook.conninfo()) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "12345ms"
    with hook_connection("extras_db") as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == reference_env.database
    secret = "kenji.watanabe@example.org"
    capfd.readouterr()
    hook.log_sql = True  # even when statements are logged (Airflow logs go to the console here), parameters are not
    hook.run("SELECT count(*) FROM app.users WHERE lower(email) = lower(%s)", parameters=(secret,))
    out, err = capfd.readouterr()
    assert "parameters not logged" in out + err and secret not in out + err


def test_s3_hook_client_honours_the_connection(reference_env: Deployment) -> None:
    from governance.objectstore import s3_client, s3_hook

    client = s3_client("aircalls_objects")
    assert client.meta.endpoint_url == reference_env.s3_endpoint
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.head_bucket(Bucket=reference_env.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert type(s3_hook("aircalls_objects")).__name__ == "S3Hook"


def test_templated_processor_goes_through_the_http_hook(reference_env: Deployment) -> None:
    from governance.connectors.processors import ProcessorHook

    datamap = load_datamap()
    crm = datamap.processor("crm")
    assert crm is not None
    with ProcessorClient(crm) as client:
        assert isinstance(client.hook, ProcessorHook) and client.base_url == reference_env.crm.url.rstrip("/")
        assert client.lookup(_subject("caller_only", phone=False))


# --------------------------------------------------------------------------------------------
# The escape hatch: a Python connector (support_desk: OAuth2 tokens, asynchronous erasure jobs)


def test_support_desk_connector_looks_up_exports_and_erases_through_a_polled_job(reference_clone: Deployment) -> None:
    from governance.connectors.base import processor_connector
    from governance.connectors.support_desk import SupportDeskConnector

    datamap = load_datamap()
    processor = datamap.processor("support_desk")
    assert processor is not None and processor.connector == "python"
    member = cast_member("both_user_and_caller")
    desk = reference_clone.support_desk
    desk.polls_to_complete = 3
    with processor_connector(processor, poll_interval_s=0.01) as connector:
        assert isinstance(connector, SupportDeskConnector)
        [record] = connector.lookup(_subject("both_user_and_caller"))
        assert (record.document["email"] or "").lower() == (member.email or "").lower()
        assert connector.export(record.record_id)["requester"][0]["id"] == int(record.record_id)
        desk.expire_tokens()  # a token that expires between calls is refreshed
        assert connector.erase(record.record_id) == "erased"
        assert connector.verify(_subject("both_user_and_caller")) == []
    jobs = desk.jobs()
    assert [(j["requester_id"], j["status"], j["polls"]) for j in jobs] == [(int(record.record_id), "completed", 3)]
    with processor_connector(processor, poll_interval_s=0.01) as again:  # a retried task
        assert again.erase(record.record_id) == "absent"
    assert desk.jobs() == jobs, "a retry of a finished job starts nothing and polls nothing"
    assert desk.state()["tokens_issued"] >= 2
    requests_log = desk.request_log()
    assert not any("@" in entry["path"] for entry in requests_log), "identities travel in request bodies"
