"""aggregate_anonymisation's SQL phase next to a raw ``GROUP BY GROUPING SETS`` of the same cells,
and its memory as the data doubles.

For each size (1x, 2x) a fresh database on the server of ``GOVERNANCE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) gets the app's businesses, callers, calls,
messages and appointments (reference-deployment DDL, ``include/sql/app_schema.sql``) filled by ``generate_series``
over four ISO weeks, and the governance schema. Then, alternating:

* **project**: ``governance.anonymisation.cells.fetch_cells`` (the release's cells with the
  threshold inputs: distinct businesses and callers, the largest business; messages and
  appointments; the median duration by ``percentile_cont``);
* **raw**: one hand-written statement grouping calls joined to businesses into the same cells
  (18 grouping sets: industry or sector, by country, region or globally, per week, month or
  quarter) with ``count(*)`` and distinct businesses and callers; no per-business step, no
  messages or appointments, no dominance input; **raw+median** adds ``percentile_cont(0.5)`` of
  the duration to it (the one measure the release computes from the call rows themselves);
* **end to end** (printed apart): ``stage_release`` + ``verify_release`` in a child process
  (thresholds, suppression, the independent checks), whose peak memory is its own.

Printed: SQL time ratios project/raw (goal <= 1.3) and project/raw+median, peak memory 2x/1x (goal <= 1.2), end-to-end
times. Figures are printed, never asserted. Databases are dropped at the end.

    .venv/bin/python benchmarks/anonymise.py [--businesses 2000] [--calls 400000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
START, END = date(2026, 11, 2), date(2026, 11, 30)
SQL_GOAL, MEMORY_GOAL = 1.3, 1.2
INDUSTRIES = ["dental clinic", "law firm", "plumbing", "hair salon", "veterinary clinic", "real estate", "auto repair",
              "medical practice", "restaurant", "fitness studio", "accounting", "home cleaning"]  # fmt: skip
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "JP", "GR"]

RAW = """
SELECT week, month, quarter, b.industry, s.sector, b.country::text AS country, r.region,
       count(*), count(DISTINCT c.business_id), count(DISTINCT c.caller_id){median}
FROM (SELECT *, to_char(date_trunc('week', started_at AT TIME ZONE 'UTC'), 'IYYY-"W"IW') AS week,
             to_char(date_trunc('week', started_at AT TIME ZONE 'UTC') + interval '3 days', 'YYYY-MM') AS month,
             to_char(date_trunc('week', started_at AT TIME ZONE 'UTC') + interval '3 days', 'YYYY-"Q"Q') AS quarter
      FROM app.calls WHERE started_at >= %(start)s AND started_at < %(end)s) c
JOIN app.businesses b ON b.id = c.business_id
JOIN (SELECT * FROM jsonb_each_text(%(sectors)s::jsonb)) s (industry, sector) ON s.industry = b.industry
JOIN (SELECT * FROM jsonb_each_text(%(regions)s::jsonb)) r (country, region) ON r.country = b.country::text
GROUP BY GROUPING SETS (
    (week, b.industry, b.country), (week, b.industry, r.region), (week, b.industry), (week, s.sector, b.country),
    (week, s.sector, r.region), (week, s.sector),
    (month, b.industry, b.country), (month, b.industry, r.region), (month, b.industry), (month, s.sector, b.country),
    (month, s.sector, r.region), (month, s.sector),
    (quarter, b.industry, b.country), (quarter, b.industry, r.region), (quarter, b.industry),
    (quarter, s.sector, b.country), (quarter, s.sector, r.region), (quarter, s.sector))
"""
RAW_MEDIAN = RAW.replace("{median}", ", percentile_cont(0.5) WITHIN GROUP (ORDER BY c.duration_s)")
RAW = RAW.replace("{median}", "")


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def create_database(admin_url: str, name: str, *, businesses: int, calls: int) -> str:
    from governance.config import SQL_DIR
    from governance.migrations import migrate

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(admin_url, name)
    seconds = int((END - START).total_seconds())
    with psycopg.connect(url) as conn:
        conn.execute((SQL_DIR / "app_schema.sql").read_text())
        conn.execute(
            "INSERT INTO app.businesses SELECT g, 'b' || g, (%s::text[])[1 + g %% 12], (%s::text[])[1 + (g / 12) %% 7], %s"
            " FROM generate_series(1, %s) g",
            (INDUSTRIES, COUNTRIES, START, businesses),
        )
        conn.execute(
            "INSERT INTO app.callers (id, business_id, phone, first_seen_at) SELECT g, 1 + g %% %s, '+1555' || g, %s"
            " FROM generate_series(1, %s) g",
            (businesses, START, businesses * 20),
        )
        conn.execute(
            f"""INSERT INTO app.calls (id, business_id, caller_id, started_at, duration_s, outcome)
                SELECT g, 1 + (g %% ({businesses * 20})) %% {businesses}, 1 + g %% {businesses * 20},
                       %s::timestamptz + ((g::bigint * 7919) %% {seconds}) * interval '1 second', 30 + g %% 600,
                       (ARRAY['answered','voicemail','transferred','missed','booked'])[1 + g %% 5]
                FROM generate_series(1, %s) g""",  # noqa: S608 -- integers formatted by this script
            (START, calls),
        )
        conn.execute(
            f"""INSERT INTO app.messages (id, business_id, channel, direction, body, sent_at)
                SELECT g, 1 + g %% {businesses}, 'sms', 'inbound', 'x', %s::timestamptz + ((g::bigint * 104729) %% {seconds}) * interval '1 second'
                FROM generate_series(1, %s) g""",  # noqa: S608 -- integers formatted by this script
            (START, calls // 2),
        )
        conn.execute(
            f"""INSERT INTO app.appointments (id, business_id, caller_id, scheduled_for, created_at)
                SELECT g, 1 + (g * 5 %% ({businesses * 20})) %% {businesses}, 1 + g * 5 %% {businesses * 20},
                       %s::timestamptz + ((g::bigint * 5 * 7919) %% {seconds}) * interval '1 second' + interval '7 days',
                       %s::timestamptz + ((g::bigint * 5 * 7919) %% {seconds}) * interval '1 second'
                FROM generate_series(1, %s) g""",  # noqa: S608 -- integers formatted by this script
            (START, START, calls // 5),
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    migrate(url)
    return url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def project_sql(url: str) -> float:
    from governance.anonymisation.cells import fetch_cells
    from governance.anonymisation.spec import load_release_spec

    spec = load_release_spec()
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        fetch_cells(conn, spec, "app", START, END, bounded=False)
        return time.perf_counter() - started


def raw_sql(url: str, statement: str = RAW) -> float:
    from governance.anonymisation.spec import load_release_spec

    spec = load_release_spec()
    params = {"sectors": json.dumps(spec.sectors), "regions": json.dumps(spec.regions), "start": START, "end": END}
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(statement, params).fetchall()
        return time.perf_counter() - started


def child(url: str) -> dict[str, Any]:
    """Stage and verify one release (no object store); report time and peak memory."""
    from governance.anonymisation.release import check_release_input, stage_release
    from governance.anonymisation.spec import load_release_spec
    from governance.anonymisation.verify import verify_release

    spec = load_release_spec()
    from datetime import UTC, datetime

    now = datetime(2026, 12, 3, tzinfo=UTC)
    request = check_release_input({"period_start": START.isoformat(), "period_end": "2026-11-29"}, spec=spec,
                                  logical_date=now, now=now)  # fmt: skip
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        staged = stage_release(conn, spec, "app", request, run_id=f"bench-{uuid.uuid4().hex[:6]}")
        stage_s = time.perf_counter() - started
        outcome = verify_release(conn, spec, "app", staged["release_id"])
    return {"stage_s": stage_s, "total_s": time.perf_counter() - started, "cells": staged["cells"],
            "published": staged["published_cells"], "verified": outcome.success,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def run_child(url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", url], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=os.environ.copy())  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--businesses", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    admin = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    results: dict[int, dict[str, Any]] = {}
    for size in (1, 2):
        name = f"bench_anon_{size}x_{uuid.uuid4().hex[:6]}"
        try:
            url = create_database(admin, name, businesses=args.businesses * size, calls=args.calls * size)
            project, raw, raw_median = [], [], []
            for _ in range(args.repeat):  # alternating sides
                project.append(project_sql(url))
                raw.append(raw_sql(url))
                raw_median.append(raw_sql(url, RAW_MEDIAN))
            e2e = run_child(url)
            results[size] = {"project_s": statistics.median(project), "raw_s": statistics.median(raw),
                             "raw_median_s": statistics.median(raw_median), **e2e}  # fmt: skip
        finally:
            drop_database(admin, name)
        r = results[size]
        print(f"{size}x ({args.calls * size} calls, {args.businesses * size} businesses): SQL project {r['project_s']:.2f} s,"
              f" raw {r['raw_s']:.2f} s, ratio {r['project_s'] / r['raw_s']:.2f} (goal <= {SQL_GOAL}),"
              f" raw+median {r['raw_median_s']:.2f} s, ratio {r['project_s'] / r['raw_median_s']:.2f};"
              f" end to end stage {r['stage_s']:.2f} s, stage+verify {r['total_s']:.2f} s, {r['cells']} cells,"
              f" {r['published']} published, verified {r['verified']}, peak {r['peak_mib']:.0f} MiB")  # fmt: skip
    print(f"peak memory 2x/1x: {results[2]['peak_mib'] / results[1]['peak_mib']:.2f} (goal <= {MEMORY_GOAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
