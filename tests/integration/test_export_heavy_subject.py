"""A subject with tens of thousands of usage events (#12 item 4, the export side): the bundle
holds exactly the rows the test's own SQL finds, network addresses as the database's own text, and
the writer reads each table once however many formats the bundle holds (one pass feeds the JSON
and the CSV file: the memory and time of an export follow the rows once, not once per format), and
owned rows nothing else reads (the events) are never resolved into memory before they stream."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from governance.datamap import load_datamap
from governance_dev.seed import cast_member
from tests.fixtures.reference import Deployment
from tests.integration.test_export_bundle import bundle_rows, gate, read_bundle, subject_of, write

pytestmark = [pytest.mark.slow(seconds=120), pytest.mark.integration]

EVENTS = 30_000
# Addresses whose text Python's ipaddress renders differently from PostgreSQL's output (the
# IPv4-mapped one), with a netmask, IPv6, and plain IPv4. Compared with ``format('%s', ...)``: the
# output form psql shows (``::text`` on inet adds the netmask).
ADDRESSES = ("::ffff:1.2.3.4", "10.1.2.3/8", "2001:db8:0:0:1:0:0:1", "203.0.113.7")


def _plant_events(url: str, user_id: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO app.usage_events (id, user_id, occurred_at, ip_address, user_agent, device_id, path, geo_country)"
            " SELECT base.id + g, %(user)s, timestamptz '2026-11-28 12:00:00+00' - make_interval(secs => g * 31.5),"
            " (%(addresses)s::text[])[1 + g %% 4]::inet, 'heavy-agent', 'heavy-device-' || (g %% 7),"
            " '/app/calls/' || g, 'US'"
            " FROM (SELECT coalesce(max(id), 0) AS id FROM app.usage_events) AS base, generate_series(1, %(n)s) AS g",
            {"user": user_id, "n": EVENTS, "addresses": list(ADDRESSES)},
        )


def test_a_subject_with_tens_of_thousands_of_events_is_exported_whole_reading_each_table_once(
    reference_clone: Deployment, s3: Any, make_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    member = cast_member("both_user_and_caller")
    assert member.user_id is not None
    _plant_events(reference_clone.app_url, member.user_id)
    with psycopg.connect(reference_clone.app_url) as conn:
        truth = dict(conn.execute("SELECT id, format('%%s', ip_address) FROM app.usage_events WHERE user_id = %s",
                                  (member.user_id,)).fetchall())  # fmt: skip
    assert len(truth) > EVENTS

    reads: Counter[str] = Counter()
    original = collect.stream_table

    def counted(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        reads[str(table)] += 1
        yield from original(conn, dm, footprint, table, **kw)

    monkeypatch.setattr(collect, "stream_table", counted)
    resolved_tables: list[str] = []
    resolve = collect.resolve_in_database

    def recorded(conns: Any, plan: Any, *args: Any, **kw: Any) -> Any:
        resolved_tables.extend(str(step.table) for step in plan.steps)
        return resolve(conns, plan, *args, **kw)

    monkeypatch.setattr(collect, "resolve_in_database", recorded)
    datamap = load_datamap()
    subject = subject_of("both_user_and_caller")
    bucket = make_bucket("heavy-export")
    summary = write(datamap, subject, reference_clone, s3, bucket, "exports/heavy.zip.age", formats=("json", "csv"))

    assert reads and set(reads.values()) == {1}, f"each table is read once for both formats: {dict(reads)}"
    # The events are owned rows nothing else reads: counted and streamed in SQL, never resolved
    # into memory first; the tables narrowing needs (identity matches) are resolved.
    assert "aircalls_app.usage_events" not in resolved_tables
    assert {"aircalls_app.users", "aircalls_app.callers"} <= set(resolved_tables)
    assert summary.source_counts["aircalls_app.usage_events"] == len(truth)
    archive = read_bundle(s3, bucket, "exports/heavy.zip.age")
    exported = {int(r["id"]): r["ip_address"] for r in bundle_rows(archive, "usage_events")}
    assert exported == truth, "every event, each address as PostgreSQL writes it"
    with archive.open("data/aircalls_app/usage_events.csv") as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    assert {int(r["id"]): r["ip_address"] for r in rows} == truth and len(rows) == len(truth)

    import governance.export.gate as gate_module

    fed: dict[str, Any] = {}
    run_suites = gate_module._run_suites

    def capture(frames: Any, *, allowed: set[str], scope_ids: Any) -> Any:
        fed.update(ties=frames.ties, rows=frames.rows)
        return run_suites(frames, allowed=allowed, scope_ids=scope_ids)

    monkeypatch.setattr(gate_module, "_run_suites", capture)
    result = gate(datamap, summary, subject, s3, bucket, "exports/heavy.zip.age")
    assert result.passed, result.describe_failures()
    # The gate checks every row but GX sees groups of rows tied alike, not a frame per row.
    assert fed["rows"] == result.rows_checked >= len(truth)
    assert len(fed["ties"]) < 200 and sum(g["rows"] for g in fed["ties"]) == fed["rows"]


def test_gate_counts_each_occurrence_of_a_row_written_twice(
    reference_env: Deployment, s3: Any, make_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import governance.export.collect as collect

    original = collect.stream_table

    def first_call_twice(conn: Any, dm: Any, footprint: Any, table: Any, **kw: Any) -> Iterator[Any]:
        for columns, batch in original(conn, dm, footprint, table, **kw):
            yield columns, [*batch, batch[0]] if table.table == "calls" and batch else batch

    monkeypatch.setattr(collect, "stream_table", first_call_twice)
    monkeypatch.setenv("GOVERNANCE_OBJECTS_BUCKET", reference_env.bucket)
    datamap = load_datamap()
    subject = subject_of("caller_only")
    bucket = make_bucket("twice-export")
    summary = write(datamap, subject, reference_env, s3, bucket, "exports/twice.zip.age", formats=("json",))
    result = gate(datamap, summary, subject, s3, bucket, "exports/twice.zip.age")
    failed = {(c.suite, c.expectation): c for c in result.failed()}
    assert failed[("ties", "expect_compound_columns_to_be_unique")].unexpected_count == 2
    assert ("counts", "expect_column_pair_values_to_be_equal") in failed
