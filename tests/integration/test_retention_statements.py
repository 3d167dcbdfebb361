"""The retention plan's statements are the ones the sweep runs (``governance.retention.engine``):
each one executes on the reference deployment with the values a sweep binds (in a transaction
rolled back), and the scans find due rows. A statement that does not run, or binds a value it does
not declare, fails here rather than in the first sweep."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from governance.datamap import load_datamap
from governance.datamap.plans import (
    AFTER_AGE,
    AFTER_PK,
    AS_OF,
    HELD_SCOPE_IDS,
    KEYS,
    RETENTION_HELD_TABLES,
    SCAN_DUE,
    SCAN_KEY,
    Statement,
    build_retention_plan,
    held_keys_param,
)
from tests.fixtures.reference import Deployment

pytestmark = pytest.mark.integration


def _run(cur: Any, statement: Statement, values: dict[str, Any]) -> int:
    cur.execute(statement.query, statement.bind(values))
    return max(0, cur.rowcount)


def test_every_retention_statement_runs_on_the_reference_deployment(reference_deployment: Deployment) -> None:
    datamap = load_datamap()
    plan = build_retention_plan(datamap)
    tables = [t for s in plan.statements for t in s.held_tables] + [o.object_step.source for o in plan.objects if o.object_step]
    # Far enough ahead that every rule has due rows in the small seed.
    values: dict[str, Any] = {
        AS_OF: datetime(2040, 1, 1, tzinfo=UTC), HELD_SCOPE_IDS: [], RETENTION_HELD_TABLES: [],
        AFTER_AGE: "-infinity", AFTER_PK: None, **{held_keys_param(t): [] for t in tables},
    }  # fmt: skip
    affected: dict[str, int] = {}
    with ExitStack() as stack:  # each system's statements in its own database (app, warehouse)
        conns = {
            system.name: stack.enter_context(psycopg.connect(reference_deployment.conninfo_for(system.connection_id)))
            for system in datamap.postgres_systems
        }
        curs = {name: stack.enter_context(conn.cursor(row_factory=dict_row)) for name, conn in conns.items()}
        cur = curs["aircalls_app"]
        for item in plan.objects:
            if item.scan is None:
                assert item.age_source == "last_modified"
                continue
            assert item.object_step is not None
            rows = cur.execute(item.scan.query, item.scan.bind(values)).fetchall()
            assert item.object_step.keys_for(rows), item.rule
            if item.clear_key_column is not None:
                affected[item.rule] = _run(cur, item.clear_key_column, {KEYS: [r[SCAN_KEY] for r in rows]})
        for rule in plan.statements:
            cur = curs[rule.table.system]
            rows = [r for r in cur.execute(rule.scan.query, rule.scan.bind(values)).fetchall() if r[SCAN_DUE]]
            owners = {rule.table: rows}
            for step in rule.cascade:
                parents = owners.get(step.edge.parent, [])
                owners[step.table] = cur.execute(
                    step.select.query, step.select.bind({KEYS: [r[step.edge.parent_field] for r in parents]})
                ).fetchall()
            for mention in rule.mentions:
                parents = owners.get(mention.edge.parent, [])
                _run(cur, mention.statement, {KEYS: [r[mention.edge.parent_field] for r in parents]})
            for table in rule.deletion_order:
                step = next(s for s in rule.cascade if s.table == table)
                pk = datamap.table(table).primary_key
                _run(cur, step.delete, {KEYS: [r[pk] for r in owners.get(table, [])]})
            affected[rule.rule] = _run(cur, rule.statement, {KEYS: [r[SCAN_KEY] for r in rows]})
        for rule in plan.statements:  # the single-statement batches (scan and action in one)
            if rule.batch is not None:
                row = curs[rule.table.system].execute(rule.batch.query, rule.batch.bind(values)).fetchone()
                assert row is not None and 0 <= row["affected"] <= row["scanned"], rule.rule
        for check in plan.orphans:
            found = curs[check.source.system].execute(check.existing.query, check.existing.bind({KEYS: [1, 2, 3]}))
            assert found.fetchall() is not None
        for conn in conns.values():
            conn.rollback()
    assert set(affected) >= {s.rule for s in plan.statements}
    assert [rule for rule, count in affected.items() if count == 0] == []
