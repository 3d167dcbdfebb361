"""Audit-ledger appends per second under concurrent writers, next to raw INSERTs of the same rows.

Each writer is a process (as each Airflow task is) holding one connection and writing single rows,
each in its own transaction, as the listener does (one row per task instance final state). A ledger append takes the ledger's
advisory lock, reads the head, chains the HMAC and inserts through the append-only trigger
(``governance.ledger.LedgerWriter.append``, as ``governance_ledger_writer``); the baseline is a
plain autocommit INSERT of the same columns into a table with no keys, triggers or lock. Rounds
alternate baseline and ledger on a fresh database; the chain is verified at the end. Prints the
median rates, the ratio ledger/raw (goal: at least 0.5) and peak RSS.

    .venv/bin/python benchmarks/ledger.py [--pg-url URL] [--writers 4] [--rows 250] [--rounds 3] [--async-commit]

``--async-commit`` runs the ledger appends with ``synchronous_commit = off`` (for comparison only:
the project appends durably).

PostgreSQL: ``--pg-url``, else ``GOVERNANCE_TEST_PG_URL``, else an embedded server (pgserver).
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from governance.crypto import Keyring
from governance.ledger import LedgerEntry, LedgerWriter, verify_ledger
from governance.migrations import migrate
from governance_dev.services import EmbeddedPostgres, create_database, drop_database, free_port

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RAW_TABLE = """CREATE TABLE bench_raw_ledger (
    recorded_at timestamptz, dag_id text, run_id text, task_id text, map_index integer, try_number integer,
    state text, started_at timestamptz, ended_at timestamptz, inputs jsonb, outputs jsonb, rows_affected bigint,
    request_id text, source text, key_id text)"""
RAW_INSERT = """INSERT INTO bench_raw_ledger (recorded_at, dag_id, run_id, task_id, map_index, try_number, state,
    started_at, ended_at, inputs, outputs, rows_affected, request_id, source, key_id)
    VALUES (now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"""


def make_entry(writer: int, i: int, round_no: int) -> LedgerEntry:
    return LedgerEntry(
        dag_id="dsr_erasure", run_id=f"bench__{round_no}_{writer}", task_id=f"erase_{i}", map_index=-1, try_number=1,
        state="success", started_at=T0, ended_at=T0 + timedelta(seconds=2),
        inputs=("postgres://127.0.0.1:5432/aircalls/app/users",),
        outputs=("postgres://127.0.0.1:5432/aircalls/app/calls", "s3://aircalls-data/recordings"),
        rows_affected=i, request_id="era-20260301-00112233aabb",
    )  # fmt: skip


def _raw_writer(barrier: Any, n: int, rows: int, url: str, round_no: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        barrier.wait()
        for i in range(rows):
            e = make_entry(n, i, round_no)
            conn.execute(
                RAW_INSERT,
                (e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.state, e.started_at, e.ended_at,
                 Jsonb(list(e.inputs)), Jsonb(list(e.outputs)), e.rows_affected, e.request_id, e.source, "bench-1"),
            )  # fmt: skip


def _ledger_writer(
    barrier: Any, n: int, rows: int, url: str, round_no: int, key_b64: str, async_commit: bool
) -> None:
    with LedgerWriter.connect(url, Keyring.from_parts("bench-1", key_b64)) as writer:
        if async_commit:
            writer.conn.execute("SET synchronous_commit = off")
        barrier.wait()
        for i in range(rows):
            writer.append([make_entry(n, i, round_no)])


def run_writers(writers: int, rows: int, target: Callable[..., None], *args: Any) -> float:
    """Start ``writers`` processes running ``target(barrier, n, rows, *args)`` together; rows/s overall.

    Processes, not threads: each Airflow task appends from its own process.
    """
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=target, args=(barrier, n, rows, *args)) for n in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    began = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode for p in procs):
        raise RuntimeError("a writer process failed")
    return writers * rows / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=os.environ.get("GOVERNANCE_TEST_PG_URL"))
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250, help="rows per writer per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--async-commit", action="store_true", help="ledger appends with synchronous_commit=off")
    args = parser.parse_args()

    server = None
    admin_url = args.pg_url
    if not admin_url:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-ledger-pg-")) / "pgdata", free_port())
        server.start()
        admin_url = server.url()
    name = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    create_database(admin_url, name)
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RAW_TABLE)
        keyring = Keyring.from_parts("bench-1", base64.b64encode(secrets.token_bytes(32)).decode())
        raw_rates: list[float] = []
        ledger_rates: list[float] = []
        key_b64 = base64.b64encode(keyring.active_key).decode()
        for round_no in range(args.rounds):
            raw_rates.append(run_writers(args.writers, args.rows, _raw_writer, url, round_no))
            ledger_rates.append(
                run_writers(args.writers, args.rows, _ledger_writer, url, round_no, key_b64, args.async_commit)
            )
            print(f"round {round_no + 1}: raw {raw_rates[-1]:8.0f} rows/s   ledger {ledger_rates[-1]:8.0f} appends/s")
        with psycopg.connect(url) as conn:
            report = verify_ledger(conn, keyring)
            stored = conn.execute("SELECT count(*) FROM governance.audit_ledger").fetchone()
        expected = args.rounds * args.writers * args.rows
        if not report.ok or stored is None or stored[0] != expected:
            print(f"ledger does not verify after the benchmark: {report.summary()}")
            return 1
        raw, ledger = statistics.median(raw_rates), statistics.median(ledger_rates)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        writer_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"\n{args.writers} writers x {args.rows} rows x {args.rounds} rounds (single-row transactions)\n"
            f"raw INSERT (plain table)    median {raw:8.0f} rows/s\n"
            f"ledger append (chained)     median {ledger:8.0f} appends/s\n"
            f"ratio ledger/raw            {ledger / raw:8.2f}   (goal >= 0.5)\n"
            f"chain verified              {report.rows} rows\n"
            f"peak RSS                    {peak_mb:8.1f} MB (this process), {writer_peak_mb:.1f} MB (largest writer)"
        )
        return 0
    finally:
        drop_database(admin_url, name)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
