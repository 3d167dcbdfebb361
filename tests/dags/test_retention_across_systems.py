"""The retention sweep in the analytics warehouse and the call-event store, on a copy of the
reference deployment, through the sweep's task functions (one mapped task per target: each
warehouse table in the warehouse's own database through its own connection, the DynamoDB table
through its own). Every expectation is hand-written SQL on the warehouse or the test's own boto3
Scan: exactly the expired warehouse rows go, held rows stay, every event item ends with a TTL no
later than a year after its event (held ones with none, so DynamoDB cannot expire them), a dry
run and a same-day repeat change nothing, each rule records its run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from governance_dev.seed import cast_member
from governance_dev.seed.cast import CAST_KEYS
from tests.fixtures.reference import Deployment

pytestmark = [pytest.mark.slow(seconds=30), pytest.mark.integration]

AS_OF = datetime(2026, 11, 28, tzinfo=UTC)
HELD_BUSINESS = 3
WAREHOUSE_RULES = ["warehouse_missed_call_facts_6_months", "warehouse_call_facts_2_years",
                   "warehouse_user_sessions_13_months", "warehouse_marketing_audience_2_years"]  # fmt: skip
# table -> (primary key, SQL: the row survives the rules, by their words in include/datamap.yaml)
SURVIVES = {
    "call_facts": ("call_id", "NOT (started_at < %(as_of)s - interval '2 years' OR (outcome = 'missed' AND "
                   "started_at < %(as_of)s - interval '6 months')) OR business_id = %(held)s OR caller_phone = %(phone)s"),
    "user_sessions": ("id", "NOT session_start < %(as_of)s - interval '13 months' OR business_id = %(held)s"),
    "marketing_audience": ("id", "NOT added_at < %(as_of)s - interval '2 years' OR business_id = %(held)s"),
}  # fmt: skip


def rows(url: str, where: str | None = None, params: dict[str, Any] | None = None) -> dict[str, dict[Any, str]]:
    """md5 of every warehouse row (or of those matching ``where``), by table and primary key."""
    out = {}
    with psycopg.connect(url) as conn:
        for table, (pk, survives) in SURVIVES.items():
            query = sql.SQL("SELECT {}, md5(t::text) FROM {} t").format(sql.Identifier(pk), sql.Identifier("analytics", table))
            if where is not None:
                query += sql.SQL(" WHERE " + survives)
            out[table] = dict(conn.execute(query, params or {}).fetchall())
    return out


def items(dynamodb: Any, table: str) -> dict[tuple[str, str], tuple[int | None, int]]:
    """(phone, sort key) -> (TTL or None, business), by the test's own Scan."""
    out = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            ttl = int(item["expires_at"]["N"]) if "expires_at" in item else None
            out[(item["caller_phone"]["S"], item["occurred_at"]["S"])] = (ttl, int(item["business_id"]["N"]))
    return out


def limit_of(sort_key: str) -> int:
    moment = datetime.fromisoformat(sort_key.split("#")[0].replace("Z", "+00:00"))
    return int(moment.replace(year=moment.year + 1).timestamp())  # no event is on 29 February


def run_records(url: str, run_id: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT rule, dry_run, status, rows_affected, held, held_reasons FROM governance.retention_runs WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in found}


def test_warehouse_and_event_store_rules_delete_and_expire_exactly_what_they_should_and_keep_held_data(
    reference_clone: Deployment, dynamodb: Any
) -> None:
    from governance.crypto import hasher_from_airflow
    from governance.migrations import migrate
    from governance.workflows.retention_sweep import plan_sweep, sweep_one_target

    url, warehouse, events = reference_clone.app_url, reference_clone.warehouse_url, reference_clone.events_table
    assert events is not None
    migrate(url)
    # A held person: a cast caller with call facts past two years in the warehouse (no account).
    with psycopg.connect(warehouse) as conn:
        held = next(
            s for s in (cast_member(k) for k in CAST_KEYS) if s.e164 and s.user_id is None and conn.execute(
                "SELECT count(*) FROM analytics.call_facts WHERE caller_phone = %s AND started_at < %s - interval '2 years'"
                " AND business_id <> %s", (s.e164, AS_OF, HELD_BUSINESS)).fetchone()[0]  # type: ignore[index]
        )  # fmt: skip
    assert held.e164 is not None
    hasher = hasher_from_airflow()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO governance.legal_holds (scope, business_id, reason, starts_at, created_by)"
            " VALUES ('business', %s, 'Litigation: records of this client preserved', %s, 'legal-team')",
            (HELD_BUSINESS, AS_OF - timedelta(days=400)),
        )
        conn.execute(
            "INSERT INTO governance.legal_holds (scope, identity_kind, subject_hash, hash_key_id, reason, starts_at, created_by)"
            " VALUES ('person', 'phone', %s, %s, 'Dispute: this caller''s records preserved', %s, 'legal-team')",
            (hasher.hash("phone", held.e164), hasher.key_id, AS_OF - timedelta(days=30)),
        )
    params = {"as_of": AS_OF, "held": HELD_BUSINESS, "phone": held.e164}
    before, survivors = rows(warehouse), rows(warehouse, "survives", params)
    assert all(len(survivors[t]) < len(before[t]) for t in SURVIVES), "the seed has expired rows in every table"
    items_before = items(dynamodb, events)
    assert any(ttl is None for ttl, _ in items_before.values()) and any(
        ttl is not None and ttl > limit_of(sk) for (_, sk), (ttl, _) in items_before.items()
    ), "the seed has items without a TTL and with one too late"

    def sweep(dry_run: bool, run_id: str) -> list[dict[str, Any]]:
        options = {"dry_run": dry_run, "as_of": AS_OF.isoformat(), "rules": [*WAREHOUSE_RULES, "call_events_1_year"],
                   "orphan_grace_days": 7}  # fmt: skip
        targets = plan_sweep(options)
        assert {(t["kind"], t["system"], t["name"]) for t in targets} == {
            ("table", "aircalls_warehouse", "call_facts"), ("table", "aircalls_warehouse", "user_sessions"),
            ("table", "aircalls_warehouse", "marketing_audience"), ("items", "aircalls_events", "call_events"),
        }  # fmt: skip
        return [sweep_one_target(t, options, run_id=run_id) for t in targets]

    # 1. A dry run: counts, nothing changed anywhere.
    sweep(True, "dry")
    assert rows(warehouse) == before and items(dynamodb, events) == items_before
    dry = run_records(url, "dry")
    assert all(r[0] for r in dry.values()) and dry["call_events_1_year"][2] > 0

    # 2. The sweep (verified by Great Expectations inside each task).
    results = sweep(False, "sweep")
    assert rows(warehouse) == survivors, "exactly the expired, unheld warehouse rows went"
    after = items(dynamodb, events)
    held_items = {k for k, (_, business) in items_before.items() if business == HELD_BUSINESS or k[0] == held.e164}
    assert held_items and held_items <= set(after), "held items are all kept"
    assert all(after[k][0] is None for k in held_items), "held items carry no TTL DynamoDB could expire them by"
    overdue = {k for k, (ttl, _) in items_before.items() if k not in held_items
               and min(ttl or limit_of(k[1]), limit_of(k[1])) < (AS_OF - timedelta(days=2)).timestamp()}  # fmt: skip
    assert overdue and not overdue & set(after), "items long past their TTL, which moto never expires, were deleted"
    for key, (ttl, _) in after.items():
        if key not in held_items:
            assert ttl is not None and ttl <= limit_of(key[1])
            before_ttl = items_before[key][0]
            assert ttl == (limit_of(key[1]) if before_ttl is None or before_ttl > limit_of(key[1]) else before_ttl)
    assert set(after) == set(items_before) - overdue
    records = run_records(url, "sweep")
    assert {r[1] for r in records.values()} == {"done"} and not any(r[0] for r in records.values())
    assert records["warehouse_call_facts_2_years"][3] > 0 and records["warehouse_call_facts_2_years"][4] == {
        "legal_hold": records["warehouse_call_facts_2_years"][3]}  # fmt: skip
    assert records["call_events_1_year"][3] == len(held_items)
    assert records["call_events_1_year"][2] == dry["call_events_1_year"][2], "the dry run counted what the sweep did"
    assert all(r["verification"]["success"] for r in results)

    # 3. Again the same day: nothing left to do.
    sweep(False, "again")
    assert rows(warehouse) == survivors and items(dynamodb, events) == after
    assert all(r[2] == 0 for r in run_records(url, "again").values())


def test_a_warehouse_rule_on_an_unknown_table_or_column_is_refused_with_its_place(tmp_path: Path) -> None:
    from governance.config import INCLUDE_DIR
    from governance.datamap.loader import load_datamap
    from governance.datamap.model import DataMapError

    data = yaml.safe_load((INCLUDE_DIR / "datamap.yaml").read_text())
    rules = {r["name"]: r for r in data["retention"]}
    rules["warehouse_call_facts_2_years"]["table"] = "call_fact"
    rules["warehouse_user_sessions_13_months"]["age_column"] = "session_begin"
    rules["call_events_1_year"]["age_column"] = "occured_at"
    path = tmp_path / "datamap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(DataMapError) as caught:
        load_datamap(path)
    text = str(caught.value)
    assert "retention[warehouse_call_facts_2_years].table: no table aircalls_warehouse.call_fact" in text
    assert "did you mean 'call_facts'?" in text
    assert "retention[warehouse_user_sessions_13_months].age_column: retention rule on a missing age column 'session_begin'" in text
    assert "retention[call_events_1_year].age_column: retention rule on a missing age attribute 'occured_at'" in text
