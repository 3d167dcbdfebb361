"""The retention plan's statements are the ones a sweep runs: each one executes on the reference
deployment with the values a sweep binds (in a transaction rolled back), and finds due rows.

Nothing runs them on a schedule yet (the ``retention_sweep`` DAG is planned); this keeps the
builder honest until then: a statement that does not run, or binds a value it does not declare,
fails here rather than in the first sweep."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from governance.datamap import load_datamap
from governance.datamap.plans import (
    AFTER_KEY,
    AS_OF,
    HELD_KEYS,
    HELD_SCOPE_IDS,
    KEYS,
    Statement,
    build_retention_plan,
)
from tests.fixtures.reference import Deployment

pytestmark = pytest.mark.integration


def _run(cur: Any, statement: Statement, values: dict[str, Any]) -> int:
    cur.execute(statement.query, statement.bind(values))
    return max(0, cur.rowcount)


def test_every_retention_statement_runs_on_the_reference_deployment(reference_deployment: Deployment) -> None:
    datamap = load_datamap()
    plan = build_retention_plan(datamap)
    # Far enough ahead that every rule has due rows in the small seed.
    values: dict[str, Any] = {AS_OF: datetime(2040, 1, 1, tzinfo=UTC), HELD_KEYS: [], HELD_SCOPE_IDS: [], AFTER_KEY: []}
    affected: dict[str, int] = {}
    with psycopg.connect(reference_deployment.app_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        for item in plan.objects:
            if item.select_due is None:
                assert item.age_source == "last_modified"
                continue
            assert item.object_step is not None
            rows = cur.execute(item.select_due.query, item.select_due.bind(values)).fetchall()
            assert item.object_step.keys_for(rows), item.rule
            if item.clear_key_column is not None:
                pk = datamap.table(item.object_step.source).primary_key
                affected[item.rule] = _run(cur, item.clear_key_column, {KEYS: [r[pk] for r in rows]})
        for rule in plan.statements:
            if rule.select_due is not None:
                rows = cur.execute(rule.select_due.query, rule.select_due.bind(values)).fetchall()
                pk = datamap.table(rule.table).primary_key
                affected[rule.rule] = _run(cur, rule.statement, {KEYS: [r[pk] for r in rows]})
            else:
                affected[rule.rule] = _run(cur, rule.statement, values)
        conn.rollback()
    assert set(affected) >= {s.rule for s in plan.statements}
    assert [rule for rule, count in affected.items() if count == 0] == []
