"""Retention sweep of ``usage_events`` (rule ``usage_events_13_months``) next to a raw
single-statement ``DELETE ... WHERE occurred_at < cutoff`` on an identical copy.

For each size (1x, 2x, 4x the base table, the same number of expired rows, about 40% of the 1x
table) a fresh database on the server of ``GOVERNANCE_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) gets ``app.usage_events`` with the reference
deployment's columns and indexes, filled by ``generate_series``, and a copy made with ``CREATE
DATABASE ... TEMPLATE``. The sweep runs the project's engine (``governance.retention.engine``: the
plan's keyset batches, holds, run record, watermark) in a child process, so its peak memory is
its own; the baseline runs the raw DELETE in one transaction. Runs alternate between the sides.

Then the monthly range-partitioned variant (the seeder's ``partition_usage_events``: one partition
per month, a DEFAULT one) of a table of ``--partitioned-expired`` expired rows (default: the same
as ``--expired``), 40% of it: the sweep (wholly expired months dropped, the cutoff's month in
batches) next to the raw DELETE on an identical partitioned copy, and next to the raw DELETE on the
plain table of the same rows.

Printed: throughput ratio sweep/raw (goal >= 0.7), the longest batch transaction (goal < 1 s),
sweep time across sizes (goal within 1.3x), peak memory across sizes (goal within 1.2x), and the
partitioned sweep's speed-up over the raw DELETE (goal >= 10x). Figures are printed, never
asserted. Databases are dropped at the end. Both sides of every comparison get a copy of one
template, vacuumed as autovacuum leaves a table in service.

    .venv/bin/python benchmarks/retention.py [--expired 200000] [--sizes 1,2,4] [--repeat 1]
        [--partitioned-expired N] [--skip-partitioned]
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
RULE = "usage_events_13_months"
THROUGHPUT_GOAL, BATCH_GOAL_MS, SCALE_GOAL, MEMORY_GOAL, PARTITION_GOAL = 0.7, 1000.0, 1.3, 1.2, 10.0

DDL = """
CREATE SCHEMA app;
CREATE TABLE app.usage_events (
    id bigint PRIMARY KEY, user_id bigint, occurred_at timestamptz NOT NULL, ip_address inet,
    user_agent text, device_id text, path text NOT NULL, geo_country char(2)
);
"""
INDEXES = """
CREATE INDEX usage_events_user_id_idx ON app.usage_events (user_id);
CREATE INDEX usage_events_occurred_at_idx ON app.usage_events (occurred_at);
"""
# As autovacuum leaves a table in service (visibility map set): both sides get the same copy.
VACUUM = "VACUUM ANALYZE app.usage_events"
# Expired rows: 13 months .. 25 months before as_of; unexpired: the last 12 months.
FILL = (
    """INSERT INTO app.usage_events
       SELECT g, g %% 20000,
              %(as_of)s::timestamptz - interval '13 months 1 day' - (g::bigint * 31536000 / %(expired)s) * interval '1 second',
              ('10.' || (g %% 250) || '.' || (g %% 200) || '.' || (g %% 250))::inet, 'Mozilla/5.0', md5(g::text), '/calls', 'US'
         FROM generate_series(1, %(expired)s) g""",
    """INSERT INTO app.usage_events
       SELECT g, g %% 20000,
              %(as_of)s::timestamptz - ((g - %(expired)s)::bigint * 31104000 / (%(total)s - %(expired)s)) * interval '1 second',
              ('10.' || (g %% 250) || '.' || (g %% 200) || '.' || (g %% 250))::inet, 'Mozilla/5.0', md5(g::text), '/calls', 'US'
         FROM generate_series(%(expired)s + 1, %(total)s) g""",
)


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def create_database(admin_url: str, name: str, *, expired: int, total: int, partitioned: bool = False) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DDL)
        for statement in FILL:
            conn.execute(statement, {"as_of": AS_OF, "expired": expired, "total": total})
        conn.execute(INDEXES)
    if partitioned:
        from governance_dev.seed.partitions import partition_usage_events

        partition_usage_events(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(VACUUM)
    from governance.migrations import migrate

    migrate(url)
    return url


def copy_database(admin_url: str, source: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source)))
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def raw_delete(url: str) -> tuple[float, int]:
    """The baseline: one DELETE of every expired row, one transaction."""
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        cur = conn.execute(
            "DELETE FROM app.usage_events WHERE occurred_at < %s::timestamptz - interval '13 months'", (AS_OF,)
        )
        conn.commit()
        return time.perf_counter() - started, cur.rowcount


def sweep_child(url: str) -> dict[str, Any]:
    """Run the project's sweep of the one rule on ``url`` (in this process); return its figures."""
    from governance.datamap import load_datamap
    from governance.datamap.plans import build_retention_plan
    from governance.retention.engine import SweepContext, SweepTarget, sweep_target
    from governance.retention.holds import RetentionHolds

    datamap = load_datamap()
    plan = build_retention_plan(datamap)
    with psycopg.connect(url, autocommit=True) as gov:
        ctx = SweepContext(
            datamap=datamap, plan=plan, run_id=f"bench-{uuid.uuid4().hex[:8]}", as_of=AS_OF, dry_run=False,
            holds=RetentionHolds(), app_connect=lambda _system: psycopg.connect(url), gov=gov,
            object_client=lambda _system: None, buckets={},
        )  # fmt: skip
        target = SweepTarget(system="aircalls_app", kind="table", name="usage_events", rules=[RULE], orphans=False, wave=0)
        started = time.perf_counter()
        (outcome,) = sweep_target(ctx, target)
        elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed, "rows": outcome.rows_affected, "batches": outcome.batches,
        "partitions_dropped": outcome.partitions_dropped,
        "longest_batch_ms": outcome.longest_batch_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def run_sweep(url: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, __file__, "--child", url], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expired", type=int, default=200_000, help="expired rows (the same at every size)")
    parser.add_argument("--sizes", default="1,2,4", help="table sizes as multiples of the base (expired / 0.4)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side and size (medians printed)")
    parser.add_argument("--partitioned-expired", type=int, default=None, help="expired rows of the partitioned run")
    parser.add_argument("--skip-partitioned", action="store_true", help="leave out the partitioned comparison")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import logging

        logging.disable(logging.INFO)
        print(json.dumps(sweep_child(args.child)))
        return 0
    admin = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    base_total = int(args.expired / 0.4)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]  # --sizes "": the partitioned comparison only
    suffix = uuid.uuid4().hex[:8]
    created: list[str] = []
    results: dict[int, dict[str, Any]] = {}
    try:
        for size in sizes:
            template = f"bench_retention_{size}x_{suffix}"
            total = base_total * size
            print(f"size {size}x: {total:,} rows, {args.expired:,} expired ...", flush=True)
            create_database(admin, template, expired=args.expired, total=total)
            created.append(template)
            sweeps: list[dict[str, Any]] = []
            raws: list[float] = []
            for attempt in range(args.repeat):
                for side in ("sweep", "raw") if attempt % 2 == 0 else ("raw", "sweep"):
                    name = f"bench_retention_{size}x_{side}_{attempt}_{suffix}"
                    url = copy_database(admin, template, name)
                    created.append(name)
                    if side == "sweep":
                        sweeps.append(run_sweep(url))
                    else:
                        seconds, rows = raw_delete(url)
                        assert rows == args.expired, rows
                        raws.append(seconds)
                    drop_database(admin, name)
                    created.remove(name)
            sweep_s = statistics.median(s["seconds"] for s in sweeps)
            raw_s = statistics.median(raws)
            results[size] = {
                "sweep_s": sweep_s, "raw_s": raw_s, "ratio": raw_s / sweep_s,
                "longest_batch_ms": max(s["longest_batch_ms"] for s in sweeps),
                "peak_rss_mb": max(s["peak_rss_mb"] for s in sweeps), "rows": sweeps[0]["rows"],
                "batches": sweeps[0]["batches"],
            }  # fmt: skip
            r = results[size]
            print(
                f"  sweep {r['sweep_s']:.2f} s ({r['rows']:,} rows, {r['batches']} batches, longest {r['longest_batch_ms']:.0f} ms), "
                f"raw DELETE {r['raw_s']:.2f} s: throughput ratio sweep/raw {r['ratio']:.2f} (goal >= {THROUGHPUT_GOAL}); "
                f"peak memory {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        if not args.skip_partitioned:
            partitioned = compare_partitioned(admin, args.partitioned_expired or args.expired, args.repeat, suffix, created)
    finally:
        for name in created:
            drop_database(admin, name)
    if len(results) > 1:
        times = [r["sweep_s"] for r in results.values()]
        memory = [r["peak_rss_mb"] for r in results.values()]
        per_size = ", ".join(f"{size}x {r['sweep_s']:.2f} s" for size, r in results.items())
        print(f"sweep time across sizes {per_size}: max/min {max(times) / min(times):.2f} (goal <= {SCALE_GOAL})")
        print(f"peak memory max/min {max(memory) / min(memory):.2f} (goal <= {MEMORY_GOAL})")
    if results:
        longest = max(r["longest_batch_ms"] for r in results.values())
        print(f"longest batch transaction {longest:.0f} ms (goal < {BATCH_GOAL_MS:.0f} ms)")
    if not args.skip_partitioned:
        p = partitioned
        print(
            f"partitioned: sweep {p['sweep_s']:.3f} s ({p['rows']:,} rows: {p['partitions_dropped']} partitions dropped, "
            f"{p['batches']} batches and drops, longest {p['longest_batch_ms']:.0f} ms); raw DELETE on the partitioned copy "
            f"{p['raw_s']:.2f} s: {p['raw_s'] / p['sweep_s']:.1f}x faster (goal >= {PARTITION_GOAL:.0f}x); raw DELETE on the "
            f"plain table {p['plain_raw_s']:.2f} s: {p['plain_raw_s'] / p['sweep_s']:.1f}x"
        )
    return 0


def compare_partitioned(admin: str, expired: int, repeat: int, suffix: str, created: list[str]) -> dict[str, Any]:
    """The sweep on the monthly-partitioned table next to the raw DELETE on an identical copy (and
    on the plain table of the same rows), runs alternated; medians."""
    total = int(expired / 0.4)
    print(f"partitioned: {total:,} rows, {expired:,} expired, monthly partitions ...", flush=True)
    templates = {}
    for kind in ("partitioned", "plain"):
        templates[kind] = f"bench_retention_{kind}_{suffix}"
        create_database(admin, templates[kind], expired=expired, total=total, partitioned=kind == "partitioned")
        created.append(templates[kind])
    sweeps: list[dict[str, Any]] = []
    raws: list[float] = []
    plain: list[float] = []
    for attempt in range(repeat):
        for side in ("sweep", "raw", "plain") if attempt % 2 == 0 else ("plain", "raw", "sweep"):
            name = f"bench_retention_p_{side}_{attempt}_{suffix}"
            url = copy_database(admin, templates["plain" if side == "plain" else "partitioned"], name)
            created.append(name)
            if side == "sweep":
                sweeps.append(run_sweep(url))
            else:
                seconds, rows = raw_delete(url)
                assert rows == expired, rows
                (raws if side == "raw" else plain).append(seconds)
            drop_database(admin, name)
            created.remove(name)
    return {
        "sweep_s": statistics.median(s["seconds"] for s in sweeps), "raw_s": statistics.median(raws),
        "plain_raw_s": statistics.median(plain), "rows": sweeps[0]["rows"],
        "partitions_dropped": sweeps[0]["partitions_dropped"], "batches": sweeps[0]["batches"],
        "longest_batch_ms": max(s["longest_batch_ms"] for s in sweeps),
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
