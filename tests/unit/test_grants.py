"""The grants the data map implies (pure: no database). Applying them is tested against PostgreSQL in
tests/integration/test_least_privilege.py."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from governance.config import datamap_path
from governance.datamap.loader import load_datamap, validate_datamap
from governance.grants import (
    AUDIT_LEDGER,
    DatabaseRoles,
    GrantError,
    apply_grants,
    governance_tables_from_migrations,
    plan_grants,
)
from governance.migrations import MIGRATIONS_DIR, MigrationError, migration_conninfo

ROLES = DatabaseRoles(task="t_task", ledger_writer="t_ledger", migration="t_migr")


def _statements(datamap: Any, tables: list[str] | None = None) -> list[str]:
    sections = plan_grants(datamap, ROLES, tables if tables is not None else governance_tables_from_migrations())
    return [line for section in sections for line in section.as_sql().splitlines() if not line.startswith("--")]


def _granted(statements: list[str], role: str) -> dict[str, dict[str, set[str] | None]]:
    """table -> privilege -> columns (None: the whole table), for GRANT ... TO role."""
    out: dict[str, dict[str, set[str] | None]] = {}
    for line in statements:
        match = re.fullmatch(rf'GRANT (?P<privs>.+) ON "(?P<schema>\w+)"\."(?P<table>\w+)" TO "{role}";', line)
        if not match:
            continue
        table = f"{match['schema']}.{match['table']}"
        for priv in re.findall(r'(SELECT|INSERT|UPDATE|DELETE|TRUNCATE|REFERENCES|TRIGGER|ALL)(?: \(([^)]*)\))?', match["privs"]):
            name, columns = priv
            out.setdefault(table, {})[name] = {c.strip().strip('"') for c in columns.split(",")} if columns else None
    return out


def test_task_role_reads_exactly_the_mapped_columns_and_updates_and_deletes_only_mapped_tables() -> None:
    datamap = load_datamap()
    granted = _granted(_statements(datamap), ROLES.task)
    system = datamap.postgres_systems[0]
    app = {f"{system.db_schema}.{t.name}": t for t in system.tables}
    assert {t for t in granted if t.startswith("app.")} == set(app)
    swept = {f"{system.db_schema}.{r.table}" for r in datamap.retention if r.system == system.name and r.table}
    assert "app.calls" in swept and "app.businesses" not in swept
    for name, table in app.items():
        # A table a retention rule sweeps also grants where a row is (ctid, tableoid): the batches
        # find their rows again by it. Nothing else beyond the mapped columns.
        locators = {"ctid", "tableoid"} if name in swept else set()
        assert granted[name]["SELECT"] == set(table.field_names) | locators, name
        assert granted[name]["UPDATE"] == set(table.field_names) - {table.primary_key}, name
        assert granted[name]["DELETE"] is None, name
        assert set(granted[name]) == {"SELECT", "UPDATE", "DELETE"}, f"{name}: nothing beyond what the map implies"


def test_only_the_ledger_writer_may_touch_the_ledger_and_only_to_read_and_insert() -> None:
    statements = _statements(load_datamap())
    ledger = f"governance.{AUDIT_LEDGER}"
    assert ledger not in _granted(statements, ROLES.task)
    writer = _granted(statements, ROLES.ledger_writer)
    assert writer == {ledger: {"SELECT": None, "INSERT": None}}
    # The task role appends by switching to the writer, and holds no other role.
    assert [s for s in statements if re.fullmatch(r'GRANT "\w+" TO "\w+";', s)] == [f'GRANT "{ROLES.ledger_writer}" TO "{ROLES.task}";']


def test_governance_tables_get_the_declared_privileges_and_every_table_a_migration_creates_is_covered() -> None:
    tables = governance_tables_from_migrations()
    created = {name for path in MIGRATIONS_DIR.glob("*.sql")
               for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?governance\.(\w+)", path.read_text())}  # fmt: skip
    assert created and created | {"schema_migrations"} == set(tables)
    granted = _granted(_statements(load_datamap()), ROLES.task)
    assert granted["governance.schema_migrations"] == {"SELECT": None}
    assert granted["governance.request_actions"] == {"SELECT": None, "INSERT": None}  # append-only
    assert granted["governance.erasure_plans"] == dict.fromkeys(("SELECT", "INSERT", "UPDATE", "DELETE"))
    # The only DDL is the migration role's own: the erasure's key tables (next test).
    assert not [line for line in _statements(load_datamap()) if re.search(r"\b(TRUNCATE|ALL PRIVILEGES|CREATE|TRIGGER)\b", line)
                and not line.startswith(("REVOKE", "BEGIN", "COMMIT"))
                and not re.match(r'CREATE (SCHEMA|UNLOGGED TABLE|INDEX) IF NOT EXISTS "?(governance_erasure|keys_)', line)]  # fmt: skip


def test_the_erasure_key_tables_are_created_by_the_migration_role_and_the_task_role_gets_their_rows_only() -> None:
    sections = [s for s in plan_grants(load_datamap(), ROLES, governance_tables_from_migrations())
                if s.schema == "governance_erasure"]  # fmt: skip
    assert {s.conn_id for s in sections} == {"aircalls_app", "aircalls_warehouse"}
    for section in sections:
        lines = section.as_sql().splitlines()[2:-1]
        creates = [line for line in lines if line.startswith("CREATE")]
        assert creates and all('"governance_erasure"' in line for line in creates)
        revoke = lines.index(f'REVOKE ALL ON ALL TABLES IN SCHEMA "governance_erasure" FROM "{ROLES.task}";')
        assert revoke == len(creates)  # every table exists before the task role's grants are reset
        grants = lines[revoke + 1:]
        assert grants[0] == f'GRANT USAGE ON SCHEMA "governance_erasure" TO "{ROLES.task}";'
        assert grants[1:] and all(re.fullmatch(
            rf'GRANT SELECT, INSERT, UPDATE, DELETE ON "governance_erasure"\."keys_\w+" TO "{ROLES.task}";', g) for g in grants[1:])
        assert {t for t, _ in section.expected} == {re.search(r'"(keys_\w+)"', g)[1] for g in grants[1:]}  # type: ignore[index]


def test_a_table_added_to_the_map_is_granted_with_no_code_change() -> None:
    raw = yaml.safe_load(datamap_path().read_text())
    changed = copy.deepcopy(raw)
    changed["systems"][0]["tables"].append(
        {
            "name": "voicemail_notes",
            "primary_key": "id",
            "references": [{"field": "caller_id", "to": {"table": "callers"}, "kind": "ownership"}],
            "fields": [
                {"name": "id", "data_category": "system.operations", "data_use": "essential.service.operations"},
                {"name": "caller_id", "data_category": "user.unique_id", "data_use": "essential.service.operations",
                 "erasure": "delete_row"},
                {"name": "text", "data_category": "user.content.private", "data_use": "essential.service.operations",
                 "erasure": "delete_row"},
            ],
        }
    )  # fmt: skip
    before = _granted(_statements(validate_datamap(raw)), ROLES.task)
    after = _granted(_statements(validate_datamap(changed)), ROLES.task)
    assert "app.voicemail_notes" not in before
    assert after["app.voicemail_notes"] == {"SELECT": {"id", "caller_id", "text"}, "UPDATE": {"caller_id", "text"},
                                           "DELETE": None}  # fmt: skip
    assert {k: v for k, v in after.items() if k != "app.voicemail_notes"} == before


def test_each_schema_is_revoked_then_granted_in_one_transaction_so_applying_is_exact_and_repeatable() -> None:
    for section in plan_grants(load_datamap(), ROLES, governance_tables_from_migrations()):
        lines = section.as_sql().splitlines()
        assert lines[1] == "BEGIN;" and lines[-1] == "COMMIT;"
        revoke = f'REVOKE ALL ON ALL TABLES IN SCHEMA "{section.schema}" FROM "{ROLES.task}"'
        if section.schema == "governance_erasure":  # its tables are created first (test above)
            assert lines[2].startswith('CREATE SCHEMA IF NOT EXISTS "governance_erasure"') and any(
                line.startswith(revoke) for line in lines)
        else:
            assert lines[2].startswith(revoke)


def test_the_task_role_must_be_a_role_of_its_own() -> None:
    with pytest.raises(GrantError, match="must be a role of its own"):
        DatabaseRoles.configured(task="same", ledger_writer="same")
    with pytest.raises(GrantError, match="must be a role of its own"):
        DatabaseRoles.configured(task="owner", ledger_writer="w", migration="owner")


def test_grants_command_prints_the_statements_without_a_database() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "governance", "grants", "--sql", "--task-role", "t_task", "--ledger-role", "t_ledger"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'GRANT SELECT ("id", "business_id", "full_name", "email"' in result.stdout
    assert 'GRANT SELECT, INSERT ON "governance"."audit_ledger" TO "t_ledger";' in result.stdout


def test_applying_refuses_a_system_that_lives_in_another_database_before_connecting_anywhere() -> None:
    with pytest.raises(GrantError, match="aircalls_app, aircalls_warehouse live in another database"):
        apply_grants(
            "host=db.invalid port=5432 dbname=governance user=migrator",
            load_datamap(),
            ROLES,
            system_conninfo={"aircalls_app": "host=app.invalid port=5432 dbname=aircalls user=task",
                             "aircalls_warehouse": "host=app.invalid port=5432 dbname=aircalls_warehouse user=task"},
        )  # fmt: skip


def test_migrate_names_the_missing_migration_connection_where_a_migration_role_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOVERNANCE_MIGRATION_ROLE", "t_migr")
    monkeypatch.delenv("AIRFLOW_CONN_GOVERNANCE_MIGRATOR", raising=False)
    with pytest.raises(MigrationError, match="through the 'governance_migrator' connection"):
        migration_conninfo()
    assert migration_conninfo("host=explicit") == "host=explicit"
