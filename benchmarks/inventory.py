"""Transfer inventory reconciliation against a large audit ledger, next to a raw SQL aggregate over
the same rows.

For each size (default 1M and 2M ledger rows) a fresh database on the server of
``GOVERNANCE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) gets the
governance schema (the project's migrations) and ``governance.audit_ledger`` filled by
``generate_series``: every row names an app table as input and one of twelve datasets as output
(the three processors, the app database, the buckets' prefixes, the governance schema, an
undeclared namespace). The ledger's append trigger (which checks the hash chain row by row) is
disabled in this scratch database only, so filling takes seconds; reading is what is measured.

* project: ``governance.inventory.observed.ledger_observations`` plus channel prefixes and
  ``governance.inventory.reconcile.build_inventory`` with the shipped data map, reference data and
  subprocessor list, in a child process (its peak memory is its own; tracemalloc's peak during the
  measured phase is printed too);
* raw: the bare aggregate ``SELECT uri, max(recorded_at), count(*) ... GROUP BY uri`` over the
  same rows through psycopg.

Runs alternate between the sides; medians are printed with the ratio project/raw (goal <= 3) and
peak memory across sizes (goal: flat, within 1.2x). Figures are printed, never asserted.
Databases are dropped at the end.

    .venv/bin/python benchmarks/inventory.py [--sizes 1000000,2000000] [--repeat 3]
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
AS_OF = datetime(2026, 12, 3, 6, tzinfo=UTC)
HOSTS = {"payments_processor": "https://pay.example", "crm": "https://crm.example", "support_desk": "https://desk.example"}

RAW_SQL = """
SELECT d.uri, max(l.recorded_at), count(*)
FROM governance.audit_ledger AS l CROSS JOIN LATERAL jsonb_array_elements_text(l.inputs || l.outputs) AS d(uri)
GROUP BY d.uri
"""


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_ledger(admin_url: str, name: str, rows: int) -> str:
    from governance.migrations import migrate

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(admin_url, name)
    migrate(url)
    outputs = [f"{host}:443/{proc}" for proc, host in HOSTS.items()] + [
        "postgres://db.internal:5432/aircalls/app/callers", "postgres://db.internal:5432/aircalls/app/calls",
        "postgres://db.internal:5432/aircalls/app/users", "s3://aircalls-data/recordings",
        "s3://aircalls-data/transcripts", "s3://aircalls-data/exports",
        "postgres://db.internal:5432/aircalls/governance/privacy_requests",
        "postgres://db.internal:5432/aircalls/governance/erasure_runs", "https://unknown.example:443/collector",
    ]  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        # Scratch database only: the append trigger checks the chain row by row (seconds per 10k rows).
        conn.execute("ALTER TABLE governance.audit_ledger DISABLE TRIGGER audit_ledger_append_only_chain")
        conn.execute(
            """
            INSERT INTO governance.audit_ledger (seq, recorded_at, dag_id, run_id, task_id, map_index, try_number,
                state, inputs, outputs, source, key_id, prev_mac, mac)
            SELECT g, %(as_of)s::timestamptz - make_interval(mins => (g %% 500000)), 'bench', 'run_' || g, 'task', -1, 1,
                   CASE WHEN g %% 50 = 0 THEN 'skipped' ELSE 'success' END,
                   '["postgres://db.internal:5432/aircalls/app/callers"]'::jsonb,
                   jsonb_build_array((%(outputs)s::text[])[1 + g %% %(n)s]),
                   'listener', 'bench', repeat('0', 64), repeat('0', 64)
            FROM generate_series(1, %(rows)s) AS g
            """,
            {"as_of": AS_OF, "outputs": outputs, "n": len(outputs), "rows": rows},
        )
        conn.execute("ANALYZE governance.audit_ledger")
    return url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def raw_aggregate(url: str) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        rows = conn.execute(RAW_SQL).fetchall()
        elapsed = time.perf_counter() - started
    assert rows
    return elapsed


def project_child(url: str) -> dict[str, Any]:
    """In the child: load the inputs (not timed), then read the ledger and reconcile (timed)."""
    import tracemalloc

    from governance.config import INCLUDE_DIR
    from governance.connections import ConnectionInfo, not_configured
    from governance.datamap import load_datamap
    from governance.inventory.loader import load_reference, load_subprocessors
    from governance.inventory.observed import channel_prefixes, ledger_observations
    from governance.inventory.reconcile import build_inventory, notice_entries

    connections = {name: ConnectionInfo(name, "http", host) for name, host in HOSTS.items()}
    connections["aircalls_app"] = ConnectionInfo("aircalls_app", "postgres", "db.internal", 5432, schema="aircalls")
    connections["governance_db"] = connections["aircalls_app"]

    def connection(conn_id: str) -> ConnectionInfo:
        if conn_id not in connections:
            raise not_configured(conn_id)
        return connections[conn_id]

    datamap = load_datamap(INCLUDE_DIR / "datamap.yaml")
    reference = load_reference(INCLUDE_DIR / "reference")
    declared = load_subprocessors(INCLUDE_DIR / "subprocessors.yaml", datamap=datamap, reference=reference,
                                  connection_exists=lambda _c: True)  # fmt: skip
    prefixes = channel_prefixes(datamap, declared, connection=connection)
    tracemalloc.start()
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        observed = ledger_observations(conn, as_of=AS_OF)
    inventory = build_inventory(declared, datamap, reference, observed=observed, prefixes=prefixes,
                                notified=notice_entries(declared), as_of=AS_OF)  # fmt: skip
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    return {
        "seconds": elapsed, "traced_peak_bytes": peak,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "datasets": len(observed.datasets), "violations": sorted({v.kind for v in inventory.violations}),
    }  # fmt: skip


def run_project(url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", url], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,2000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(project_child(args.child)))
        return 0
    admin = os.environ.get("GOVERNANCE_TEST_PG_URL", DEFAULT_PG_URL)
    results: dict[int, dict[str, Any]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        name = f"bench_inventory_{size}_{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        url = create_ledger(admin, name, size)
        print(f"{size:>9,} ledger rows filled in {time.perf_counter() - started:.1f} s", flush=True)
        try:
            project, raw = [], []
            for _ in range(args.repeat):
                project.append(run_project(url))
                raw.append(raw_aggregate(url))
            results[size] = {
                "project_s": statistics.median(p["seconds"] for p in project),
                "raw_s": statistics.median(raw),
                "traced_peak_kb": max(p["traced_peak_bytes"] for p in project) / 1024,
                "max_rss_kb": max(p["max_rss_kb"] for p in project),
                "datasets": project[0]["datasets"],
                "violations": project[0]["violations"],
            }
        finally:
            drop_database(admin, name)
        r = results[size]
        print(f"{size:>9,} rows: project {r['project_s']:.2f} s, raw aggregate {r['raw_s']:.2f} s, "
              f"ratio {r['project_s'] / r['raw_s']:.2f} (goal <= 3); traced peak {r['traced_peak_kb']:.0f} KiB, "
              f"child max RSS {r['max_rss_kb'] / 1024:.0f} MiB; {r['datasets']} datasets, "
              f"violations {', '.join(r['violations'])}", flush=True)  # fmt: skip
    sizes = sorted(results)
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        print(f"memory {sizes[-1]:,} vs {sizes[0]:,} rows: traced peak x{large['traced_peak_kb'] / small['traced_peak_kb']:.2f}, "
              f"max RSS x{large['max_rss_kb'] / small['max_rss_kb']:.2f} (goal: flat, <= 1.2)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "plugins"))
    raise SystemExit(main())
