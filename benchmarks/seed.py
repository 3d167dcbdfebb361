"""Seeding the reference deployment: the project's COPY phase next to a raw COPY of the same files.

Runs ``seed --scale large`` (or small) into a fresh database on the server of
``GOVERNANCE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``), with an S3
API server (moto, in a child process on loopback) and the processor stand-ins, unless
``--skip-objects``. The baseline, in the same process: a plain psycopg ``COPY ... FROM STDIN`` of
the very same CSV files into a second fresh database with the same DDL (same indexes and foreign
keys), one transaction, no checks. Prints generation time, the COPY phase of both with their ratio
raw/project (goal >= 0.8: the project at most 1.25x slower), rows/s, the object and processor
phases and peak RSS. ``--repeat N`` re-runs both COPY phases on truncated tables (alternating the
order) and reports medians. Both databases are dropped at the end.

    .venv/bin/python benchmarks/seed.py [--scale large|small] [--repeat 1] [--skip-objects]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import boto3
import psycopg
from botocore.config import Config
from psycopg import sql

from governance.objectstore import DEFAULT_CLIENT_CONFIG
from governance_dev.seed.generate import TABLE_COLUMNS, TABLE_ORDER
from governance_dev.seed.load import (
    SeedReport,
    SeedTargets,
    app_schema_sql,
    load_database,
    seed_reference_deployment,
)
from governance_dev.services import create_database, drop_database, free_port

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GOAL = 0.8


def database_url(admin_url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def raw_copy(conninfo: str, files: dict[str, Path], *, truncate: bool) -> float:
    """The baseline: plain COPY FROM STDIN of each file, one transaction; returns seconds."""
    tables = sql.SQL(", ").join(sql.Identifier("app", name) for name in TABLE_ORDER)
    with psycopg.connect(conninfo) as conn:
        started = time.perf_counter()
        if truncate:
            conn.execute(sql.SQL("TRUNCATE {}").format(tables))
        with conn.cursor() as cur:
            for name in TABLE_ORDER:
                statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
                    sql.Identifier("app", name), sql.SQL(", ").join(map(sql.Identifier, TABLE_COLUMNS[name]))
                )
                with files[name].open("rb") as handle, cur.copy(statement) as copy:
                    while chunk := handle.read(1 << 20):
                        copy.write(chunk)
        conn.commit()
        return time.perf_counter() - started


@contextmanager
def moto_server() -> Iterator[Any]:
    """An S3 API (moto) in a child process on a free loopback port; yields a boto3 client."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
            config=Config(**DEFAULT_CLIENT_CONFIG),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=10)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("small", "large"), default="large")
    parser.add_argument("--repeat", type=int, default=1, help="COPY phases per side (medians are printed)")
    parser.add_argument("--skip-objects", action="store_true", help="no S3 server, no processors: COPY only")
    args = parser.parse_args(argv)

    admin_url = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    suffix = uuid.uuid4().hex[:8]
    project_db, raw_db = f"bench_seed_project_{suffix}", f"bench_seed_raw_{suffix}"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    create_database(admin_url, project_db)
    create_database(admin_url, raw_db)
    project_url, raw_url = database_url(admin_url, project_db), database_url(admin_url, raw_db)
    standins: tuple[Any, Any] | None = None
    try:
        with nullcontext(None) if args.skip_objects else moto_server() as s3:
            if not args.skip_objects:
                from governance_dev.standins import start_standins

                standins = start_standins(api_key="bench-key")
            targets = SeedTargets(
                app_conninfo=project_url,
                s3=s3,
                bucket=f"bench-seed-{suffix}" if s3 is not None else None,
                payments_url=standins[0].url if standins else None,
                payments_api_key="bench-key" if standins else None,
                crm_url=standins[1].url if standins else None,
                crm_api_key="bench-key" if standins else None,
            )
            print(
                f"seeding scale={args.scale} (objects: {'skipped' if s3 is None else 'moto'}) ...", flush=True
            )
            report: SeedReport = seed_reference_deployment(targets, scale=args.scale, work_dir=work_dir)
            files = report.csv_files

            # the raw baseline: same DDL, same files
            with psycopg.connect(raw_url, autocommit=True) as conn:
                conn.execute(app_schema_sql().encode("utf-8"))
            project_times = [report.copy_s]
            raw_times = [raw_copy(raw_url, files, truncate=False)]
            for i in range(1, args.repeat):
                # alternate which side goes first, so cache warmth favours neither
                if i % 2:
                    project_times.append(load_database(project_url, files, replace=True).total_s)
                    raw_times.append(raw_copy(raw_url, files, truncate=True))
                else:
                    raw_times.append(raw_copy(raw_url, files, truncate=True))
                    project_times.append(load_database(project_url, files, replace=True).total_s)
    finally:
        if standins:
            for server in standins:
                server.stop()
        drop_database(admin_url, project_db)
        drop_database(admin_url, raw_db)
        shutil.rmtree(work_dir, ignore_errors=True)

    rows = report.total_rows
    project_s, raw_s = statistics.median(project_times), statistics.median(raw_times)
    ratio = raw_s / project_s if project_s > 0 else float("inf")
    print()
    print(
        f"scale={args.scale}: {rows:,} rows in {len(report.rows)} tables, {report.csv_bytes / 1e6:,.0f} MB of CSV"
    )
    print(f"{'generation (frames + CSV files)':34} {report.generate_s:8.1f} s")
    print(
        f"{f'COPY project (median of {len(project_times)})':34} {project_s:8.1f} s {rows / project_s:>12,.0f} rows/s"
    )
    print(f"{'  of which index + foreign-key build':34} {report.rebuild_s:8.1f} s  (first run)")
    print(
        f"{f'COPY raw baseline (median of {len(raw_times)})':34} {raw_s:8.1f} s {rows / raw_s:>12,.0f} rows/s"
    )
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"{'ratio raw/project':34} {ratio:8.2f}   (goal >= {GOAL}: {verdict})")
    slowest = sorted(report.copy_table_s.items(), key=lambda kv: -kv[1])[:3]
    print(f"{'slowest COPY (project, first run)':34} " + ", ".join(f"{t} {s:.1f}s" for t, s in slowest))
    print(f"{'ANALYZE':34} {report.analyze_s:8.1f} s")
    if report.objects:
        rate = report.objects / report.objects_s if report.objects_s else 0.0
        print(
            f"{'objects':34} {report.objects_s:8.1f} s  {report.objects:,} objects, "
            f"{report.object_bytes / 1e6:,.0f} MB ({rate:,.0f} objects/s)"
        )
    if report.processor_records:
        counts = ", ".join(f"{k} {v:,}" for k, v in report.processor_records.items())
        print(f"{'processors':34} {report.processors_s:8.1f} s  {counts}")
    print(f"{'seed total':34} {report.total_s:8.1f} s")
    print(f"{'peak RSS':34} {peak_rss_mb():8,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
