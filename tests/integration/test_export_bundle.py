"""The export bundle writer and its quality gate against the seeded reference deployment.

Ground truth is computed here independently of the data map: hand-written SQL per table, the S3
server's own listing and bytes, and the processor stand-ins' state. The bundle is written to a
fresh bucket, read back, decrypted and compared with it. The gate is shown to pass on good
bundles and to fail on a planted extra row, a planted missing row and a corrupted file.

Two callers of one business sharing a household phone (``household_a`` with an e-mail,
``household_b`` without) show the narrowing to one person: named by e-mail and phone,
``household_a`` gets only their own rows; the phone alone is refused before anything is read from
a processor or written; and a planted row of the neighbour fails the gate.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from airflow.sdk import Connection

from governance.connectors.base import processor_connector
from governance.connectors.processors import ProcessorClient, ProcessorUnavailable
from governance.crypto import IdentityHasher, Keyring, new_key_b64
from governance.datamap import load_datamap
from governance.datamap.model import DataMap
from governance.export import age
from governance.export.collect import (
    AmbiguousSubject,
    BundleSummary,
    ExportSubject,
    ExportTargets,
    export_bundle_to_s3,
)
from governance.export.gate import GateResult, check_bundle
from governance.identity import SubjectIdentities
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment

pytestmark = pytest.mark.integration

PASSPHRASE = "TEST-PASS-PHRASE-0001"
APP_TABLES = ("users", "callers", "calls", "messages", "appointments", "support_tickets", "payments",
              "marketing_preferences", "usage_events")  # fmt: skip
PRIMARY_KEY = {"marketing_preferences": "user_id", "call_facts": "call_id"}
WAREHOUSE_TABLES = ("call_facts", "user_sessions", "marketing_audience")
HASHER = IdentityHasher(Keyring.from_parts("test-gate", new_key_b64()))


# --------------------------------------------------------------------------------------------
# Ground truth, independent of the data map


def ground_truth_rows(url: str, *, email: str | None, e164: str | None, business: int | None = None) -> dict[str, set[int]]:
    """Primary keys of every app row of the person, by hand-written SQL."""
    email = email.strip().lower() if email else None
    scope = " AND business_id = %(b)s" if business else ""
    p: dict[str, Any] = {"email": email, "phone": e164, "b": business}
    with psycopg.connect(url) as conn:

        def ids(query: str, **extra: Any) -> set[int]:
            return {r[0] for r in conn.execute(query, {**p, **extra})}

        users = ids(f"SELECT id FROM app.users WHERE (lower(email) = %(email)s OR phone_e164 = %(phone)s){scope}")  # noqa: S608
        callers = ids(f"SELECT id FROM app.callers WHERE (phone = %(phone)s OR lower(email) = %(email)s){scope}")  # noqa: S608
        truth = {"users": users, "callers": callers}
        for table in ("calls", "messages", "appointments"):
            truth[table] = ids(f"SELECT id FROM app.{table} WHERE caller_id = ANY(%(c)s){scope}", c=list(callers))  # noqa: S608
        # Messages the user wrote with no caller (staff-only) are theirs too (export: include);
        # one with a caller is the caller's, never the user's.
        truth["messages"] |= ids(f"SELECT id FROM app.messages WHERE user_id = ANY(%(u)s) AND caller_id IS NULL{scope}",  # noqa: S608
                                 u=list(users))  # fmt: skip
        truth["payments"] = ids(f"SELECT id FROM app.payments WHERE user_id = ANY(%(u)s){scope}", u=list(users))  # noqa: S608
        for table in ("support_tickets", "usage_events"):
            truth[table] = ids(f"SELECT id FROM app.{table} WHERE user_id = ANY(%(u)s)", u=list(users))  # noqa: S608
        truth["marketing_preferences"] = ids(
            "SELECT user_id FROM app.marketing_preferences WHERE user_id = ANY(%(u)s)", u=list(users)
        )
    return truth


def ground_truth_objects(url: str, s3: Any, bucket: str, call_ids: set[int]) -> dict[str, bytes]:
    """``{key: bytes}`` of the recordings and transcripts of these calls, from the S3 server."""
    if not call_ids:
        return {}
    with psycopg.connect(url) as conn:
        businesses = {r[0] for r in conn.execute("SELECT DISTINCT business_id FROM app.calls WHERE id = ANY(%s)",
                                                 (list(call_ids),))}  # fmt: skip
    out: dict[str, bytes] = {}
    for prefix in ("recordings", "transcripts"):
        for business in businesses:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{business}/"):
                for obj in page.get("Contents", []):
                    call_id = int(obj["Key"].rsplit("/", 1)[-1].split(".")[0])
                    if call_id in call_ids:
                        out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def ground_truth_processors(deployment: Deployment, email: str | None) -> dict[str, set[str]]:
    """Record ids each processor stand-in holds for the e-mail (case-insensitive)."""
    if not email:
        return {"payments_processor": set(), "crm": set(), "charges": set(), "support_desk": set()}
    wanted = email.strip().lower()
    customers = {c["id"] for c in deployment.payments.customers() if (c.get("email") or "").lower() == wanted}
    charges = {c["id"] for c in deployment.payments.charges() if c.get("customer") in customers}
    contacts = {str(c["id"]) for c in deployment.crm.contacts() if (c.get("email") or "").lower() == wanted}
    requesters = {str(r["id"]) for r in deployment.support_desk.requesters() if (r.get("email") or "").lower() == wanted}
    return {"payments_processor": customers, "crm": contacts, "charges": charges, "support_desk": requesters}


# --------------------------------------------------------------------------------------------
# Writing and reading bundles


def targets_for(deployment: Deployment, s3: Any) -> ExportTargets:
    infos = {
        "payments_processor": Connection(conn_id="payments_processor", conn_type="http", host=deployment.payments.url,
                                             password=deployment.payments.api_key),
        "crm": Connection(conn_id="crm", conn_type="http", host=deployment.crm.url, password=deployment.crm.api_key),
        "support_desk": Connection(conn_id="support_desk", conn_type="http", host=deployment.support_desk.url,
                                   login="governance", password=deployment.support_desk.api_key),
    }  # fmt: skip
    return ExportTargets(
        conninfo_for=deployment.conninfo_for,
        s3_for=lambda _conn_id: s3,
        processor_client_for=lambda p: processor_connector(p, infos[p.name], attempts=2, backoff_s=0.01),
    )


def subject_of(key: str, *, email: str | None = "typed", phone: str | None = "typed",
               business: int | None = None, request_id: str = "exp-20260115-00000000000a") -> ExportSubject:  # fmt: skip
    member = cast_member(key)
    return ExportSubject(
        request_id=request_id,
        identities=SubjectIdentities.parse(
            email=member.email if email == "typed" else email, phone=member.phone if phone == "typed" else phone, region="US"
        ),
        received_on=date(2026, 1, 15),
        business_scope=(business,) if business else None,
    )


def write(datamap: DataMap, subject: ExportSubject, deployment: Deployment, s3: Any, bucket: str, key: str,
          formats: tuple[str, ...] = ("json", "csv")) -> BundleSummary:  # fmt: skip
    return export_bundle_to_s3(
        datamap, subject, formats=formats, targets=targets_for(deployment, s3), s3=s3,  # type: ignore[arg-type]
        bucket=bucket, key=key, passphrase=PASSPHRASE, generated_at=datetime.now(UTC),
    )  # fmt: skip


def read_bundle(s3: Any, bucket: str, key: str, passphrase: str = PASSPHRASE) -> zipfile.ZipFile:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    plain = io.BytesIO()
    age.decrypt_to(body, plain, passphrase)
    plain.seek(0)
    return zipfile.ZipFile(plain)


@contextmanager
def files_written() -> Iterator[list[str]]:
    """Paths of the files this process opens for writing inside the block (a Python audit hook:
    it sees every ``open``, including zipfile's and tempfile's)."""
    written: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event == "open" and isinstance(args[0], str) and args[1] and set(str(args[1])) & set("wax+"):
            written.append(args[0])

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one goes quiet after the block
    try:
        yield written
    finally:
        active[0] = False


def warehouse_ground_truth(url: str, truth: dict[str, set[int]], *, email: str | None,
                           business: int | None = None) -> dict[str, set[int]]:  # fmt: skip
    """Primary keys of the person's warehouse rows, by hand-written SQL: through the app's ids
    the app ground truth found (calls, users), and by e-mail."""
    email = email.strip().lower() if email else None
    scope = " AND business_id = %(b)s" if business else ""
    with psycopg.connect(url) as conn:

        def ids(query: str, **extra: Any) -> set[int]:
            return {r[0] for r in conn.execute(query, {"b": business, **extra})}

        return {
            "call_facts": ids(f"SELECT call_id FROM analytics.call_facts WHERE call_id = ANY(%(c)s){scope}",  # noqa: S608
                              c=sorted(truth["calls"])),
            "user_sessions": ids(f"SELECT id FROM analytics.user_sessions WHERE user_id = ANY(%(u)s){scope}",  # noqa: S608
                                 u=sorted(truth["users"])),
            "marketing_audience": ids(
                f"SELECT id FROM analytics.marketing_audience WHERE lower(email) = %(e)s{scope}", e=email),  # noqa: S608
        }  # fmt: skip


def bundle_rows(archive: zipfile.ZipFile, table: str, system: str = "aircalls_app") -> list[dict[str, Any]]:
    name = f"data/{system}/{table}.json"
    if name not in archive.namelist():
        return []
    return json.loads(archive.read(name))


def bundle_keys(archive: zipfile.ZipFile, table: str, system: str = "aircalls_app") -> set[int]:
    return {int(r[PRIMARY_KEY.get(table, "id")]) for r in bundle_rows(archive, table, system)}


def gate(datamap: DataMap, summary: BundleSummary, subject: ExportSubject, s3: Any, bucket: str, key: str,
         ciphertext: tuple[str, int] | None = None) -> GateResult:  # fmt: skip
    return check_bundle(
        datamap=datamap, s3=s3, bucket=bucket, key=key, passphrase=PASSPHRASE, request_id=subject.request_id,
        source_counts=summary.source_counts,
        expected_ciphertext=ciphertext or (summary.ciphertext_sha256, summary.ciphertext_bytes),
        expected_files_digest=summary.files_digest, expected_formats=summary.formats,
        identities=list(subject.identities.items()), token_for=HASHER.hash,
        scope_ids=list(subject.business_scope) if subject.business_scope else None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(reference_deployment: Deployment) -> Iterator[Deployment]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GOVERNANCE_OBJECTS_BUCKET", reference_deployment.bucket)
        yield reference_deployment


@pytest.fixture(scope="module")
def datamap() -> DataMap:
    return load_datamap()


@pytest.fixture
def out_bucket(make_bucket: Any) -> str:
    return str(make_bucket("export-out"))


def assert_matches_ground_truth(archive: zipfile.ZipFile, deployment: Deployment, s3: Any, *, email: str | None,
                                e164: str | None, business: int | None = None) -> dict[str, set[int]]:  # fmt: skip
    truth = ground_truth_rows(deployment.app_url, email=email, e164=e164, business=business)
    for table in APP_TABLES:
        assert bundle_keys(archive, table) == truth[table], table
        csv_name = f"data/aircalls_app/{table}.csv"
        if truth[table]:
            assert archive.read(csv_name).decode().count("\r\n") == len(truth[table]) + 1, table
    # The analytics warehouse (another database): what the app's ids and the e-mail reach there.
    warehouse = warehouse_ground_truth(deployment.warehouse_url, truth, email=email, business=business)
    for table in WAREHOUSE_TABLES:
        assert bundle_keys(archive, table, "aircalls_warehouse") == warehouse[table], table
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["systems"]["aircalls_app"]["rows"] == sum(len(truth[t]) for t in APP_TABLES)
    assert manifest["systems"].get("aircalls_warehouse", {}).get("rows", 0) == sum(map(len, warehouse.values()))
    objects = ground_truth_objects(deployment.app_url, s3, deployment.bucket, truth["calls"])
    in_bundle = {n.split("/", 2)[2]: n for n in archive.namelist() if n.startswith("files/")}
    assert set(in_bundle) == set(objects)
    for key, data in objects.items():
        assert archive.read(in_bundle[key]) == data, f"{key} is byte-identical"
    processors = ground_truth_processors(deployment, email) if not business else {"payments_processor": set(),
                                                                                  "crm": set(), "charges": set(),
                                                                                  "support_desk": set()}  # fmt: skip
    for name in ("payments_processor", "crm", "support_desk"):
        folders = {n.split("/")[2] for n in archive.namelist() if n.startswith(f"processors/{name}/")}
        assert folders == processors[name], name
    charges = {c["id"] for n in archive.namelist() if n.endswith("/charges.json") for c in json.loads(archive.read(n))}
    assert charges == processors["charges"]
    return truth


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(
    ("key", "email", "phone"),
    [
        pytest.param("both_user_and_caller", "  MARIA.LOPEZ@example.COM ", "+1 415.555.0132", id="user-and-caller-variants"),
        pytest.param("caller_only", None, "(628) 555-0141", id="caller-found-by-phone-only"),
        pytest.param("processor_only_payments", "typed", None, id="only-in-one-processor"),
        pytest.param("payer", "typed", "typed", id="payer-with-many-pages-of-charges"),
    ],
)
def test_bundle_holds_exactly_what_ground_truth_finds_and_passes_the_gate(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, key: str, email: str | None, phone: str | None
) -> None:
    member = cast_member(key)
    subject = subject_of(key, email=email, phone=phone)
    summary = write(datamap, subject, env, s3, out_bucket, "exports/x/bundle.zip.age")
    archive = read_bundle(s3, out_bucket, "exports/x/bundle.zip.age")
    truth = assert_matches_ground_truth(
        archive, env, s3, email=subject.identities.email, e164=member.e164 if subject.identities.phone else None
    )
    assert summary.found_data
    assert summary.bundle_counts["aircalls_app.calls"] == len(truth["calls"])
    manifest = json.loads(archive.read("manifest.json"))
    assert {f["path"] for f in manifest["files"]} == set(archive.namelist()) - {"manifest.json"}
    index = archive.read("index.html").decode()
    assert "Your data held by aircalls.ai" in index
    for identity in (member.email, member.phone, member.e164, member.full_name):
        if identity:
            assert identity.lower() not in index.lower() and identity not in json.dumps(manifest)
    with files_written() as written:
        result = gate(datamap, summary, subject, s3, out_bucket, "exports/x/bundle.zip.age")
    assert result.passed, result.describe_failures()
    assert written and all(path.endswith(".age") for path in written), f"plaintext reached the disk: {written}"
    if key == "payer":
        assert len(ground_truth_processors(env, member.email)["charges"]) > 10, "more than one page of charges"


def test_business_scoped_bundle_holds_only_that_business_and_no_processor_data(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    member = cast_member("multi_business_caller")
    business = member.caller_business_ids[0]
    subject = subject_of("multi_business_caller", business=business)
    summary = write(datamap, subject, env, s3, out_bucket, "b.zip.age", formats=("html",))
    archive = read_bundle(s3, out_bucket, "b.zip.age")
    everywhere = ground_truth_rows(env.app_url, email=member.email, e164=member.e164)
    truth = ground_truth_rows(env.app_url, email=member.email, e164=member.e164, business=business)
    assert truth["callers"] and truth["callers"] < everywhere["callers"], "other businesses' caller rows exist"
    html_calls = archive.read("data/aircalls_app/calls.html").decode().count("<tr><td")
    assert html_calls == len(truth["calls"])
    assert not [n for n in archive.namelist() if n.startswith("processors/")]
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["business_scope"] == [business]
    assert manifest["processors"]["crm"]["searched"] is False
    result = gate(datamap, summary, subject, s3, out_bucket, "b.zip.age")
    assert result.passed, result.describe_failures()


def test_a_subject_with_no_data_gets_a_valid_bundle_that_says_so(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    subject = subject_of("no_data")
    summary = write(datamap, subject, env, s3, out_bucket, "n.zip.age")
    archive = read_bundle(s3, out_bucket, "n.zip.age")
    assert sorted(archive.namelist()) == ["index.html", "manifest.json"]
    assert "found no data about you" in archive.read("index.html").decode()
    assert json.loads(archive.read("manifest.json"))["found_data"] is False
    assert not summary.found_data
    assert gate(datamap, summary, subject, s3, out_bucket, "n.zip.age").passed


def test_writing_again_gives_the_same_manifest_hashes_apart_from_the_generation_time(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    subject = subject_of("caller_only")
    first = write(datamap, subject, env, s3, out_bucket, "1.zip.age")
    second = write(datamap, subject, env, s3, out_bucket, "2.zip.age")
    one = json.loads(read_bundle(s3, out_bucket, "1.zip.age").read("manifest.json"))
    two = json.loads(read_bundle(s3, out_bucket, "2.zip.age").read("manifest.json"))
    assert one.pop("generated_at") != two.pop("generated_at")
    assert one == two
    assert first.files_digest == second.files_digest
    assert first.ciphertext_sha256 != second.ciphertext_sha256, "a fresh file key and nonce every time"


def test_gate_fails_on_a_planted_extra_row_of_another_person_of_the_same_business(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    member = cast_member("shared_business_user_1")
    other = cast_member("shared_business_user_2")
    with psycopg.connect(env.app_url) as conn:
        planted = conn.execute("SELECT * FROM app.users WHERE id = %s", (other.user_id,)).fetchone()
    original = collect.stream_table

    def with_extra_row(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        for columns, batch in original(conn, dm, footprint, table, **kw):
            yield columns, [*batch, planted] if table.table == "users" else batch

    monkeypatch.setattr(collect, "stream_table", with_extra_row)
    import governance.export.gate as gate_module

    bound: dict[str, Any] = {}
    run_suites = gate_module._run_suites

    def capture(frames: Any, *, allowed: set[str], scope_ids: Any) -> Any:
        bound.update(frames=frames, allowed=allowed)
        return run_suites(frames, allowed=allowed, scope_ids=scope_ids)

    monkeypatch.setattr(gate_module, "_run_suites", capture)
    subject = subject_of("shared_business_user_1")
    summary = write(datamap, subject, env, s3, out_bucket, "x.zip.age")
    result = gate(datamap, summary, subject, s3, out_bucket, "x.zip.age")
    fed_to_gx = json.dumps({"params": sorted(bound["allowed"]), "ties": bound["frames"].ties}).lower()
    for identity in (member.email, member.full_name, member.e164, other.email, other.full_name, other.e164):
        assert identity and identity.lower() not in fed_to_gx, "only hashes, ids and keys are bound to GX"
    assert not result.passed
    failed = {(c.suite, c.expectation) for c in result.failed()}
    assert ("ties", "expect_column_values_to_be_in_set") in failed
    assert ("counts", "expect_column_pair_values_to_be_equal") in failed
    text = json.dumps(result.to_dict())
    for identity in (member.email, other.email, other.full_name, other.e164):
        assert identity and identity.lower() not in text.lower(), "GX results carry no identity"
    assert "id:email:" in text, "the unexpected value is a keyed hash"


def test_gate_fails_on_a_planted_missing_row(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    original = collect.stream_table

    def without_first_message(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        dropped = False
        for columns, batch in original(conn, dm, footprint, table, **kw):
            if table.table == "messages" and not dropped:
                batch, dropped = batch[1:], True
            yield columns, batch

    monkeypatch.setattr(collect, "stream_table", without_first_message)
    subject = subject_of("caller_only")
    summary = write(datamap, subject, env, s3, out_bucket, "m.zip.age")
    result = gate(datamap, summary, subject, s3, out_bucket, "m.zip.age")
    assert not result.passed
    counts = [c for c in result.failed() if c.suite == "counts"]
    assert counts and counts[0].unexpected_count >= 1
    assert {c.suite for c in result.failed()} == {"counts"}


def test_gate_fails_on_a_corrupted_file_in_the_written_bundle(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    subject = subject_of("caller_only")
    summary = write(datamap, subject, env, s3, out_bucket, "c.zip.age")
    good = read_bundle(s3, out_bucket, "c.zip.age")
    victim = next(n for n in good.namelist() if n.endswith(".wav"))
    tampered = io.BytesIO()
    with zipfile.ZipFile(tampered, "w") as out:
        for info in good.infolist():
            data = good.read(info.filename)
            if info.filename == victim:
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            out.writestr(info, data)
    sealed = age.encrypt_bytes(tampered.getvalue(), PASSPHRASE)
    s3.put_object(Bucket=out_bucket, Key="c.zip.age", Body=sealed)
    import hashlib

    # The writer "uploaded" the tampered object: only the file checksum can catch it.
    result = gate(datamap, summary, subject, s3, out_bucket, "c.zip.age",
                  ciphertext=(hashlib.sha256(sealed).hexdigest(), len(sealed)))  # fmt: skip
    assert not result.passed
    failed = result.failed()
    assert [(c.suite, c.columns) for c in failed] == [("files", "manifest_sha256,bundle_sha256")]
    assert failed[0].unexpected_count == 1
    # And with the writer's own record, the swapped object itself is caught too.
    assert not gate(datamap, summary, subject, s3, out_bucket, "c.zip.age").passed


def test_a_processor_that_stays_down_fails_the_export_and_leaves_no_object(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    from governance_dev.services import free_port

    dead = Connection(conn_id="crm", conn_type="http", host=f"http://127.0.0.1:{free_port()}", password="x")
    targets = targets_for(env, s3)
    down = ExportTargets(
        conninfo_for=targets.conninfo_for,
        s3_for=targets.s3_for,
        processor_client_for=lambda p: ProcessorClient(p, dead, attempts=2, backoff_s=0.01)
        if p.name == "crm" else targets.processor_client_for(p),
    )  # fmt: skip
    member = cast_member("caller_only")
    with pytest.raises(ProcessorUnavailable, match="crm lookup") as info:
        export_bundle_to_s3(datamap, subject_of("caller_only"), formats=("json",), targets=down, s3=s3,
                            bucket=out_bucket, key="p.zip.age", passphrase=PASSPHRASE, generated_at=datetime.now(UTC))  # fmt: skip
    assert member.email and member.email not in str(info.value)
    assert s3.list_objects_v2(Bucket=out_bucket).get("KeyCount", 0) == 0
    assert not s3.list_multipart_uploads(Bucket=out_bucket).get("Uploads")


def test_a_multipart_upload_is_invisible_until_complete_and_leaves_nothing_when_aborted(
    s3: Any, out_bucket: str
) -> None:
    import hashlib
    import os

    from governance.export.storage import MultipartUploadSink

    data = os.urandom(11 * 1024 * 1024 + 5)
    with MultipartUploadSink(s3, out_bucket, "big.bin", part_size=5 * 1024 * 1024) as sink:
        for start in range(0, len(data), 1 << 20):
            sink.write(data[start : start + (1 << 20)])
        assert s3.list_objects_v2(Bucket=out_bucket).get("KeyCount", 0) == 0, "nothing visible before completion"
    head = s3.head_object(Bucket=out_bucket, Key="big.bin")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == len(data)
    assert sink.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=out_bucket, Key="big.bin")["Body"].read() == data

    with pytest.raises(RuntimeError, match="collection failed"), MultipartUploadSink(
        s3, out_bucket, "aborted.bin", part_size=5 * 1024 * 1024
    ) as sink:
        sink.write(os.urandom(6 * 1024 * 1024))
        raise RuntimeError("collection failed")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=out_bucket)["Contents"]] == ["big.bin"]
    assert not s3.list_multipart_uploads(Bucket=out_bucket).get("Uploads")


def test_decrypt_bundle_command_unpacks_verifies_and_flags_a_changed_file(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from governance.export.decrypt_command import run as decrypt_bundle

    write(datamap, subject_of("caller_only"), env, s3, out_bucket, "d.zip.age")
    sealed = tmp_path / "bundle.zip.age"
    sealed.write_bytes(s3.get_object(Bucket=out_bucket, Key="d.zip.age")["Body"].read())
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSPHRASE + "\n"))
    args = argparse.Namespace(bundle=str(sealed), request_id=None, output=None, extract=str(tmp_path / "out"))
    assert decrypt_bundle(args) == 0
    assert "manifest verified" in capsys.readouterr().err
    assert (tmp_path / "out" / "index.html").exists() and list((tmp_path / "out" / "files").rglob("*.wav"))

    good = zipfile.ZipFile(io.BytesIO(age.decrypt_bytes(sealed.read_bytes(), PASSPHRASE)))
    changed = io.BytesIO()
    with zipfile.ZipFile(changed, "w") as out:
        for info in good.infolist():
            data = good.read(info.filename)
            out.writestr(info, data + b" " if info.filename.endswith("calls.json") else data)
    sealed.write_bytes(age.encrypt_bytes(changed.getvalue(), PASSPHRASE))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSPHRASE + "\n"))
    args.extract = str(tmp_path / "out2")
    assert decrypt_bundle(args) == 1
    assert "data/aircalls_app/calls.json: checksum or size differs" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    assert decrypt_bundle(args) == 1


def test_a_table_and_a_processor_added_to_the_map_are_exported_with_no_code_change(
    reference_clone: Deployment, s3: Any, out_bucket: str
) -> None:
    import copy

    import yaml

    from governance.config import INCLUDE_DIR
    from governance.datamap.loader import validate_datamap

    raw = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    app = next(s for s in raw["systems"] if s["name"] == "aircalls_app")
    ops = {"data_category": "system.operations", "data_use": "essential.service.operations"}
    app["tables"].append({
        "name": "voicemails", "description": "Voicemail summaries the receptionist took for a caller.",
        "primary_key": "id",
        "references": [{"field": "business_id", "to": {"table": "businesses"}, "kind": "scope"},
                       {"field": "caller_id", "to": {"table": "callers"}, "kind": "ownership"}],
        "fields": [{"name": "id", **ops}, {"name": "business_id", **ops},
                   {"name": "caller_id", "data_category": "user.unique_id", "data_use": "essential.service.operations",
                    "erasure": "delete_row"},
                   {"name": "summary", "data_category": "user.content.private",
                    "data_use": "essential.service.operations", "erasure": "delete_row"}],
    })  # fmt: skip
    raw["processors"].append({**copy.deepcopy(next(p for p in raw["processors"] if p["name"] == "crm")),
                              "name": "crm_archive", "description": "An archive copy of the CRM."})  # fmt: skip
    datamap = validate_datamap(raw, source="datamap-with-voicemails.yaml")

    member = cast_member("caller_only")
    caller, business = member.caller_ids[0], member.caller_business_ids[0]
    with psycopg.connect(reference_clone.app_url) as conn:
        other = conn.execute("SELECT id, business_id FROM app.callers WHERE id <> %s LIMIT 1", (caller,)).fetchone()
        conn.execute("CREATE TABLE app.voicemails (id bigint PRIMARY KEY, business_id bigint, caller_id bigint"
                     " REFERENCES app.callers (id), summary text)")  # fmt: skip
        conn.execute("INSERT INTO app.voicemails VALUES (1, %s, %s, 'call me back'), (2, %s, %s, 'about Tuesday'),"
                     " (3, %s, %s, 'someone else')", (business, caller, business, caller, other[1], other[0]))  # fmt: skip
    targets = targets_for(reference_clone, s3)
    extended = ExportTargets(
        conninfo_for=targets.conninfo_for, s3_for=targets.s3_for,
        processor_client_for=lambda p: ProcessorClient(p, Connection(conn_id="crm", conn_type="http", host=reference_clone.crm.url,
            password=reference_clone.crm.api_key), attempts=2, backoff_s=0.01) if p.name == "crm_archive"
        else targets.processor_client_for(p),
    )  # fmt: skip
    subject = subject_of("caller_only")
    summary = export_bundle_to_s3(datamap, subject, formats=("json",), targets=extended, s3=s3, bucket=out_bucket,
                                  key="v.zip.age", passphrase=PASSPHRASE, generated_at=datetime.now(UTC))  # fmt: skip
    archive = read_bundle(s3, out_bucket, "v.zip.age")
    assert [r["id"] for r in bundle_rows(archive, "voicemails")] == [1, 2]
    assert {n.split("/")[2] for n in archive.namelist() if n.startswith("processors/crm_archive/")} == {
        n.split("/")[2] for n in archive.namelist() if n.startswith("processors/crm/")
    } != set()
    assert "Voicemail summaries the receptionist took" in archive.read("index.html").decode()
    assert gate(datamap, summary, subject, s3, out_bucket, "v.zip.age").passed


# --------------------------------------------------------------------------------------------
# Two people behind one household phone


def callers_rows(url: str, caller_ids: set[int]) -> dict[str, set[int]]:
    """Primary keys of the caller rows and everything they own, by hand-written SQL."""
    with psycopg.connect(url) as conn:
        truth = {"callers": set(caller_ids)}
        for table in ("calls", "messages", "appointments"):
            truth[table] = {r[0] for r in conn.execute(f"SELECT id FROM app.{table} WHERE caller_id = ANY(%s)",  # noqa: S608
                                                       (sorted(caller_ids),))}  # fmt: skip
    return truth


def household_callers(url: str, email: str, e164: str) -> tuple[set[int], set[int]]:
    """The caller rows holding the person's e-mail, and the other caller rows holding the same
    phone (the neighbours), by hand-written SQL."""
    with psycopg.connect(url) as conn:
        own = {r[0] for r in conn.execute("SELECT id FROM app.callers WHERE lower(email) = lower(%s)", (email,))}
        neighbours = {r[0] for r in conn.execute("SELECT id FROM app.callers WHERE phone = %s AND NOT (id = ANY(%s))",
                                                 (e164, sorted(own)))}  # fmt: skip
    return own, neighbours


def test_household_member_named_by_email_and_shared_phone_gets_only_their_own_rows(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str
) -> None:
    member, neighbour = cast_member("household_a"), cast_member("household_b")
    assert member.email and member.e164 and member.e164 == neighbour.e164
    own, neighbours = household_callers(env.app_url, member.email, member.e164)
    assert own == set(member.caller_ids) and neighbours == set(neighbour.caller_ids)
    mine, theirs = callers_rows(env.app_url, own), callers_rows(env.app_url, neighbours)
    assert theirs["calls"], "the neighbour has calls of their own that must stay out"

    subject = subject_of("household_a")  # e-mail and the shared phone
    summary = write(datamap, subject, env, s3, out_bucket, "h.zip.age")
    archive = read_bundle(s3, out_bucket, "h.zip.age")
    for table in ("callers", "calls", "messages", "appointments"):
        assert bundle_keys(archive, table) == mine[table], table
        assert not bundle_keys(archive, table) & theirs[table], f"no {table} row of the neighbour"
    for table in ("users", "payments", "support_tickets", "usage_events", "marketing_preferences"):
        assert bundle_keys(archive, table) == set(), table
    objects = ground_truth_objects(env.app_url, s3, env.bucket, mine["calls"])
    their_objects = ground_truth_objects(env.app_url, s3, env.bucket, theirs["calls"])
    in_bundle = {n.split("/", 2)[2] for n in archive.namelist() if n.startswith("files/")}
    assert objects and in_bundle == set(objects) and not in_bundle & set(their_objects)
    folders = {n.split("/")[2] for n in archive.namelist() if n.startswith("processors/crm/")}
    assert folders == ground_truth_processors(env, member.email)["crm"] != set()
    # The support desk is a Python connector (OAuth, a search body): exported through the same path.
    desk = {n.split("/")[2] for n in archive.namelist() if n.startswith("processors/support_desk/")}
    assert desk == ground_truth_processors(env, member.email)["support_desk"] != set()
    assert summary.source_counts["aircalls_app.callers"] == 1
    assert summary.excluded_rows == {"aircalls_app.callers": 1}, "the neighbour's row was found and left out"
    text = archive.read("index.html").decode() + archive.read("manifest.json").decode()
    assert (neighbour.full_name or "-") not in text and str(neighbour.caller_ids[0]) not in text
    result = gate(datamap, summary, subject, s3, out_bucket, "h.zip.age")
    assert result.passed, result.describe_failures()


@pytest.mark.parametrize("key", ["household_a", "household_b"])
def test_a_shared_household_phone_alone_is_refused_before_anything_is_collected_or_written(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, key: str
) -> None:
    member = cast_member(key)
    subject = subject_of(key, email=None)  # the household phone only: nothing tells the two apart
    asked_before = len(env.crm.request_log()) + len(env.payments.request_log())
    with pytest.raises(AmbiguousSubject) as refused:
        write(datamap, subject, env, s3, out_bucket, "amb.zip.age")
    message = str(refused.value)
    assert "aircalls_app.callers: 2 rows in business 4" in message
    assert "identity that tells the people apart" in message
    for identity in (member.phone, member.e164, member.full_name, member.email, member.e164[-7:]):  # type: ignore[index]
        assert not identity or identity not in message, "counts, tables and businesses only"
    assert refused.value.to_dict() == [{"table": "aircalls_app.callers", "business_id": 4, "rows": 2}]
    assert s3.list_objects_v2(Bucket=out_bucket).get("KeyCount", 0) == 0, "no bundle, not even a partial one"
    assert not s3.list_multipart_uploads(Bucket=out_bucket).get("Uploads"), "no upload was started"
    assert len(env.crm.request_log()) + len(env.payments.request_log()) == asked_before, "no processor was asked"


def test_gate_fails_on_a_planted_row_of_the_household_neighbour_who_shares_the_phone(
    env: Deployment, datamap: DataMap, s3: Any, out_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    neighbour = cast_member("household_b")
    with psycopg.connect(env.app_url) as conn:
        planted_caller = conn.execute("SELECT * FROM app.callers WHERE id = %s", (neighbour.caller_ids[0],)).fetchone()
        planted_call = conn.execute("SELECT * FROM app.calls WHERE caller_id = %s ORDER BY id LIMIT 1",
                                    (neighbour.caller_ids[0],)).fetchone()  # fmt: skip
    assert planted_caller and planted_call
    original = collect.stream_table

    def with_the_neighbour(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        planted = {"callers": planted_caller, "calls": planted_call}.get(table.table)
        for columns, batch in original(conn, dm, footprint, table, **kw):
            yield columns, [*batch, planted] if planted else batch

    monkeypatch.setattr(collect, "stream_table", with_the_neighbour)
    subject = subject_of("household_a")
    summary = write(datamap, subject, env, s3, out_bucket, "nb.zip.age", formats=("json",))
    result = gate(datamap, summary, subject, s3, out_bucket, "nb.zip.age")
    assert not result.passed
    failed = {(c.suite, c.columns): c for c in result.failed()}
    # The neighbour's caller row holds the shared phone, so it is "tied" by identity; narrowing
    # says it matches fewer of the request's identities than household_a's row of the business.
    narrowing = failed[("ties", "narrowing")]
    assert narrowing.unexpected_count == 1 and narrowing.examples == ["fewer_identities"]
    # Nothing the neighbour owns is tied: their call fails the tie check.
    assert failed[("ties", "tie")].unexpected_count == 1
    assert json.dumps(result.to_dict()).find(str(neighbour.e164)) == -1


# --------------------------------------------------------------------------------------------
# Processor paging, declared in the map


def test_a_processor_added_to_the_map_with_paging_has_every_page_followed_with_no_code_change(
    env: Deployment,
) -> None:
    import copy

    import yaml

    from governance.config import INCLUDE_DIR
    from governance.datamap.loader import validate_datamap

    raw = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    mirror = copy.deepcopy(next(p for p in raw["processors"] if p["name"] == "payments_processor"))
    mirror.update(name="billing_mirror", description="A mirror of the payments processor that pages by two.")
    charges = next(e for e in mirror["export"] if e["name"] == "charges")
    charges["query"]["limit"] = "2"  # small pages: the payer's charges span many of them
    unpaged = copy.deepcopy(mirror)
    unpaged.update(name="billing_mirror_unpaged")
    next(e for e in unpaged["export"] if e["name"] == "charges").pop("paging")
    raw["processors"] += [mirror, unpaged]
    datamap = validate_datamap(raw, source="datamap-with-a-paged-processor.yaml")

    member = cast_member("payer")
    truth = ground_truth_processors(env, member.email)
    [customer] = truth["payments_processor"]
    connection = Connection(conn_id="payments_processor", conn_type="http", host=env.payments.url, password=env.payments.api_key)
    asked_before = len(env.payments.request_log())
    with ProcessorClient(datamap.processor("billing_mirror"), connection, attempts=2, backoff_s=0.01) as client:  # type: ignore[arg-type]
        paged = client.export(customer)["charges"]
    pages = [r for r in env.payments.request_log()[asked_before:] if r["path"] == "/v1/charges"]
    assert {c["id"] for c in paged} == truth["charges"] and len(paged) == len(truth["charges"]) > 10
    assert len(pages) == -(-len(truth["charges"]) // 2), "one request per page of two"
    with ProcessorClient(datamap.processor("billing_mirror_unpaged"), connection, attempts=2,  # type: ignore[arg-type]
                         backoff_s=0.01) as client:  # fmt: skip
        assert len(client.export(customer)["charges"]) == 2, "without paging in the map, only the first page"
