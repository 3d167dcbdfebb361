"""Export bundles: the project's bundle writer next to a raw script doing the same work.

Seeds the large reference deployment (and the small one, for the look-up comparison) into fresh
databases on the server of ``GOVERNANCE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), with an S3 API server (moto, in a child
process on loopback) and the processor stand-ins, then measures three things:

1. **Bundle writer time.** ``heavy_subject`` (1,000 recordings of 256 KiB): the project's writer
   (``governance.export.collect.export_bundle_to_s3``: resolution through the data map, JSON and
   CSV files, objects, processors, index, manifest, ZIP, age encryption, hashing, multipart upload
   with SSE) against a raw script doing the same work with plain psycopg (hand-written SQL),
   boto3, zipfile, hashlib and the same age encryption. Each side runs in a fresh child process,
   alternating, ``--repeat`` times; medians and the ratio project/raw are printed (goal <= 1.5).
2. **Peak memory growth** of each child above its size after imports (sampled every 20 ms), for
   the heavy subject and for a subject with 10x the recordings (10,000, added by this script):
   goal under 150 MB, and the 10x figure within 1.2x of the 1x one.
3. **Identity look-up** (the resolution plan in one snapshot) for one subject on the small and
   the large seed, median of 25: goal within 1.5x; every step's plan is checked for index use.

Ratios are printed, not asserted: machines here are shared and noisy. Databases and the S3
server are removed at the end (``--keep`` keeps the databases and prints their URLs).

4. **Heavy subject** (``--heavy-events N``, #12 item 4): N usage events are added to
   ``both_user_and_caller``'s user and that person is exported once by each side: peak memory
   growth (goal under 200 MB at N = 1,000,000) and time.

    .venv/bin/python benchmarks/export.py [--repeat 3] [--skip-tenfold] [--keep] [--heavy-events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
API_KEY = "bench-key"
TENFOLD_CALLER_ID = 2_000_000_001
TENFOLD_CALL_BASE = 2_000_000_000
TENFOLD_PHONE = "+12065550999"
TENFOLD_EMAIL = "bench.tenfold@example.org"
WRITER_GOAL = 1.5
MEMORY_GOAL_MB = 150
MEMORY_SCALING_GOAL = 1.2
LOOKUP_GOAL = 1.5
HEAVY_MEMORY_GOAL_MB = 200  # #12 item 4: a subject with 1,000,000 usage events


def database_url(admin_url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )  # fmt: skip


@contextmanager
def moto_server() -> Iterator[str]:
    """An S3 API (moto) in a child process on a free loopback port; yields its endpoint."""
    from governance_dev.services import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Workers (each run in a fresh child process: its memory is its own)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class PeakSampler:
    """Samples this process's RSS every 20 ms; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def worker_project(cfg: dict[str, Any]) -> dict[str, Any]:
    from datetime import UTC, date, datetime

    from airflow.sdk import Connection

    import governance.export.age  # (imported before the baseline is taken)
    import governance.export.storage  # noqa: F401
    from governance.connectors.base import processor_connector
    from governance.datamap import load_datamap, phone_region
    from governance.datamap.taxonomy import default_taxonomy
    from governance.export.collect import ExportSubject, ExportTargets, export_bundle_to_s3
    from governance.identity import SubjectIdentities

    os.environ["GOVERNANCE_OBJECTS_BUCKET"] = cfg["bucket"]
    datamap = load_datamap()
    default_taxonomy()
    s3 = s3_client(cfg["s3"])
    infos = {"payments_processor": Connection(conn_id="p", conn_type="http", host=cfg["payments"], password=API_KEY),
             "crm": Connection(conn_id="c", conn_type="http", host=cfg["crm"], password=API_KEY),
             "support_desk": Connection(conn_id="d", conn_type="http", host=cfg["support_desk"], login="governance",
                                        password=API_KEY)}  # fmt: skip
    targets = ExportTargets(conninfo_for=lambda c: cfg["warehouse"] if c == "aircalls_warehouse" else cfg["app"], s3_for=lambda _c: s3,
                            processor_client_for=lambda p: processor_connector(p, infos[p.name]))  # fmt: skip
    subject = ExportSubject(request_id="exp-20260101-0000000be0c4", identities=SubjectIdentities.parse(
        email=cfg["email"], phone=cfg["phone"], region=phone_region()), received_on=date(2026, 1, 1))  # fmt: skip
    base = _rss_mb()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        summary = export_bundle_to_s3(datamap, subject, formats=("json", "csv"), targets=targets, s3=s3,
                                      bucket=cfg["out_bucket"], key=cfg["key"], passphrase="BENCH-PASS",
                                      generated_at=datetime.now(UTC))  # fmt: skip
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "base_mb": base, "growth_mb": sampler.peak - base, "bytes": summary.ciphertext_bytes,
            "files": summary.files, "objects": summary.bundle_counts.get("aircalls_objects.recordings", 0),
            "app_rows": sum(n for name, n in summary.bundle_counts.items() if name.startswith("aircalls_app."))}  # fmt: skip


RAW_TABLES = {  # table -> (columns, where clause over the person's caller / user ids)
    "callers": ("id, business_id, phone, full_name, email, first_seen_at", "id = ANY(%(callers)s)"),
    "calls": ("id, business_id, caller_id, handled_by_user_id, started_at, duration_s, outcome, recording_key, transcript",
              "caller_id = ANY(%(callers)s)"),
    "messages": ("id, business_id, caller_id, user_id, channel, direction, body, sent_at", "caller_id = ANY(%(callers)s)"),
    "appointments": ("id, business_id, caller_id, scheduled_for, notes, calendar_event_id, created_at",
                     "caller_id = ANY(%(callers)s)"),
    "users": ("id, business_id, full_name, email, phone, phone_e164, job_title, billing_address, created_at, last_login_at",
              "id = ANY(%(users)s)"),
    "support_tickets": ("id, user_id, subject, body, status, created_at", "user_id = ANY(%(users)s)"),
    "payments": ("id, business_id, user_id, amount_cents, currency, card_last4, billing_address, processor_charge_id, paid_at",
                 "user_id = ANY(%(users)s)"),
    "marketing_preferences": ("user_id, email_opt_in, sms_opt_in, updated_at", "user_id = ANY(%(users)s)"),
    "usage_events": ("id, user_id, occurred_at, ip_address, user_agent, device_id, path, geo_country",
                     "user_id = ANY(%(users)s)"),
}  # fmt: skip


def worker_raw(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same work written plainly: psycopg, boto3, zipfile, hashlib, json/csv, the same age."""
    import csv
    import hashlib
    import io
    import zipfile

    import psycopg
    import requests
    from botocore.exceptions import ClientError

    from governance.export.age import AgeWriter

    s3 = s3_client(cfg["s3"])
    base = _rss_mb()
    started = time.perf_counter()

    class Upload:
        def __init__(self) -> None:
            self.id = s3.create_multipart_upload(Bucket=cfg["out_bucket"], Key=cfg["key"],
                                                 ServerSideEncryption="AES256")["UploadId"]  # fmt: skip
            self.buffer = bytearray()
            self.parts: list[dict[str, Any]] = []

        def write(self, data: bytes) -> int:
            self.buffer += data
            if len(self.buffer) >= 8 * 1024 * 1024:
                self.ship()
            return len(data)

        def ship(self) -> None:
            number = len(self.parts) + 1
            etag = s3.upload_part(Bucket=cfg["out_bucket"], Key=cfg["key"], UploadId=self.id, PartNumber=number,
                                  Body=bytes(self.buffer))["ETag"]  # fmt: skip
            self.parts.append({"PartNumber": number, "ETag": etag})
            self.buffer = bytearray()

        def flush(self) -> None:
            pass

    with PeakSampler() as sampler:
        upload = Upload()
        age = AgeWriter(upload, "BENCH-PASS")
        archive = zipfile.ZipFile(age, "w")  # type: ignore[arg-type]
        hashes: dict[str, str] = {}

        def add(name: str, data: bytes, compress: bool = True) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            with archive.open(info, "w") as entry:
                entry.write(data)
            hashes[name] = hashlib.sha256(data).hexdigest()

        email, phone = cfg["email"].strip().lower(), cfg["phone"]  # as the project normalises them
        with psycopg.connect(cfg["app"]) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute("SET TIME ZONE 'UTC'")
            ids = {
                "callers": [r[0] for r in conn.execute(
                    "SELECT id FROM app.callers WHERE phone = %s OR lower(normalize(email, NFC)) = %s", (phone, email))],
                "users": [r[0] for r in conn.execute(
                    "SELECT id FROM app.users WHERE lower(normalize(email, NFC)) = %s OR phone_e164 = %s", (email, phone))],
            }  # fmt: skip
            calls: list[tuple[int, int, str | None]] = []
            table_rows = 0
            for table, (columns, where) in RAW_TABLES.items():
                query = f"SELECT {columns} FROM app.{table} WHERE {where} ORDER BY 1"  # noqa: S608 - fixed names
                names = [c.strip() for c in columns.split(",")]
                rows = conn.execute(query, ids).fetchall()
                if not rows:
                    continue
                table_rows += len(rows)
                if table == "calls":
                    calls = [(r[0], r[1], r[7]) for r in rows]
                text = json.dumps([dict(zip(names, r, strict=True)) for r in rows], default=str, ensure_ascii=False)
                add(f"data/{table}.json", text.encode())
                out = io.StringIO()
                writer = csv.writer(out)
                writer.writerow(names)
                writer.writerows(rows)
                add(f"data/{table}.csv", out.getvalue().encode())
        for call_id, business_id, recording in calls:
            for key in {recording, f"recordings/{business_id}/{call_id}.wav", f"transcripts/{business_id}/{call_id}.json"}:
                if not key:
                    continue
                try:
                    data = s3.get_object(Bucket=cfg["bucket"], Key=key)["Body"].read()
                except ClientError:
                    continue
                add(f"files/{key}", data, compress=key.endswith(".json"))
        for base_url, auth, path, records in (
            (cfg["crm"], {"X-API-Key": API_KEY}, "/api/contacts/search", "results"),
            (cfg["payments"], {"Authorization": f"Bearer {API_KEY}"}, "/v1/customers", "data"),
        ):
            found = requests.get(base_url + path, params={"email": email}, headers=auth, timeout=30).json()[records]
            for record in found:
                detail = (f"/api/contacts/{record['id']}/export" if "contacts" in path else f"/v1/customers/{record['id']}")
                add(f"processors/{record['id']}.json", requests.get(base_url + detail, headers=auth, timeout=30).content)
        add("manifest.json", json.dumps(hashes, sort_keys=True).encode())
        archive.close()
        age.close()
        upload.ship()
        s3.complete_multipart_upload(Bucket=cfg["out_bucket"], Key=cfg["key"], UploadId=upload.id,
                                     MultipartUpload={"Parts": upload.parts})  # fmt: skip
    seconds = time.perf_counter() - started
    size = s3.head_object(Bucket=cfg["out_bucket"], Key=cfg["key"])["ContentLength"]
    return {"seconds": seconds, "base_mb": base, "growth_mb": sampler.peak - base, "bytes": size,
            "files": len(hashes), "objects": sum(1 for n in hashes if n.startswith("files/recordings/")),
            "app_rows": table_rows}  # fmt: skip


def run_worker(mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--worker", mode, json.dumps(cfg)], capture_output=True,
                            text=True, check=False, cwd=ROOT)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n{result.stderr[-4000:]}")
    output: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    s3_client(cfg["s3"]).delete_object(Bucket=cfg["out_bucket"], Key=cfg["key"])  # keep moto's memory bounded
    return output


# --------------------------------------------------------------------------------------------
# Set-up and the look-up comparison


def add_tenfold_subject(app_url: str, s3: Any, bucket: str, heavy_caller_id: int) -> int:
    """A caller at heavy_subject's business with 10x its recorded calls: each call row, recording
    and transcript copied ten times (objects copied server-side). Returns the objects copied."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg

    with psycopg.connect(app_url) as conn:
        heavy = conn.execute("SELECT id, business_id FROM app.calls WHERE caller_id = %s ORDER BY id",
                             (heavy_caller_id,)).fetchall()  # fmt: skip
        conn.execute(
            "INSERT INTO app.callers (id, business_id, phone, full_name, email, first_seen_at)"
            " SELECT %s, business_id, %s, 'Bench Tenfold', %s, first_seen_at FROM app.callers WHERE id = %s",
            (TENFOLD_CALLER_ID, TENFOLD_PHONE, TENFOLD_EMAIL, heavy_caller_id),
        )
        conn.execute(
            """
            WITH heavy AS (
                SELECT row_number() OVER (ORDER BY id) - 1 AS n, * FROM app.calls WHERE caller_id = %(heavy)s)
            INSERT INTO app.calls (id, business_id, caller_id, handled_by_user_id, started_at, duration_s, outcome,
                                   recording_key, transcript)
            SELECT %(base)s + g, h.business_id, %(caller)s, NULL, h.started_at, h.duration_s, h.outcome,
                   CASE WHEN h.recording_key IS NULL THEN NULL
                        ELSE 'recordings/' || h.business_id || '/' || (%(base)s + g) || '.wav' END, h.transcript
              FROM generate_series(1, %(calls)s) AS g
              JOIN heavy h ON h.n = (g - 1) %% %(heavy_calls)s
            """,
            {"heavy": heavy_caller_id, "base": TENFOLD_CALL_BASE, "caller": TENFOLD_CALLER_ID,
             "calls": 10 * len(heavy), "heavy_calls": len(heavy)},
        )  # fmt: skip
        conn.execute("ANALYZE app.calls")
    pairs = []
    for g in range(1, 10 * len(heavy) + 1):
        source_id, business = heavy[(g - 1) % len(heavy)]
        new_id = TENFOLD_CALL_BASE + g
        pairs += [(f"recordings/{business}/{new_id}.wav", f"recordings/{business}/{source_id}.wav"),
                  (f"transcripts/{business}/{new_id}.json", f"transcripts/{business}/{source_id}.json")]  # fmt: skip

    def copy(pair: tuple[str, str]) -> int:
        try:
            s3.copy_object(Bucket=bucket, Key=pair[0], CopySource={"Bucket": bucket, "Key": pair[1]})
        except Exception:  # the heavy call had no such object: neither has its copy
            return 0
        return 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(copy, pairs))


def plant_usage_events(app_url: str, key: str, count: int) -> None:
    """``count`` more usage events of the cast member ``key``'s user, spread over the last year."""
    from datetime import UTC, datetime

    import psycopg

    from governance_dev.seed import cast_member

    user_id = cast_member(key).user_id
    assert user_id is not None, f"{key} has no user account"
    with psycopg.connect(app_url) as conn:
        conn.execute(
            "INSERT INTO app.usage_events (id, user_id, occurred_at, ip_address, user_agent, device_id, path, geo_country)"
            " SELECT base.id + g, %(user)s, %(as_of)s - make_interval(secs => g * 31.5), '203.0.113.7'::inet,"
            " 'bench-agent', 'bench-device-' || (g %% 7), '/app/calls/' || (g %% 997), 'US'"
            " FROM (SELECT coalesce(max(id), 0) AS id FROM app.usage_events) AS base, generate_series(1, %(n)s) AS g",
            {"user": user_id, "n": count, "as_of": datetime(2026, 11, 28, 12, tzinfo=UTC)},
        )
        conn.commit()
        conn.execute("ANALYZE app.usage_events")


def lookup_seconds(app_url: str, email: str, phone: str, repeat: int = 25, *, warehouse_url: str) -> tuple[float, list[str]]:
    """Median time of the resolution plan (one snapshot per database: the app, the analytics
    warehouse), and the steps whose plan scans a table."""
    import psycopg

    from governance.connectors.postgres import identity_params, resolve_in_database
    from governance.datamap import load_datamap, phone_region
    from governance.datamap.plans import AS_OF, build_resolution_plan
    from governance.identity import SubjectIdentities

    identities = SubjectIdentities.parse(email=email, phone=phone, region=phone_region())
    datamap = load_datamap()
    plan = build_resolution_plan(datamap, ["email", "phone"])
    times = []
    with psycopg.connect(app_url) as app, psycopg.connect(warehouse_url) as wh:
        conns = {"aircalls_app": app, "aircalls_warehouse": wh}
        for _ in range(repeat):
            started = time.perf_counter()
            for conn in conns.values():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            footprint = resolve_in_database(conns, plan, identities, datamap=datamap)
            for conn in conns.values():
                conn.rollback()
            times.append(time.perf_counter() - started)
        scans = []
        params = {**identity_params(plan, identities), **footprint.params, AS_OF: None}
        for step in plan.steps:  # the statements resolution runs, as the plan built them
            conn = conns[step.table.system]
            schema = datamap.postgres_system(step.table.system).db_schema
            explained = conn.execute(b"EXPLAIN (FORMAT JSON) " + step.select.query.as_bytes(conn),
                                     step.select.bind(params)).fetchone()[0]  # fmt: skip
            if '"Seq Scan"' in json.dumps(explained):
                rows = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                    (f"{schema}.{step.table.table}",)).fetchone()  # fmt: skip
                scans.append(f"{step.table.table} ({int(rows[0]) if rows else 0:,} rows)")
    return statistics.median(times), scans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="writer runs per side for the heavy subject")
    parser.add_argument("--skip-tenfold", action="store_true", help="no 10x subject (faster)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--scale", choices=("large", "small"), default="large",
                        help="seed for the writer runs (small: a quick check of this script)")
    parser.add_argument("--heavy-events", type=int, default=0,
                        help="also export both_user_and_caller after adding this many usage events (#12: 1000000)")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, cfg = args.worker
        print(json.dumps((worker_project if mode == "project" else worker_raw)(json.loads(cfg))))
        return 0

    from governance_dev.seed import SeedTargets, cast_member, seed_reference_deployment
    from governance_dev.services import create_database, drop_database
    from governance_dev.standins import start_standins, start_support_desk

    admin_url = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    suffix = uuid.uuid4().hex[:8]
    large_db, small_db = f"bench_export_large_{suffix}", f"bench_export_small_{suffix}"
    for name in (large_db, small_db, f"{large_db}_wh", f"{small_db}_wh"):  # each with its analytics warehouse
        create_database(admin_url, name)
    large_url, small_url = database_url(admin_url, large_db), database_url(admin_url, small_db)
    large_wh, small_wh = database_url(admin_url, f"{large_db}_wh"), database_url(admin_url, f"{small_db}_wh")
    payments, crm = start_standins(api_key=API_KEY)
    desk = start_support_desk(api_key=API_KEY)
    try:
        with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-export-") as work:
            s3 = s3_client(endpoint)
            bucket, small_bucket, out_bucket = f"bench-large-{suffix}", f"bench-small-{suffix}", f"bench-out-{suffix}"
            s3.create_bucket(Bucket=out_bucket)
            print(f"seeding the {args.scale} reference deployment (large: several minutes) ...", flush=True)
            started = time.perf_counter()
            seed_reference_deployment(SeedTargets(app_conninfo=large_url, s3=s3, bucket=bucket, payments_url=payments.url,
                                                  payments_api_key=API_KEY, crm_url=crm.url, crm_api_key=API_KEY,
                                                  support_desk_url=desk.url, warehouse_conninfo=large_wh),
                                      scale=args.scale, work_dir=Path(work) / "large")  # fmt: skip
            print(f"  large seed: {time.perf_counter() - started:.0f} s", flush=True)
            seed_reference_deployment(SeedTargets(app_conninfo=small_url, s3=s3, bucket=small_bucket,
                                                  warehouse_conninfo=small_wh),
                                      scale="small", work_dir=Path(work) / "small")  # fmt: skip
            heavy = cast_member("heavy_subject")
            if not args.skip_tenfold:
                print("adding a subject with 10x the recordings ...", flush=True)
                copied = add_tenfold_subject(large_url, s3, bucket, heavy.caller_ids[0])
                print(f"  {copied:,} recordings copied", flush=True)

            # 3. look-up, small vs large
            member = cast_member("both_user_and_caller")
            small_s, small_scans = lookup_seconds(small_url, member.email or "", member.phone or "", warehouse_url=small_wh)
            large_s, large_scans = lookup_seconds(large_url, member.email or "", member.phone or "", warehouse_url=large_wh)

            # 1 and 2. writer, project vs raw, alternating
            base_cfg = {"app": large_url, "warehouse": large_wh, "s3": endpoint, "bucket": bucket, "out_bucket": out_bucket,
                        "payments": payments.url, "crm": crm.url, "support_desk": desk.url, "key": "bench.zip.age"}  # fmt: skip
            heavy_cfg = {**base_cfg, "email": heavy.email, "phone": heavy.e164}
            project: list[dict[str, Any]] = []
            raw: list[dict[str, Any]] = []
            for i in range(args.repeat):
                print(f"writer run {i + 1}/{args.repeat} ...", flush=True)
                if i % 2 == 0:
                    project.append(run_worker("project", heavy_cfg))
                    raw.append(run_worker("raw", heavy_cfg))
                else:
                    raw.append(run_worker("raw", heavy_cfg))
                    project.append(run_worker("project", heavy_cfg))
            events_project = events_raw = None
            if args.heavy_events:
                print(f"adding {args.heavy_events:,} usage events to both_user_and_caller ...", flush=True)
                plant_usage_events(large_url, "both_user_and_caller", args.heavy_events)
                events_cfg = {**base_cfg, "email": member.email, "phone": member.e164}
                print("writer on the heavy-events subject ...", flush=True)
                events_project = run_worker("project", events_cfg)
                events_raw = run_worker("raw", events_cfg)
            tenfold_project = tenfold_raw = None
            if not args.skip_tenfold:
                print("writer on the 10x subject ...", flush=True)
                tenfold_cfg = {**base_cfg, "email": TENFOLD_EMAIL, "phone": TENFOLD_PHONE}
                tenfold_project = run_worker("project", tenfold_cfg)
                tenfold_raw = run_worker("raw", tenfold_cfg)
    finally:
        payments.stop()
        crm.stop()
        desk.stop()
        if args.keep:
            print(f"kept: {large_url} {small_url}")
        else:
            for name in (large_db, small_db, f"{large_db}_wh", f"{small_db}_wh"):
                drop_database(admin_url, name)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    p_s, r_s = med(project, "seconds"), med(raw, "seconds")
    print()
    print(f"heavy_subject bundle: {project[0]['objects']:,} recordings, {project[0]['files']} files, "
          f"{project[0]['bytes'] / 1e6:,.0f} MB encrypted")  # fmt: skip
    print(f"{'writer, project (median)':40} {p_s:8.2f} s   peak growth {med(project, 'growth_mb'):6.0f} MB")
    print(f"{'writer, raw baseline (median)':40} {r_s:8.2f} s   peak growth {med(raw, 'growth_mb'):6.0f} MB")
    print(f"{'ratio project/raw':40} {p_s / r_s:8.2f}     (goal <= {WRITER_GOAL})")
    if tenfold_project and tenfold_raw:
        growth_1x = med(project, "growth_mb")
        growth_10x = tenfold_project["growth_mb"]
        print(f"{'writer, project, 10x recordings':40} {tenfold_project['seconds']:8.2f} s   peak growth "
              f"{growth_10x:6.0f} MB ({tenfold_project['objects']:,} recordings, "
              f"{tenfold_project['bytes'] / 1e9:,.2f} GB)")  # fmt: skip
        print(f"{'writer, raw, 10x recordings':40} {tenfold_raw['seconds']:8.2f} s   peak growth "
              f"{tenfold_raw['growth_mb']:6.0f} MB")  # fmt: skip
        print(f"{'memory growth 10x / 1x (project)':40} {growth_10x / max(growth_1x, 1.0):8.2f}     "
              f"(goal <= {MEMORY_SCALING_GOAL}; both under {MEMORY_GOAL_MB} MB)")  # fmt: skip
    if events_project and events_raw:
        print(f"{'writer, project, heavy events':40} {events_project['seconds']:8.2f} s   peak growth "
              f"{events_project['growth_mb']:6.0f} MB  (goal < {HEAVY_MEMORY_GOAL_MB} MB)")  # fmt: skip
        print(f"{'writer, raw, heavy events':40} {events_raw['seconds']:8.2f} s   peak growth "
              f"{events_raw['growth_mb']:6.0f} MB; ratio {events_project['seconds'] / events_raw['seconds']:.2f}")  # fmt: skip
        print(f"{'  app rows exported, project / raw':40} {events_project['app_rows']:,} / {events_raw['app_rows']:,}")
    print(f"{'look-up, small seed (median of 25)':40} {small_s * 1000:8.1f} ms  seq scans: {small_scans or 'none'}")
    print(f"{'look-up, large seed (median of 25)':40} {large_s * 1000:8.1f} ms  seq scans: {large_scans or 'none'}")
    print(f"{'ratio large/small':40} {large_s / small_s:8.2f}     (goal <= {LOOKUP_GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
