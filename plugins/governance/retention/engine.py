"""Runs the retention plan: one target (a table with its rules, or an object prefix) at a time.

Contract of :func:`sweep_target`:

* executes only the statements :func:`governance.datamap.plans.build_retention_plan` built, in
  bounded batches (one short transaction each; the keyset cursor walks the expired rows once);
* a table's rules run in ``plans.ACTION_ORDER`` (generalise, null_fields, delete_objects,
  delete_rows), each from its watermark (``governance.retention_watermarks``);
* rows under a legal hold, kept by a legal exception, or owning such a row, are counted by reason
  and never touched; objects are deleted with every version before the rows that name them;
* a dry run runs the same scans and listings, reports the same counts and changes nothing (not
  even the watermark);
* each rule writes its ``governance.retention_runs`` row (counts, never values) and its batches
  are logged with counts and rates only;
* idempotent: a retried or repeated run finds nothing left to do below the watermark, and rows
  already handled are not pending.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from governance.datamap import graph
from governance.datamap.model import DataMap, PrefixRef, ReferenceKind, TableRef
from governance.datamap.plans import (
    ACTION_ORDER,
    AFTER_AGE,
    AFTER_PK,
    AS_OF,
    BATCH_AFFECTED,
    BATCH_LAST_AGE,
    BATCH_LAST_KEY,
    BATCH_OLDEST_SKIPPED,
    BATCH_SCANNED,
    BATCH_SIZE,
    HELD_REASONS,
    KEYS,
    PARTITION_FROM,
    PARTITION_TO,
    PROBE_BLOCKED,
    PROBE_ROWS,
    RANGE_BOUND,
    SCAN_AGE,
    SCAN_DUE,
    SCAN_KEY,
    SCAN_PENDING,
    ItemTtlRetention,
    ObjectRetention,
    OrphanCheck,
    RetentionPlan,
    RetentionStatement,
    Statement,
)
from governance.retention.holds import RetentionHolds
from governance.retention.items import ItemHolds, ItemTally, shift, sweep_item_rule
from governance.retention.objects import ObjectVersions, delete_versions, existing_versions, list_current

log = logging.getLogger(__name__)

_BEFORE_WATERMARK = timedelta(microseconds=1)
DEFAULT_ORPHAN_GRACE_DAYS = 7


class SweepTarget(TypedDict):
    """One mapped task's work: a table (its rules in order) or an object prefix (its rule and its
    orphan check). JSON-safe: it travels through XCom."""

    system: str
    kind: Literal["table", "prefix", "items"]
    name: str
    rules: list[str]
    orphans: bool
    wave: int


class RetentionIncomplete(RuntimeError):
    """Some objects could not be deleted; the rest of the target was swept (names counts only)."""


@dataclass
class RuleOutcome:
    """What one rule did (or, in a dry run, would do). Counts only."""

    rule: str
    system: str
    target: str
    action: str
    dry_run: bool
    as_of: datetime
    cutoff: datetime
    scanned_from: datetime | None = None
    rows_scanned: int = 0
    rows_affected: int = 0
    objects_affected: int = 0
    objects_failed: int = 0
    held: int = 0
    held_reasons: dict[str, int] = field(default_factory=dict)
    cascade: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    partitions_dropped: int = 0
    longest_batch_ms: float = 0.0
    duration_ms: float = 0.0
    low_watermark: datetime | None = None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("as_of", "cutoff", "scanned_from", "low_watermark"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def sweep_targets(datamap: DataMap, plan: RetentionPlan, rules: Sequence[str] | None = None) -> list[SweepTarget]:
    """The mapped tasks of a sweep: one per table with rules and per prefix with a rule or an
    orphan check, limited to ``rules`` when given (orphan checks then run only for prefixes whose
    rule was chosen).

    ``wave`` 1 marks a table with a rule conditioned on ``unreferenced`` whose referencing tables
    are swept too (inactive callers after calls, messages and appointments): it runs after wave 0,
    so rows left unreferenced by today's deletes go today. Deeper chains finish on the next run."""
    chosen = set(rules) if rules else None
    targets: dict[tuple[str, str, str], SweepTarget] = {}
    for rule in datamap.retention:
        if chosen is not None and rule.name not in chosen:
            continue
        kind: Literal["table", "prefix", "items"] = "items" if rule.action == "ttl" else "table" if rule.table else "prefix"
        name = rule.table or rule.prefix or ""
        target = targets.setdefault((kind, rule.system, name), SweepTarget(
            system=rule.system, kind=kind, name=name, rules=[], orphans=False, wave=0,
        ))  # fmt: skip
        target["rules"].append(rule.name)
    for check in plan.orphans:
        key = ("prefix", check.prefix.system, check.prefix.prefix)
        if chosen is None:
            targets.setdefault(key, SweepTarget(system=check.prefix.system, kind="prefix", name=check.prefix.prefix,
                                                rules=[], orphans=False, wave=0))  # fmt: skip
        if key in targets:
            targets[key]["orphans"] = True
    order = {s.rule: i for i, s in enumerate(plan.statements)}
    swept_tables = {(t["system"], t["name"]) for t in targets.values() if t["kind"] == "table"}
    edges = graph.reference_edges(datamap, tuple(ReferenceKind))
    for target in targets.values():
        target["rules"].sort(key=lambda r: order.get(r, -1))
        if target["kind"] != "table":
            continue
        ref = TableRef(target["system"], target["name"])
        waits = any(
            c.unreferenced for r in datamap.retention if r.name in target["rules"] for c in r.conditions
        ) and any(e.parent == ref and e.child != ref and (e.child.system, e.child.table) in swept_tables for e in edges)
        target["wave"] = 1 if waits else 0
    return sorted(targets.values(), key=lambda t: (t["kind"], t["system"], t["name"]))


def cutoff_of(as_of: datetime, period_interval: str, conn: psycopg.Connection[Any]) -> datetime:
    """``as_of - period`` as PostgreSQL computes it (calendar months and years included)."""
    row = conn.execute("SELECT %s::timestamptz - %s::interval", (as_of, period_interval)).fetchone()
    assert row is not None
    conn.rollback()
    return row[0]


# --------------------------------------------------------------------------------------------
# Run records and watermarks


def _record_start(gov: psycopg.Connection[Any], run_id: str, outcome: RuleOutcome, now: datetime) -> None:
    gov.execute(
        """
        INSERT INTO governance.retention_runs (run_id, rule, system, target, action, dry_run, as_of, cutoff, status, started_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'running', %s)
        ON CONFLICT (run_id, rule) DO UPDATE SET status = 'running', started_at = EXCLUDED.started_at,
            dry_run = EXCLUDED.dry_run, cutoff = EXCLUDED.cutoff, finished_at = NULL
        """,
        (run_id, outcome.rule, outcome.system, outcome.target, outcome.action, outcome.dry_run, outcome.as_of,
         outcome.cutoff, now),
    )  # fmt: skip


def _record_end(gov: psycopg.Connection[Any], run_id: str, outcome: RuleOutcome, status: str, now: datetime) -> None:
    gov.execute(
        """
        UPDATE governance.retention_runs
           SET scanned_from = %s, rows_scanned = %s, rows_affected = %s, objects_affected = %s, held = %s,
               held_reasons = %s, cascade = %s, batches = %s, partitions_dropped = %s, longest_batch_ms = %s,
               duration_ms = %s, status = %s, finished_at = %s
         WHERE run_id = %s AND rule = %s
        """,
        (outcome.scanned_from, outcome.rows_scanned, outcome.rows_affected, outcome.objects_affected, outcome.held,
         json.dumps(outcome.held_reasons), json.dumps(outcome.cascade), outcome.batches, outcome.partitions_dropped,
         outcome.longest_batch_ms, outcome.duration_ms, status, now, run_id, outcome.rule),
    )  # fmt: skip


def load_watermark(gov: psycopg.Connection[Any], rule: str, rule_sha256: str) -> datetime | None:
    """Where the rule's scan starts: None (the oldest row) when the rule is new or changed."""
    row = gov.execute(
        "SELECT rule_sha256, low_watermark FROM governance.retention_watermarks WHERE rule = %s", (rule,)
    ).fetchone()
    if row is None or row[0] != rule_sha256:
        return None
    return row[1]


def _save_watermark(
    gov: psycopg.Connection[Any], rule: str, rule_sha256: str, low: datetime, as_of: datetime, run_id: str, now: datetime
) -> None:
    # Never moves back for a later as_of with the same rule, never forward past an earlier run's
    # held rows (the caller computes ``low`` from what it skipped).
    gov.execute(
        """
        INSERT INTO governance.retention_watermarks (rule, rule_sha256, low_watermark, as_of, run_id, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (rule) DO UPDATE SET rule_sha256 = EXCLUDED.rule_sha256, low_watermark = EXCLUDED.low_watermark,
            as_of = EXCLUDED.as_of, run_id = EXCLUDED.run_id, updated_at = EXCLUDED.updated_at
        """,
        (rule, rule_sha256, low, as_of, run_id, now),
    )


# --------------------------------------------------------------------------------------------
# Batches


@dataclass
class _Cursor:
    after_age: datetime | str
    after_pk: Any = None

    @classmethod
    def start(cls, watermark: datetime | None) -> _Cursor:
        return cls(watermark - _BEFORE_WATERMARK if watermark is not None else "-infinity")

    def values(self) -> dict[str, Any]:
        return {AFTER_AGE: self.after_age, AFTER_PK: self.after_pk}


def _held_reason(row: Mapping[str, Any]) -> str | None:
    for flag, reason in HELD_REASONS.items():
        if row[flag]:
            return reason
    return None


class _BatchScan:
    """Walks a rule's expired rows once: keyset batches, counts of held rows by reason, and the
    oldest age it had to skip (the next watermark)."""

    def __init__(self, statement: Statement, base: dict[str, Any], watermark: datetime | None, outcome: RuleOutcome) -> None:
        self.statement = statement
        self.base = base
        self.cursor = _Cursor.start(watermark)
        self.outcome = outcome
        self.batch_size = int(statement.params["batch_size"])
        self.oldest_skipped: datetime | None = None
        self.done = False
        # Age ranges [from, to) of partitions a dry run counted whole: their rows are not counted again.
        self.skip: list[tuple[datetime, datetime]] = []

    def _in_skipped(self, age: Any) -> tuple[datetime, datetime] | None:
        return next(((lo, hi) for lo, hi in self.skip if lo <= age < hi), None) if isinstance(age, datetime) else None

    def next(self, cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
        """The next batch's rows to act on (due, pending, held by nothing)."""
        rows = cur.execute(self.statement.query, self.statement.bind({**self.base, **self.cursor.values()})).fetchall()
        self.done = len(rows) < self.batch_size
        if rows:
            last = rows[-1]
            self.cursor = _Cursor(last[SCAN_AGE], last[SCAN_KEY])
        if self.skip:
            rows = [row for row in rows if self._in_skipped(row[SCAN_AGE]) is None]
            skipped = self._in_skipped(self.cursor.after_age)
            if skipped is not None:  # jump to the end of a partition counted whole
                self.cursor = _Cursor(skipped[1] - _BEFORE_WATERMARK)
        act: list[dict[str, Any]] = []
        reasons: Counter[str] = Counter()
        for row in rows:
            reason = _held_reason(row) if row[SCAN_DUE] else None
            if not row[SCAN_DUE] or reason is not None:
                if row[SCAN_PENDING] and (self.oldest_skipped is None or row[SCAN_AGE] < self.oldest_skipped):
                    self.oldest_skipped = row[SCAN_AGE]
                if reason is not None and row[SCAN_PENDING]:
                    reasons[reason] += 1
                continue
            if row[SCAN_PENDING]:
                act.append(row)
        self.outcome.rows_scanned += len(rows)
        self.outcome.held += sum(reasons.values())
        for reason, count in reasons.items():
            self.outcome.held_reasons[reason] = self.outcome.held_reasons.get(reason, 0) + count
        return act

    def apply_batch(self, cur: psycopg.Cursor[Any], statement: Statement) -> int:
        """Run the single-statement batch (scan and action together); return rows changed."""
        row = cur.execute(statement.query, statement.bind({**self.base, **self.cursor.values()})).fetchone()
        assert row is not None
        self.done = row[BATCH_SCANNED] < self.batch_size
        if row[BATCH_SCANNED]:
            self.cursor = _Cursor(row[BATCH_LAST_AGE], row[BATCH_LAST_KEY])
        skipped = row[BATCH_OLDEST_SKIPPED]
        if skipped is not None and (self.oldest_skipped is None or skipped < self.oldest_skipped):
            self.oldest_skipped = skipped
        self.outcome.rows_scanned += row[BATCH_SCANNED]
        for flag, reason in HELD_REASONS.items():
            if row[flag]:
                self.outcome.held += row[flag]
                self.outcome.held_reasons[reason] = self.outcome.held_reasons.get(reason, 0) + row[flag]
        return int(row[BATCH_AFFECTED])

    def apply_range_batch(self, cur: psycopg.Cursor[Any], rs: RetentionStatement) -> int:
        """Run one ranged batch (nothing held or checked per row): its last age, then the DELETE
        up to it. Every row deleted was scanned; return how many."""
        assert rs.range_bound is not None and rs.range_delete is not None
        values = {**self.base, **self.cursor.values()}
        row = cur.execute(rs.range_bound.query, rs.range_bound.bind(values)).fetchone()
        last = row[BATCH_LAST_AGE] if row is not None else None
        if last is None:
            self.done = True
            return 0
        cur.execute(rs.range_delete.query, rs.range_delete.bind({**values, RANGE_BOUND: last}))
        affected = max(0, cur.rowcount)
        self.done = affected < int(rs.range_bound.params[BATCH_SIZE])
        self.cursor = _Cursor(last)  # every expired row at that age went: continue after it
        self.outcome.rows_scanned += affected
        return affected

    def low_watermark(self, cutoff: datetime) -> datetime:
        return min(cutoff, self.oldest_skipped) if self.oldest_skipped is not None else cutoff


def _log_batch(outcome: RuleOutcome, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-6)
    log.info(
        "%s: batch %d, %d rows scanned, %d %s so far, %d held, %.0f rows/s",
        outcome.rule, outcome.batches, outcome.rows_scanned, outcome.rows_affected,
        "would change" if outcome.dry_run else "changed", outcome.held, outcome.rows_scanned / elapsed,
    )  # fmt: skip


@dataclass
class SweepContext:
    """Everything a target's sweep needs besides the plan: connections, holds, the run."""

    datamap: DataMap
    plan: RetentionPlan
    run_id: str
    as_of: datetime
    dry_run: bool
    holds: RetentionHolds
    app_connect: Callable[[str], psycopg.Connection[Any]]  # postgres system name -> connection
    gov: psycopg.Connection[Any]  # autocommit
    object_client: Callable[[str], Any]  # object-store system name -> S3 client
    buckets: Mapping[str, str]
    orphan_grace: timedelta = timedelta(days=DEFAULT_ORPHAN_GRACE_DAYS)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())
    objects_failed: int = 0
    item_client: Callable[[str], Any] | None = None  # DynamoDB system name -> client
    # (key id, value) -> keyed hash of a phone: matches DynamoDB partition keys to person holds
    identity_digest: Callable[[str, str, str], str] | None = None
    # A dry run deletes nothing, so a later rule of the same target would find (and count again)
    # the rows an earlier rule would delete: their primary keys, by table, are left out instead.
    dry_run_deleted: dict[TableRef, set[Any]] = field(default_factory=dict)


def _objects_of(
    ctx: SweepContext, steps: Iterable[Any], rows: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, list[ObjectVersions]]]:
    """(system, prefix, versions found) for each object step over ``rows``."""
    found = []
    for step in steps:
        keys = step.keys_for(rows)
        if not keys:
            continue
        system = step.prefix.system
        found.append((system, step.prefix.prefix, existing_versions(ctx.object_client(system), ctx.buckets[system], keys)))
    return found


def _delete_objects(ctx: SweepContext, found: list[tuple[str, str, list[ObjectVersions]]], outcome: RuleOutcome) -> set[str]:
    """Delete (or, in a dry run, count) the objects found; return the keys that could not be
    deleted, so the rows naming them are kept for the next run."""
    failed_keys: set[str] = set()
    for system, _prefix, versions in found:
        if ctx.dry_run:
            outcome.objects_affected += len(versions)
            continue
        deleted, failed = delete_versions(ctx.object_client(system), ctx.buckets[system], versions)
        outcome.objects_affected += deleted
        outcome.objects_failed += len(failed)
        failed_keys |= failed
    return failed_keys


def _rows_whose_objects_went(steps: Iterable[Any], rows: list[dict[str, Any]], failed: set[str]) -> list[dict[str, Any]]:
    """``rows`` less those naming an object that could not be deleted (they stay, with their key,
    so the next run tries the object again rather than leaving it without its row)."""
    if not failed:
        return rows
    steps = list(steps)
    return [row for row in rows if not any(set(step.keys_for([row])) & failed for step in steps)]


# --------------------------------------------------------------------------------------------
# Partitions

# A partition's bounds as pg_get_expr prints them: FOR VALUES FROM ('...') TO ('...'), each a
# quoted literal, MINVALUE or MAXVALUE (the DEFAULT partition prints DEFAULT and does not match).
_PARTITIONS = r"""
SELECT c.oid, n.nspname, c.relname,
       CASE WHEN b[1] = 'MINVALUE' THEN '-infinity'::timestamptz
            ELSE replace(substr(b[1], 2, length(b[1]) - 2), '''''', '''')::timestamptz END AS lower_bound,
       replace(substr(b[2], 2, length(b[2]) - 2), '''''', '''')::timestamptz AS upper_bound
  FROM pg_partitioned_table p
  JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
  JOIN pg_inherits i ON i.inhparent = p.partrelid
  JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r'
  JOIN pg_namespace n ON n.oid = c.relnamespace
  CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') b
 WHERE p.partrelid = to_regclass(%(parent)s) AND p.partstrat = 'r' AND p.partnatts = 1
   AND a.attname = %(age_column)s AND a.atttypid = 'timestamptz'::regtype AND b[2] <> 'MAXVALUE'
 ORDER BY upper_bound
"""
@contextmanager
def _unsynced_commits(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Batches committed without waiting for the WAL flush (``synchronous_commit = off``: a crash
    may lose the last few, which the next run, finding their rows, deletes again: every batch is
    idempotent), then one synchronous commit with a transaction id, which flushes the WAL past all
    of them before the caller records a watermark anywhere."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    try:
        yield
    except BaseException:
        with suppress(psycopg.Error):  # the rule fails and records no watermark; the connection may be gone
            conn.rollback()
            conn.execute("RESET synchronous_commit")
            conn.commit()
        raise
    conn.execute("SET synchronous_commit = on")
    conn.execute("SELECT pg_current_xact_id()")  # a commit record to flush: it waits for everything before it
    conn.commit()


_DROP_PARTITION = "SELECT governance.drop_expired_partition(to_regclass(%s), %s::oid::regclass, %s, %s)"
# How long the drop of one partition waits for its locks (the partition's, then the parent's for
# the moment of the detach) before that partition is left to the batches.
PARTITION_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class _Partition:
    oid: int
    name: str  # schema.partition, for the log
    lower: datetime
    upper: datetime


def expired_partitions(conn: psycopg.Connection[Any], parent: str, age_column: str, cutoff: datetime) -> list[_Partition]:
    """Partitions of ``parent`` (``schema.table``, quoted) wholly older than ``cutoff``, oldest
    first, read from the catalog: the table range-partitioned on ``age_column`` (one timestamptz
    column), the partition ordinary (not the DEFAULT one, not partitioned again) with a finite
    upper bound at or before the cutoff. Empty for any other table."""
    rows = conn.execute(_PARTITIONS, {"parent": parent, "age_column": age_column}).fetchall()
    conn.rollback()
    return [_Partition(int(oid), f"{schema}.{name}", lower, upper) for oid, schema, name, lower, upper in rows if upper <= cutoff]


def _partition_blockers(
    cur: psycopg.Cursor[Any], probe: Statement, base: Mapping[str, Any], part: _Partition
) -> tuple[int, int]:
    values = {**base, PARTITION_FROM: part.lower, PARTITION_TO: part.upper}
    row = cur.execute(probe.query, probe.bind(values)).fetchone()
    assert row is not None
    return int(row[PROBE_ROWS]), int(row[PROBE_BLOCKED])


def _drop_expired_partitions(
    ctx: SweepContext, conn: psycopg.Connection[Any], rs: RetentionStatement, outcome: RuleOutcome, base: Mapping[str, Any]
) -> list[tuple[datetime, datetime]]:
    """Drop (a dry run: count) every wholly expired partition in which no row is blocked (held,
    excepted, owning or mentioned by a row, or not due); return the age ranges handled so. A
    partition with a blocked row is left to the batches, which keep the held rows and delete the
    rest. Each drop is one transaction: the partition locked against writes (through
    ``governance.drop_expired_partition``: the task role owns nothing), probed, detached and
    dropped; its rows count as scanned and affected, the transaction as a batch."""
    if rs.partition_probe is None or rs.action != "delete_rows":
        return []
    # Nothing can be blocked where the batches are ranges and no hold touches the table: count only.
    free = rs.partition_count is not None and not ctx.holds.touch(ctx.datamap, rs.table)
    probe = rs.partition_count if free and rs.partition_count is not None else rs.partition_probe
    schema = ctx.datamap.postgres_system(rs.table.system).db_schema
    parent = sql.Identifier(schema, rs.table.table).as_string(conn)
    handled: list[tuple[datetime, datetime]] = []
    for part in expired_partitions(conn, parent, rs.age_column, outcome.cutoff):
        batch_started = time.monotonic()
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                if not ctx.dry_run:
                    cur.execute("SELECT set_config('lock_timeout', %s, true)", (PARTITION_LOCK_TIMEOUT,))
                    cur.execute(_DROP_PARTITION, (parent, part.oid, outcome.cutoff, True))
                rows, blocked = _partition_blockers(cur, probe, base, part)
                if blocked:
                    conn.rollback()
                    log.info("%s: partition %s has %d of %d rows held or still needed: swept in batches",
                             rs.rule, part.name, blocked, rows)  # fmt: skip
                    continue
                if not ctx.dry_run:
                    cur.execute(_DROP_PARTITION, (parent, part.oid, outcome.cutoff, False))
            if ctx.dry_run:
                conn.rollback()
            else:
                conn.commit()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
            conn.rollback()
            log.warning("%s: %s is partitioned but its partitions cannot be dropped here (%s): swept in batches",
                        rs.rule, parent, exc.diag.message_primary)  # fmt: skip
            return handled
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            log.warning("%s: partition %s stayed locked for %s: swept in batches", rs.rule, part.name, PARTITION_LOCK_TIMEOUT)
            continue
        handled.append((part.lower, part.upper))
        outcome.partitions_dropped += 1
        outcome.rows_scanned += rows
        outcome.rows_affected += rows
        outcome.batches += 1
        outcome.longest_batch_ms = max(outcome.longest_batch_ms, (time.monotonic() - batch_started) * 1000)
        log.info("%s: partition %s (%d rows) %s", rs.rule, part.name, rows, "would be dropped" if ctx.dry_run else "dropped")
    return handled


def _run_table_rule(
    ctx: SweepContext, conn: psycopg.Connection[Any], rs: RetentionStatement, outcome: RuleOutcome, *, start: Any = None
) -> None:
    watermark = load_watermark(ctx.gov, rs.rule, rs.sha256) if start is None else start or None
    outcome.scanned_from = watermark
    base = {AS_OF: ctx.as_of, **ctx.holds.values(rs.held_tables)}
    scan = _BatchScan(rs.scan, base, watermark, outcome)
    scan.skip = _drop_expired_partitions(ctx, conn, rs, outcome, base)
    started = time.monotonic()
    two_phase = rs.action == "delete_rows" and (rs.objects or any(step.objects for step in rs.cascade))
    cascade_counts: Counter[str] = Counter()
    if not ctx.dry_run and (rs.batch is not None or rs.range_bound is not None):
        # One statement per batch, no round trip between batches but the commit. Nothing held can
        # be in the table: ranges of the age index; otherwise the scan and action together.
        ranged = rs.range_bound is not None and not ctx.holds.touch(ctx.datamap, rs.table)
        with _unsynced_commits(conn):
            while not scan.done:
                batch_started = time.monotonic()
                with conn.cursor(row_factory=dict_row) as cur:
                    if ranged:
                        outcome.rows_affected += scan.apply_range_batch(cur, rs)
                    else:
                        assert rs.batch is not None
                        outcome.rows_affected += scan.apply_batch(cur, rs.batch)
                conn.commit()
                outcome.batches += 1
                outcome.longest_batch_ms = max(outcome.longest_batch_ms, (time.monotonic() - batch_started) * 1000)
                _log_batch(outcome, started)
    while not scan.done:
        batch_started = time.monotonic()
        with conn.cursor(row_factory=dict_row) as cur:
            act = scan.next(cur)
            if ctx.dry_run and act and ctx.dry_run_deleted.get(rs.table):
                act = [r for r in act if r[SCAN_KEY] not in ctx.dry_run_deleted[rs.table]]
            owned: dict[TableRef, list[dict[str, Any]]] = defaultdict(list)
            if act and rs.action == "delete_rows":
                rows_of: dict[TableRef, list[dict[str, Any]]] = {rs.table: act}
                for step in rs.cascade:  # parents before children
                    parents = rows_of.get(step.edge.parent, [])
                    keys = sorted({r[step.edge.parent_field] for r in parents if r[step.edge.parent_field] is not None})
                    if not keys:
                        continue
                    found = cur.execute(step.select.query, step.select.bind({KEYS: keys})).fetchall()
                    rows_of.setdefault(step.table, [])
                    rows_of[step.table] += found
                    owned[step.table] += found
            if two_phase and act:
                conn.commit()  # the read ends here: objects go first, outside any transaction
                found_objects = _objects_of(ctx, rs.objects, act)
                for step in rs.cascade:
                    found_objects += _objects_of(ctx, step.objects, owned.get(step.table, []))
                failed = _delete_objects(ctx, found_objects, outcome)
                if failed and rs.cascade:  # an object was left: keep the batch's rows (and what they own) for the next run
                    act, owned = [], defaultdict(list)
                act = _rows_whose_objects_went(rs.objects, act, failed)
                batch_started = time.monotonic()
            if act and not ctx.dry_run:
                keys = [r[SCAN_KEY] for r in act]
                if rs.action == "delete_rows":
                    _clear_mentions(cur, rs, act, owned, cascade_counts, ctx)
                    for table in rs.deletion_order:  # children before parents
                        pk = ctx.datamap.table(table).primary_key
                        table_keys = sorted({r[pk] for r in owned.get(table, [])})
                        if table_keys:
                            step = next(s for s in rs.cascade if s.table == table)
                            cur.execute(step.delete.query, step.delete.bind({KEYS: table_keys}))
                            cascade_counts[str(table)] += max(0, cur.rowcount)
                cur.execute(rs.statement.query, rs.statement.bind({KEYS: keys}))
                outcome.rows_affected += max(0, cur.rowcount)
            elif act:
                outcome.rows_affected += len(act)
                for table, rows in owned.items():
                    cascade_counts[str(table)] += len({r[ctx.datamap.table(table).primary_key] for r in rows})
                if rs.action == "delete_rows":
                    # Counted by clearing them in the batch's transaction, rolled back below.
                    _clear_mentions(cur, rs, act, owned, cascade_counts, ctx)
                    gone = ctx.dry_run_deleted.setdefault(rs.table, set())
                    gone.update(r[SCAN_KEY] for r in act)
                    for table, rows in owned.items():
                        pk = ctx.datamap.table(table).primary_key
                        ctx.dry_run_deleted.setdefault(table, set()).update(r[pk] for r in rows)
        if ctx.dry_run:
            conn.rollback()
        else:
            conn.commit()
        outcome.batches += 1
        outcome.longest_batch_ms = max(outcome.longest_batch_ms, (time.monotonic() - batch_started) * 1000)
        _log_batch(outcome, started)
    outcome.cascade = dict(cascade_counts)
    outcome.low_watermark = scan.low_watermark(outcome.cutoff)
    if not ctx.dry_run and not outcome.objects_failed:
        _save_watermark(ctx.gov, rs.rule, rs.sha256, outcome.low_watermark, ctx.as_of, ctx.run_id, ctx.clock())


def _clear_mentions(
    cur: psycopg.Cursor[Any], rs: RetentionStatement, act: list[dict[str, Any]], owned: Mapping[TableRef, list[dict[str, Any]]],
    counts: Counter[str], ctx: SweepContext,
) -> None:
    """Clear the references that mention the rows being deleted (the batch's and what they own),
    each mention's orphan rule first (mention-only rows deleted or cleared, unless held)."""
    for mention in rs.mentions:
        parents = act if mention.edge.parent == rs.table else owned.get(mention.edge.parent, [])
        values = sorted({r[mention.edge.parent_field] for r in parents if r[mention.edge.parent_field] is not None})
        if values and mention.orphan is not None:
            orphan_values = {KEYS: values, **ctx.holds.values((mention.edge.child,))}
            cur.execute(mention.orphan.query, mention.orphan.bind(orphan_values))
            counts[f"mention-only rows {mention.edge.child}.{mention.edge.field}"] += max(0, cur.rowcount)
        if values:
            cur.execute(mention.statement.query, mention.statement.bind({KEYS: values}))
            counts[f"mentions cleared {mention.edge.child}.{mention.edge.field}"] += max(0, cur.rowcount)


def _run_object_rule_by_row(
    ctx: SweepContext, conn: psycopg.Connection[Any], item: ObjectRetention, outcome: RuleOutcome, *, start: Any = None
) -> None:
    assert item.scan is not None and item.object_step is not None
    watermark = load_watermark(ctx.gov, item.rule, item.sha256) if start is None else start or None
    outcome.scanned_from = watermark
    base = {AS_OF: ctx.as_of, **ctx.holds.values([item.object_step.source])}
    scan = _BatchScan(item.scan, base, watermark, outcome)
    started = time.monotonic()
    while not scan.done:
        with conn.cursor(row_factory=dict_row) as cur:
            act = scan.next(cur)
        conn.commit()
        batch_started = time.monotonic()
        if act:
            found = _objects_of(ctx, [item.object_step], act)
            act = _rows_whose_objects_went([item.object_step], act, _delete_objects(ctx, found, outcome))
            if item.clear_key_column is not None and act:
                if ctx.dry_run:
                    outcome.rows_affected += len(act)
                else:
                    with conn.cursor() as cur:
                        cur.execute(item.clear_key_column.query, item.clear_key_column.bind({KEYS: [r[SCAN_KEY] for r in act]}))
                        outcome.rows_affected += max(0, cur.rowcount)
                    conn.commit()
        outcome.batches += 1
        outcome.longest_batch_ms = max(outcome.longest_batch_ms, (time.monotonic() - batch_started) * 1000)
        _log_batch(outcome, started)
    outcome.low_watermark = scan.low_watermark(outcome.cutoff)
    if not ctx.dry_run and not outcome.objects_failed:
        _save_watermark(ctx.gov, item.rule, item.sha256, outcome.low_watermark, ctx.as_of, ctx.run_id, ctx.clock())


def _run_object_rule_by_age(ctx: SweepContext, item: ObjectRetention, outcome: RuleOutcome) -> None:
    """Objects aged by their last modification (export bundles): every key whose latest version
    is older than the cutoff goes, with every version."""
    system = item.prefix.system
    client, bucket = ctx.object_client(system), ctx.buckets[system]
    started = time.monotonic()
    for page in list_current(client, bucket, item.list_prefix):
        expired = [o["Key"] for o in page if o["LastModified"] < outcome.cutoff]
        outcome.rows_scanned += len(page)
        if expired:
            _delete_objects(ctx, [(system, item.prefix.prefix, existing_versions(client, bucket, expired))], outcome)
        outcome.batches += 1
        _log_batch(outcome, started)


def _template_pattern(template: str) -> Any:
    import re

    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def _typed(value: str) -> Any:
    return int(value) if value.isdigit() else value


def sweep_orphans(ctx: SweepContext, check: OrphanCheck, conn: psycopg.Connection[Any], outcome: RuleOutcome) -> None:
    """Objects of ``check.prefix`` whose row is gone, older than the grace period, deleted with
    every version (objects whose business is under a legal hold stay)."""
    system = check.prefix.system
    client, bucket = ctx.object_client(system), ctx.buckets[system]
    pattern = _template_pattern(check.key_template)
    table = ctx.datamap.table(check.source)
    scope_placeholder = next((p for p, c in check.placeholder_columns.items() if c == table.scope_column), None)
    started = time.monotonic()
    for page in list_current(client, bucket, check.list_prefix):
        parsed: dict[str, dict[str, str]] = {}
        for entry in page:
            match = pattern.match(entry["Key"])
            if match is not None and entry["LastModified"] < outcome.cutoff:
                parsed[entry["Key"]] = match.groupdict()
        outcome.rows_scanned += len(page)
        if not parsed:
            continue
        values = sorted({_typed(p[check.match_placeholder]) for p in parsed.values()}, key=str)
        with conn.cursor() as cur:
            rows = cur.execute(check.existing.query, check.existing.bind({KEYS: values})).fetchall()
        conn.rollback()
        present = {str(r[0]) for r in rows}
        orphans = []
        for key, groups in parsed.items():
            if groups[check.match_placeholder] in present:
                continue
            if scope_placeholder and _typed(groups[scope_placeholder]) in ctx.holds.businesses:
                outcome.held += 1
                outcome.held_reasons["legal_hold"] = outcome.held_reasons.get("legal_hold", 0) + 1
                continue
            orphans.append(key)
        if orphans:
            _delete_objects(ctx, [(system, check.prefix.prefix, existing_versions(client, bucket, orphans))], outcome)
        outcome.batches += 1
        _log_batch(outcome, started)


# --------------------------------------------------------------------------------------------
# A target


def sweep_target(ctx: SweepContext, target: SweepTarget) -> list[RuleOutcome]:
    """Run the target's rules in order (then its orphan check), recording each; return what
    each did. Raises RetentionIncomplete at the end when some objects could not be deleted."""
    outcomes: list[RuleOutcome] = []
    plan = ctx.plan
    datamap = ctx.datamap
    if target["kind"] == "items":
        for name in target["rules"]:
            item = plan.rule(name)
            assert isinstance(item, ItemTtlRetention)
            outcomes.append(_run_item_rule(ctx, item))
        return outcomes
    if target["kind"] == "table":
        ref = TableRef(target["system"], target["name"])
        system_name = ref.system
    else:
        prefix = datamap.prefix(PrefixRef(target["system"], target["name"]))
        tie = datamap.tie_table(prefix)
        system_name = tie.system if tie is not None else ""
    conn = ctx.app_connect(system_name) if system_name else None
    try:
        items: list[RetentionStatement | ObjectRetention] = []
        for name in target["rules"]:
            found = plan.rule(name)
            assert not isinstance(found, ItemTtlRetention)
            items.append(found)
        if target["kind"] == "table":
            items.sort(key=lambda i: (ACTION_ORDER[getattr(i, "action", "delete_objects")], target["rules"].index(i.rule)))
        for item in items:
            outcomes.append(_run_rule(ctx, conn, item))
        if target["orphans"]:
            check = next(o for o in plan.orphans if o.prefix == PrefixRef(target["system"], target["name"]))
            assert conn is not None
            outcomes.append(_run_orphans(ctx, conn, check))
    finally:
        if conn is not None:
            conn.close()
    failed = sum(o.objects_failed for o in outcomes)
    if failed:
        raise RetentionIncomplete(
            f"{target['kind']} {target['system']}.{target['name']}: {failed} object(s) could not be deleted after retries; "
            "the rest was swept and a re-run continues"
        )
    return outcomes


def _outcome(ctx: SweepContext, rule: str, system: str, target: str, action: str, cutoff: datetime) -> RuleOutcome:
    return RuleOutcome(rule=rule, system=system, target=target, action=action, dry_run=ctx.dry_run, as_of=ctx.as_of,
                       cutoff=cutoff)  # fmt: skip


def _finish(ctx: SweepContext, outcome: RuleOutcome, run: Callable[[], None]) -> RuleOutcome:
    rule_started = time.monotonic()
    _record_start(ctx.gov, ctx.run_id, outcome, ctx.clock())
    try:
        run()
    except BaseException:
        outcome.duration_ms = (time.monotonic() - rule_started) * 1000
        _record_end(ctx.gov, ctx.run_id, outcome, "failed", ctx.clock())
        raise
    outcome.duration_ms = (time.monotonic() - rule_started) * 1000
    _record_end(ctx.gov, ctx.run_id, outcome, "done", ctx.clock())
    log.info(
        "%s: %s, %d rows and %d objects %s, %d held, %d batches (longest %.0f ms) in %.1f s",
        outcome.rule, "dry run" if ctx.dry_run else "done", outcome.rows_affected, outcome.objects_affected,
        "would change" if ctx.dry_run else "changed", outcome.held, outcome.batches, outcome.longest_batch_ms,
        outcome.duration_ms / 1000,
    )  # fmt: skip
    return outcome


def item_holds(ctx: SweepContext, item: ItemTtlRetention) -> ItemHolds:
    """The holds in force as the items of ``item``'s table see them."""
    persons: dict[str, set[str]] = {}
    for hold in ctx.holds.persons:
        if hold.identity_kind == item.partition_kind:
            persons.setdefault(hold.hash_key_id, set()).add(hold.subject_hash)
    digest = ctx.identity_digest
    kind = item.partition_kind or ""
    return ItemHolds(
        table_held=item.where in ctx.holds.tables,
        businesses=frozenset(ctx.holds.businesses),
        persons=persons,
        digest=(lambda key_id, value: digest(key_id, kind, value)) if digest is not None and persons else None,
    )


def _item_sweep(ctx: SweepContext, item: ItemTtlRetention, *, dry_run: bool) -> ItemTally:
    if ctx.item_client is None:
        raise RuntimeError(f"retention[{item.rule}]: no DynamoDB client for {item.system}")
    holds = item_holds(ctx, item)
    if holds.persons and holds.digest is None:
        raise RuntimeError(f"retention[{item.rule}]: person holds in force but no identity hasher to match them")
    return sweep_item_rule(ctx.item_client(item.system), item, as_of=ctx.as_of, dry_run=dry_run, holds=holds)


def _run_item_rule(ctx: SweepContext, item: ItemTtlRetention) -> RuleOutcome:
    cutoff = shift(ctx.as_of, item.period, -1)
    outcome = _outcome(ctx, item.rule, item.system, item.table_name, "ttl", cutoff)

    def run() -> None:
        tally = _item_sweep(ctx, item, dry_run=ctx.dry_run)
        outcome.rows_scanned, outcome.rows_affected, outcome.held = tally.scanned, tally.affected, tally.held
        if tally.held:
            outcome.held_reasons = {"legal_hold": tally.held}
        outcome.cascade = {k: v for k, v in sorted(tally.counts.items()) if v}
        outcome.batches, outcome.longest_batch_ms = tally.pages, tally.longest_page_ms

    return _finish(ctx, outcome, run)


def _run_rule(ctx: SweepContext, conn: psycopg.Connection[Any] | None, item: RetentionStatement | ObjectRetention) -> RuleOutcome:
    rule = next(r for r in ctx.datamap.retention if r.name == item.rule)
    probe = conn if conn is not None else ctx.gov
    cutoff = cutoff_of(ctx.as_of, rule.period.sql_interval, probe) if conn is not None else ctx.as_of - timedelta(
        days=rule.period.approx_days
    )
    if isinstance(item, RetentionStatement):
        assert conn is not None
        schema = ctx.datamap.postgres_system(item.table.system).db_schema
        outcome = _outcome(ctx, item.rule, item.table.system, f"{schema}.{item.table.table}", item.action, cutoff)
        return _finish(ctx, outcome, lambda: _run_table_rule(ctx, conn, item, outcome))
    outcome = _outcome(ctx, item.rule, item.prefix.system, item.prefix.prefix, "delete_objects", cutoff)
    if item.age_source == "row":
        assert conn is not None
        return _finish(ctx, outcome, lambda: _run_object_rule_by_row(ctx, conn, item, outcome))
    return _finish(ctx, outcome, lambda: _run_object_rule_by_age(ctx, item, outcome))


def _run_orphans(ctx: SweepContext, conn: psycopg.Connection[Any], check: OrphanCheck) -> RuleOutcome:
    cutoff = ctx.as_of - ctx.orphan_grace
    outcome = _outcome(ctx, f"orphans:{check.prefix.prefix}", check.prefix.system, check.prefix.prefix, "delete_orphans", cutoff)
    return _finish(ctx, outcome, lambda: sweep_orphans(ctx, check, conn, outcome))


# --------------------------------------------------------------------------------------------
# Verification


def remaining_after(ctx: SweepContext, target: SweepTarget, outcomes: Sequence[RuleOutcome]) -> dict[str, int]:
    """Per rule of ``target``: rows (or objects) past the cutoff the rule should have handled and
    did not, held and excepted ones aside. Runs the same scans as the sweep, as a dry run, over
    the range this run was responsible for (from where it started, not from its new watermark)."""
    from dataclasses import replace

    check = replace(ctx, dry_run=True, dry_run_deleted={})
    remaining: dict[str, int] = {}
    if target["kind"] == "items":  # the whole table again: no item without a TTL within its rule
        for done in outcomes:
            rule = ctx.plan.rule(done.rule)
            assert isinstance(rule, ItemTtlRetention)
            remaining[done.rule] = _item_sweep(check, rule, dry_run=True).remaining
        return remaining
    system = target["system"]
    if target["kind"] == "prefix":
        tie = ctx.datamap.tie_table(ctx.datamap.prefix(PrefixRef(target["system"], target["name"])))
        system = tie.system if tie is not None else ""
    conn = ctx.app_connect(system) if system else None
    try:
        for done in outcomes:
            if done.action == "delete_orphans":
                continue
            item = ctx.plan.rule(done.rule)
            assert not isinstance(item, ItemTtlRetention)
            probe = replace(done, rows_scanned=0, rows_affected=0, objects_affected=0, held=0, held_reasons={}, cascade={},
                            batches=0, dry_run=True)  # fmt: skip
            start = done.scanned_from or False  # False: from the oldest row
            if isinstance(item, RetentionStatement):
                assert conn is not None
                _run_table_rule(check, conn, item, probe, start=start)
                remaining[done.rule] = probe.rows_affected
            elif item.age_source == "row":
                assert conn is not None
                _run_object_rule_by_row(check, conn, item, probe, start=start)
                remaining[done.rule] = probe.objects_affected + (probe.rows_affected if item.clear_key_column else 0)
            else:
                _run_object_rule_by_age(check, item, probe)
                remaining[done.rule] = probe.objects_affected
    finally:
        if conn is not None:
            conn.close()
    return remaining
