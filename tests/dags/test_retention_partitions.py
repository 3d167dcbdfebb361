"""The retention sweep on the monthly range-partitioned variant of ``app.usage_events`` (the
seeder's ``--partitioned-usage-events``), on a copy of the reference deployment: wholly expired
months go whole (detached and dropped), the month the cutoff falls in is swept in batches, and a
month holding a row under a legal hold stays, its other expired rows deleted row by row. Every
expectation is hand-written SQL on the catalog and the rows, taken before and after; the sweep
runs through the mapped task's function (``sweep_one_target``: sweep, lineage, verification)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=60), pytest.mark.integration, pytest.mark.dagrun]

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
RULE = "usage_events_13_months"
CUTOFF_SQL = "%(as_of)s::timestamptz - interval '13 months'"

PARTITIONS = """
SELECT c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']*)''\\)'))[1]::timestamptz AS upper_bound,
       pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'app.usage_events'::regclass
"""


def partitions(url: str) -> dict[str, tuple[datetime | None, bool]]:
    with psycopg.connect(url) as conn:
        return {name: (upper, default) for name, upper, default in conn.execute(PARTITIONS).fetchall()}


def rows_by_partition(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM app.usage_events GROUP BY 1"
        ).fetchall())  # fmt: skip


def fingerprint(url: str, where: str = "TRUE") -> dict[Any, str]:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT id, md5(t::text) FROM app.usage_events t WHERE {}").format(sql.SQL(where))  # type: ignore[arg-type]
        return dict(conn.execute(query, {"as_of": AS_OF}).fetchall())


def run_record(url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT dry_run, rows_affected, held, partitions_dropped, batches, status, cutoff"
            " FROM governance.retention_runs WHERE run_id = %s AND rule = %s",
            (run_id, RULE),
        ).fetchone()
    assert row is not None
    return dict(zip(("dry_run", "rows", "held", "partitions_dropped", "batches", "status", "cutoff"), row, strict=True))


def test_partitioned_usage_events_lose_whole_expired_months_keep_the_held_month_and_batch_the_boundary(
    reference_clone: Deployment,
) -> None:
    from governance.crypto import hasher_from_airflow
    from governance.migrations import migrate
    from governance.workflows.retention_sweep import plan_sweep, sweep_one_target
    from governance_dev.seed.partitions import partition_usage_events

    url = reference_clone.app_url
    migrate(url)
    made = partition_usage_events(url)
    assert made.partitions > 30 and made.rows > 0
    with psycopg.connect(url) as conn:
        cutoff = conn.execute(f"SELECT {CUTOFF_SQL}", {"as_of": AS_OF}).fetchone()[0]  # type: ignore[index]
        # The user whose expired events fall in the fewest months (at least one wholly expired).
        user_id, email = conn.execute(
            """SELECT u.id, lower(normalize(u.email, NFC)) FROM app.usage_events e JOIN app.users u ON u.id = e.user_id
                WHERE e.occurred_at < %(cutoff)s GROUP BY u.id, u.email
               HAVING min(e.occurred_at) < date_trunc('month', %(cutoff)s, 'UTC')
                ORDER BY count(DISTINCT date_trunc('month', e.occurred_at, 'UTC')), u.id LIMIT 1""",
            {"cutoff": cutoff},
        ).fetchone()  # type: ignore[misc]
        hasher = hasher_from_airflow()
        conn.execute(
            "INSERT INTO governance.legal_holds (scope, identity_kind, subject_hash, hash_key_id, reason, starts_at, created_by)"
            " VALUES ('person', 'email', %s, %s, 'Dispute: this user''s records preserved', %s, 'legal-team')",
            (hasher.hash("email", email), hasher.key_id, AS_OF - timedelta(days=30)),
        )
        # The months holding that user's expired rows (each kept, swept row by row).
        held_months = dict(conn.execute(
            sql.SQL("SELECT c.relname, count(*) FROM app.usage_events e JOIN pg_class c ON c.oid = e.tableoid"
                    " WHERE e.user_id = %(user)s AND e.occurred_at < {} GROUP BY 1").format(sql.SQL(CUTOFF_SQL)),
            {"user": user_id, "as_of": AS_OF},
        ).fetchall())  # fmt: skip
    before_parts = partitions(url)
    before_rows = rows_by_partition(url)
    everything = fingerprint(url)
    unexpired = fingerprint(url, f"occurred_at >= {CUTOFF_SQL}")
    held_rows = fingerprint(url, f"occurred_at < {CUTOFF_SQL} AND user_id = {int(user_id)}")
    expired_total = len(everything) - len(unexpired)
    whole = {n for n, (upper, default) in before_parts.items() if not default and upper is not None and upper <= cutoff}
    boundary = next(n for n, (upper, default) in before_parts.items()
                    if not default and upper is not None and upper > cutoff and upper - timedelta(days=31) <= cutoff)  # fmt: skip
    droppable = whole - set(held_months)
    assert held_months and set(held_months) <= whole | {boundary} and len(droppable) >= 3
    assert sum(held_months.values()) == len(held_rows) > 0
    assert f"app.{boundary}" in before_rows  # the cutoff month holds rows on both sides of it
    dropped_rows = sum(before_rows.get(f"app.{n}", 0) for n in droppable)

    options = {"dry_run": True, "as_of": AS_OF.isoformat(), "rules": [RULE], "orphan_grace_days": 7}
    (target,) = plan_sweep(options)

    # The dry run: the same counts, nothing changed (not a row, not a partition).
    dry = sweep_one_target(target, options, run_id="partitions-dry")
    assert fingerprint(url) == everything and partitions(url) == before_parts
    dry_record = run_record(url, "partitions-dry")
    assert dry_record["dry_run"] and dry_record["partitions_dropped"] == len(droppable)
    assert dry_record["rows"] == expired_total - len(held_rows) == dry["rules"][RULE]["rows"]
    assert dry_record["held"] == len(held_rows)

    # The sweep.
    options["dry_run"] = False
    result = sweep_one_target(target, options, run_id="partitions-sweep")
    after_parts = partitions(url)
    assert set(after_parts) == set(before_parts) - droppable  # whole months gone, nothing else
    assert set(held_months) <= set(after_parts) and boundary in after_parts
    assert fingerprint(url, f"occurred_at >= {CUTOFF_SQL}") == unexpired  # no unexpired row changed
    assert fingerprint(url, f"occurred_at < {CUTOFF_SQL}") == held_rows  # only the held rows are left expired
    after_rows = rows_by_partition(url)
    # The held months were swept row by row: their held rows stay, the rest went.
    for month, count in held_months.items():
        if month != boundary:
            assert after_rows[f"app.{month}"] == count
    # The boundary month was swept in batches: its expired rows went, its newer rows stayed.
    with psycopg.connect(url) as conn:
        boundary_newer = conn.execute(
            sql.SQL("SELECT count(*) FROM app.usage_events WHERE tableoid = {}::regclass AND occurred_at >= {}").format(
                sql.Literal(f"app.{boundary}"), sql.SQL(CUTOFF_SQL)),
            {"as_of": AS_OF},
        ).fetchone()[0]  # type: ignore[index]
    assert 0 < boundary_newer + held_months.get(boundary, 0) == after_rows[f"app.{boundary}"] < before_rows[f"app.{boundary}"]
    record = run_record(url, "partitions-sweep")
    assert record["status"] == "done" and not record["dry_run"]
    assert record["partitions_dropped"] == len(droppable)
    assert record["rows"] == expired_total - len(held_rows) == result["rules"][RULE]["rows"]
    assert result["rules"][RULE]["partitions_dropped"] == len(droppable)
    assert record["rows"] > dropped_rows and record["batches"] > len(droppable)  # partitions, then batches
    assert record["held"] == len(held_rows)
    assert result["verification"]["success"] is True

    # Again the same day: nothing to drop or delete.
    sweep_one_target(target, options, run_id="partitions-again")
    again = run_record(url, "partitions-again")
    assert (again["rows"], again["partitions_dropped"]) == (0, 0)
    assert partitions(url) == after_parts


def test_the_partition_function_refuses_a_partition_newer_than_the_cutoff_or_a_future_cutoff(
    reference_clone: Deployment,
) -> None:
    from governance.migrations import migrate
    from governance_dev.seed.partitions import partition_usage_events

    url = reference_clone.app_url
    migrate(url)
    partition_usage_events(url)
    before = partitions(url)
    newest = max((upper, name) for name, (upper, default) in before.items() if upper is not None and not default)[1]
    oldest = min((upper, name) for name, (upper, default) in before.items() if upper is not None and not default)[1]
    default = next(name for name, (_upper, is_default) in before.items() if is_default)
    call = "SELECT governance.drop_expired_partition('app.usage_events'::regclass, %s::regclass, %s)"
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="after the cutoff"):
            conn.execute(call, (f"app.{newest}", AS_OF))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not in the future"):
            conn.execute(call, (f"app.{oldest}", datetime.now(UTC) + timedelta(days=1)))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no finite upper bound|not a partition"):
            conn.execute(call, (f"app.{default}", AS_OF))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not range-partitioned"):
            conn.execute("SELECT governance.drop_expired_partition('app.calls'::regclass, %s::regclass, %s)",
                         (f"app.{oldest}", AS_OF))  # fmt: skip
    assert partitions(url) == before


class Killed(BaseException):
    """Stands for the worker being killed: not an Exception, so nothing in the sweep handles it."""


def test_ranged_batches_killed_mid_rule_finish_on_retry_deleting_each_expired_row_once(
    reference_clone: Deployment, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """usage_events (plain table, no hold touching it) is swept in ranges of its age index; a
    worker killed after the third range and retried deletes the rest, each row counted once."""
    import yaml

    from governance.config import INCLUDE_DIR
    from governance.datamap.plans import RANGE_BATCH_FACTOR
    from governance.migrations import migrate
    from governance.retention import engine
    from governance.workflows.retention_sweep import plan_sweep, sweep_one_target

    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    data["settings"]["retention_batch_size"] = 500  # ranges of 2,000 rows: several
    small = tmp_path / "datamap.yaml"
    small.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("GOVERNANCE_DATAMAP", str(small))
    url = reference_clone.app_url
    migrate(url)
    unexpired = fingerprint(url, f"occurred_at >= {CUTOFF_SQL}")
    expired = len(fingerprint(url)) - len(unexpired)
    per_batch = 500 * RANGE_BATCH_FACTOR
    assert expired > 4 * per_batch

    real = engine._BatchScan.apply_range_batch
    calls = {"n": 0}

    def killed_after_third(self: Any, *args: Any) -> int:
        if calls["n"] == 3:
            raise Killed
        calls["n"] += 1
        return real(self, *args)

    monkeypatch.setattr(engine._BatchScan, "apply_range_batch", killed_after_third)
    options = {"dry_run": False, "as_of": AS_OF.isoformat(), "rules": [RULE], "orphan_grace_days": 7}
    (target,) = plan_sweep(options)
    with pytest.raises(Killed):
        sweep_one_target(target, options, run_id="killed")
    first = run_record(url, "killed")
    left = len(fingerprint(url, f"occurred_at < {CUTOFF_SQL}"))
    # Three ranges went (a range ends with every row of its last age, so it may hold a few more).
    assert first["status"] == "failed" and expired - left == first["rows"] >= 3 * per_batch

    monkeypatch.setattr(engine._BatchScan, "apply_range_batch", real)
    sweep_one_target(target, options, run_id="killed")  # the task's retry
    second = run_record(url, "killed")
    assert second["status"] == "done" and second["rows"] == left
    assert fingerprint(url, f"occurred_at < {CUTOFF_SQL}") == {}
    assert fingerprint(url, f"occurred_at >= {CUTOFF_SQL}") == unexpired
