"""Least privilege against a real PostgreSQL: the deployment's roles set up as docker-compose does
it, on a copy of the reference deployment, then the task role tried.

Set-up, as in production: a DBA runs ``include/sql/roles/database_roles.sql`` (roles named
uniquely for this run: role names are cluster-wide, and dropped after); the migration role
creates the governance schema (``python -m governance migrate``) and applies the grants the data
map implies (``python -m governance grants --apply``); the tasks connect as the task role. The
copy also holds what the map does not name: a table of staff notes and a column added to users.

The task role cannot alter, disable or replace the ledger's triggers, cannot rewrite ledger rows
(it appends only through the ledger writer), cannot read what the map does not name, cannot run
DDL, and still erases and exports a person completely and sweeps every app table's retention rules.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import yaml
from airflow.sdk import Connection
from psycopg import sql

from governance.cli import main as governance_cli
from governance.config import datamap_path
from governance.connectors.base import processor_connector
from governance.crypto import Keyring
from governance.datamap import load_datamap
from governance.datamap.drift import find_drift
from governance.datamap.loader import validate_datamap
from governance.datamap.plans import provisioned_key_tables
from governance.erasure.keys import KeyTablesMissing, ensure_key_tables
from governance.export.collect import ExportTargets, export_bundle_to_s3
from governance.grants import DatabaseRoles, apply_grants
from governance.ledger import LedgerEntry, LedgerWriter
from governance.migrations import MigrationError, SchemaNotMigrated, ensure_schema, migrate
from governance_dev.seed import cast_member
from governance_dev.services import _pg_bin
from tests.fixtures.reference import Deployment, cloned_deployment
from tests.fixtures.services import PgServer
from tests.integration.test_erasure_support import conf_for, run_erasure
from tests.integration.test_export_bundle import (
    APP_TABLES,
    PASSPHRASE,
    bundle_keys,
    ground_truth_rows,
    read_bundle,
    subject_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=90)]

ROLES_SCRIPT = "include/sql/roles/database_roles.sql"


@dataclass(frozen=True)
class LeastPrivilege:
    """The copy of the reference deployment and its roles."""

    deployment: Deployment
    roles: DatabaseRoles
    task_url: str
    migration_url: str

    @property
    def admin_url(self) -> str:
        return self.deployment.app_url


def _login_url(pg: PgServer, database: str, role: str, password: str) -> str:
    return psycopg.conninfo.make_conninfo(
        host=pg.host, port=pg.port, dbname=database, user=role, password=password
    )


def _postgres_connection(pg: PgServer, database: str, role: str, password: str) -> str:
    return json.dumps({"conn_type": "postgres", "host": pg.host, "port": pg.port, "login": role,
                       "password": password, "schema": database})  # fmt: skip


def _run_roles_script(url: str, env: dict[str, str]) -> None:
    subprocess.run(
        [_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", ROLES_SCRIPT, url],
        check=True, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
    )  # fmt: skip


def _drop_roles(pg: PgServer, *roles: str) -> None:
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def least_privilege(reference_deployment: Deployment, s3: Any) -> Iterator[LeastPrivilege]:
    suffix = uuid.uuid4().hex[:8]
    roles = DatabaseRoles(
        task=f"gt_task_{suffix}", ledger_writer=f"gt_ledger_{suffix}", migration=f"gt_migr_{suffix}"
    )
    passwords = {"task": secrets.token_hex(12), "migration": secrets.token_hex(12)}
    assert roles.migration is not None
    try:
        with cloned_deployment(reference_deployment, s3, "least_privilege") as (clone, patch):
            pg, db = clone.pg, clone.database
            with psycopg.connect(clone.app_url, autocommit=True) as conn:
                # What the map does not name; the governance schema (and the insights schema its
                # migrations create) is created again by the migration role.
                conn.execute("DROP SCHEMA governance CASCADE")
                conn.execute("DROP SCHEMA IF EXISTS insights CASCADE")
                conn.execute("CREATE TABLE app.staff_notes (id bigint PRIMARY KEY, note text NOT NULL)")
                conn.execute("INSERT INTO app.staff_notes VALUES (1, 'an internal remark about a caller')")
                conn.execute("ALTER TABLE app.users ADD COLUMN internal_note text")
            role_env = {
                "GOVERNANCE_MIGRATION_ROLE": roles.migration,
                "GOVERNANCE_TASK_ROLE": roles.task,
                "GOVERNANCE_LEDGER_WRITER_ROLE": roles.ledger_writer,
            }
            _run_roles_script(
                clone.app_url,
                {**role_env, "GOVERNANCE_MIGRATOR_DB_PASSWORD": passwords["migration"],
                 "GOVERNANCE_TASK_DB_PASSWORD": passwords["task"]},
            )  # fmt: skip
            for key, value in role_env.items():
                patch.setenv(key, value)
            patch.setenv(
                "AIRFLOW_CONN_GOVERNANCE_MIGRATOR",
                _postgres_connection(pg, db, roles.migration, passwords["migration"]),
            )
            assert governance_cli(["migrate"]) == 0
            assert governance_cli(["grants", "--apply"]) == 0
            task_conn = _postgres_connection(pg, db, roles.task, passwords["task"])
            patch.setenv("AIRFLOW_CONN_AIRCALLS_APP", task_conn)
            patch.setenv("AIRFLOW_CONN_GOVERNANCE_DB", task_conn)
            yield LeastPrivilege(
                clone,
                roles,
                _login_url(pg, db, roles.task, passwords["task"]),
                _login_url(pg, db, roles.migration, passwords["migration"]),
            )
    finally:  # after the copy is dropped: nothing of the roles is left in any database
        _drop_roles(reference_deployment.pg, roles.task, roles.ledger_writer, roles.migration)


def _refused(url: str, statement: str, match: str) -> None:
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match=match),
    ):
        conn.execute(statement)


def _triggers(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'governance.audit_ledger'::regclass AND NOT tgisinternal"
        ).fetchall()
    return {str(name): str(enabled) for name, enabled in rows}


def _entry(task: str) -> LedgerEntry:
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    return LedgerEntry(dag_id="dsr_erasure", run_id="manual__lp", task_id=task, map_index=-1, try_number=1,
                       state="success", started_at=t0, ended_at=t0 + timedelta(seconds=1))  # fmt: skip


def _ledger_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT seq, task_id, rows_affected, mac FROM governance.audit_ledger ORDER BY seq"
        ).fetchall()


# --------------------------------------------------------------------------------------------
# The ledger


def test_task_role_cannot_alter_disable_drop_or_replace_the_ledger_triggers(
    least_privilege: LeastPrivilege,
) -> None:
    lp = least_privilege
    before = _triggers(lp.admin_url)
    assert set(before) == {
        "audit_ledger_append_only_chain",
        "audit_ledger_refuse_update_delete",
        "audit_ledger_refuse_truncate",
    }
    assert set(before.values()) == {"O"}  # enabled
    for statement in (
        "ALTER TABLE governance.audit_ledger DISABLE TRIGGER audit_ledger_refuse_update_delete",
        "ALTER TABLE governance.audit_ledger DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_ledger_refuse_truncate ON governance.audit_ledger",
    ):
        _refused(lp.task_url, statement, "must be owner")
    _refused(
        lp.task_url,
        "CREATE OR REPLACE FUNCTION governance.audit_ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NEW; END $$",
        "permission denied for schema governance",
    )
    # Replication mode would skip every trigger: only a superuser may set it.
    _refused(lp.task_url, "SET session_replication_role = replica", "permission denied to set parameter")
    assert _triggers(lp.admin_url) == before


def test_task_role_appends_to_the_ledger_as_the_ledger_writer_and_cannot_update_delete_or_truncate_rows(
    least_privilege: LeastPrivilege,
) -> None:
    lp = least_privilege
    keyring = Keyring.from_parts("lp-ledger-1", base64.b64encode(secrets.token_bytes(32)).decode())
    with LedgerWriter.connect(lp.task_url, keyring) as writer:
        assert writer.role == lp.roles.ledger_writer
        assert len(writer.append([_entry("plan"), _entry("execute")])) == 2
        # The ledger writer reaches the ledger and nothing else.
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="permission denied for table privacy_requests"
        ):
            writer.conn.execute("SELECT count(*) FROM governance.privacy_requests")
    rows = _ledger_rows(lp.admin_url)
    assert [r[1] for r in rows[-2:]] == ["plan", "execute"]
    # Refused by privilege, before the append-only trigger is even reached.
    for statement in (
        "UPDATE governance.audit_ledger SET rows_affected = 0",
        "DELETE FROM governance.audit_ledger",
        "TRUNCATE governance.audit_ledger",
    ):
        _refused(lp.task_url, statement, "permission denied for table audit_ledger")
    with psycopg.connect(lp.task_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(lp.roles.ledger_writer)))
        for statement in (
            "UPDATE governance.audit_ledger SET rows_affected = 0",
            "DELETE FROM governance.audit_ledger",
        ):
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="permission denied for table audit_ledger"
            ):
                conn.execute(statement)
    assert _ledger_rows(lp.admin_url) == rows


# --------------------------------------------------------------------------------------------
# What the map does not name, and DDL


def test_task_role_cannot_read_a_table_or_a_column_the_data_map_does_not_name(
    least_privilege: LeastPrivilege,
) -> None:
    lp = least_privilege
    _refused(lp.task_url, "SELECT note FROM app.staff_notes", "permission denied for table staff_notes")
    _refused(lp.task_url, "SELECT count(*) FROM app.staff_notes", "permission denied for table staff_notes")
    _refused(lp.task_url, "SELECT internal_note FROM app.users", "permission denied for table users")
    _refused(lp.task_url, "SELECT * FROM app.users", "permission denied for table users")
    # Nor write what it may read: no INSERT anywhere in the app, no rewriting a primary key.
    _refused(lp.task_url, "INSERT INTO app.businesses (id, name, industry, country, created_at)"
                          " VALUES (-1, 'x', 'x', 'US', now())", "permission denied for table businesses")  # fmt: skip
    _refused(lp.task_url, "UPDATE app.users SET id = id", "permission denied for table users")
    # What the map does name is readable, column by column.
    with psycopg.connect(lp.task_url) as conn:
        assert conn.execute("SELECT count(email) FROM app.users").fetchone() == conn.execute(
            "SELECT count(*) FROM (SELECT id FROM app.users) AS u").fetchone()  # fmt: skip


def test_task_role_cannot_run_ddl_and_owns_nothing(least_privilege: LeastPrivilege) -> None:
    lp = least_privilege
    for statement, match in (
        ("CREATE TABLE app.exfiltrate (v text)", "permission denied for schema app"),
        ("CREATE TABLE governance.exfiltrate (v text)", "permission denied for schema governance"),
        ("CREATE TABLE public.exfiltrate (v text)", "permission denied for schema public"),
        ("CREATE SCHEMA exfiltrate", "permission denied for database"),
        ("ALTER TABLE app.users ADD COLUMN v text", "must be owner"),
        ("ALTER TABLE governance.privacy_requests DROP CONSTRAINT privacy_requests_pkey", "must be owner"),
        ("DROP TABLE app.usage_events", "must be owner"),
        ("TRUNCATE app.usage_events", "permission denied for table usage_events"),
        ("CREATE INDEX ON app.users (job_title)", "must be owner"),
        ("GRANT SELECT ON app.staff_notes TO PUBLIC", "permission denied for table staff_notes"),
    ):
        _refused(lp.task_url, statement, match)
    with psycopg.connect(lp.admin_url) as conn:
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = to_regrole(%s)", (lp.roles.task,)
        ).fetchone()
        governance_owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'governance'"
        ).fetchall()
    assert owned == (0,)
    assert governance_owners == [(lp.roles.migration,)]


def test_drift_run_as_the_task_role_still_reports_the_table_and_column_it_cannot_read(
    least_privilege: LeastPrivilege,
) -> None:
    report = find_drift(load_datamap(), least_privilege.task_url)
    assert report.unmapped_tables == ("aircalls_app.staff_notes",)
    unmapped = {(c.table, c.column): c for c in report.unmapped_columns}
    assert set(unmapped) == {("staff_notes", "id"), ("staff_notes", "note"), ("users", "internal_note")}
    note = unmapped[("users", "internal_note")]
    assert note.looks_personal and "not sampled" in note.reason  # judged by its name, values unread


# --------------------------------------------------------------------------------------------
# The workflows still work as the task role


def test_erasure_of_one_person_runs_end_to_end_as_the_task_role(least_privilege: LeastPrivilege) -> None:
    lp = least_privilege
    subject = cast_member("both_user_and_caller")
    run = run_erasure(conf_for("both_user_and_caller"), "least_privilege_both")
    assert run.results["verify"]["passed"] and run.results["close"]["status"] == "completed"
    with psycopg.connect(lp.admin_url) as conn:
        users = conn.execute("SELECT count(*) FROM app.users WHERE id = %s", (subject.user_id,)).fetchone()
        callers = conn.execute(
            "SELECT count(*) FROM app.callers WHERE id = ANY(%s)", (list(subject.caller_ids),)
        ).fetchone()
        plans = conn.execute(
            "SELECT status FROM governance.erasure_plans WHERE plan_id = %s", (run.summary["plan_id"],)
        ).fetchall()
        kept = conn.execute("SELECT count(*) FROM app.users").fetchone()
    assert users == (0,) and callers == (0,) and plans == [("verified",)]
    assert kept and kept[0] > 0  # everybody else is still there


def test_erasure_key_tables_belong_to_the_migration_role_and_a_missing_one_is_named_not_created_by_the_task_role(
    least_privilege: LeastPrivilege,
) -> None:
    lp = least_privilege
    datamap = load_datamap()
    app_tables = {kt.source: kt for kt in provisioned_key_tables(datamap) if kt.source.system == "aircalls_app"}
    with psycopg.connect(lp.admin_url) as conn:
        owners = dict(conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'governance_erasure'").fetchall())  # fmt: skip
    assert owners == {kt.table_name: lp.roles.migration for kt in app_tables.values()}
    usage = next(kt for ref, kt in app_tables.items() if ref.table == "usage_events")
    with psycopg.connect(lp.migration_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(usage.name))
    try:
        with pytest.raises(KeyTablesMissing, match=rf"{usage.table_name}.*governance grants --apply"):
            ensure_key_tables(datamap, app_tables, lambda _conn_id: lp.task_url)
        with psycopg.connect(lp.admin_url) as conn:
            assert conn.execute("SELECT to_regclass(%s)", (usage.name.as_string(None),)).fetchone() == (None,)
    finally:
        assert governance_cli(["grants", "--apply"]) == 0  # the migration role creates it again
    with psycopg.connect(lp.admin_url) as conn:
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'governance_erasure' AND tablename = %s",
                            (usage.table_name,)).fetchone() == (lp.roles.migration,)  # fmt: skip
    ensure_key_tables(datamap, app_tables, lambda _conn_id: lp.task_url)  # all there: nothing to create


def test_export_of_one_person_as_the_task_role_holds_exactly_their_rows(
    least_privilege: LeastPrivilege, s3: Any
) -> None:
    lp = least_privilege
    deployment = lp.deployment
    member = cast_member("payer")
    subject = subject_of("payer")
    infos = {
        "payments_processor": Connection(conn_id="payments_processor", conn_type="http", host=deployment.payments.url,
                                         password=deployment.payments.api_key),
        "crm": Connection(conn_id="crm", conn_type="http", host=deployment.crm.url, password=deployment.crm.api_key),
        "support_desk": Connection(conn_id="support_desk", conn_type="http", host=deployment.support_desk.url,
                                   login="governance", password=deployment.support_desk.api_key),
    }  # fmt: skip
    targets = ExportTargets(
        # The warehouse lives in another database, whose owner grants the task role (not set up here).
        conninfo_for=lambda conn_id: deployment.warehouse_url if conn_id == "aircalls_warehouse" else lp.task_url,
        s3_for=lambda _conn_id: s3,
        processor_client_for=lambda p: processor_connector(p, infos[p.name], attempts=2, backoff_s=0.01),
    )
    key = "exports/least-privilege/bundle.zip.age"
    summary = export_bundle_to_s3(
        load_datamap(), subject, formats=("json",), targets=targets, s3=s3, bucket=deployment.bucket, key=key,  # type: ignore[arg-type]
        passphrase=PASSPHRASE, generated_at=datetime.now(UTC),
    )  # fmt: skip
    assert summary.found_data
    archive = read_bundle(s3, deployment.bucket, key)
    truth = ground_truth_rows(lp.admin_url, email=member.email, e164=member.e164)
    assert any(truth[t] for t in APP_TABLES)
    for table in APP_TABLES:
        assert bundle_keys(archive, table) == truth[table], table
    assert not [n for n in archive.namelist() if "staff_notes" in n]
    assert "internal_note" not in archive.read("data/aircalls_app/users.json").decode()


# --------------------------------------------------------------------------------------------
# Grants follow the map; tasks do not migrate


def _map_with_staff_notes() -> Any:
    raw = yaml.safe_load(datamap_path().read_text())
    changed = copy.deepcopy(raw)
    app = next(s for s in changed["systems"] if s.get("kind") == "postgres")
    app["tables"].append(
        {
            "name": "staff_notes",
            "description": "Internal notes (added to the map by this test).",
            "primary_key": "id",
            "fields": [
                {
                    "name": "id",
                    "data_category": "system.operations",
                    "data_use": "essential.service.operations",
                },
                {
                    "name": "note",
                    "data_category": "system.operations",
                    "data_use": "essential.service.operations",
                },
            ],
        }
    )
    return validate_datamap(changed, source="datamap-with-staff-notes.yaml")


def test_a_table_added_to_the_map_gains_its_grants_and_loses_them_when_removed(
    least_privilege: LeastPrivilege,
) -> None:
    lp = least_privilege
    try:
        apply_grants(lp.migration_url, _map_with_staff_notes(), lp.roles, other_databases="skip")  # the warehouse: its owner
        with psycopg.connect(lp.task_url) as conn:
            assert conn.execute("SELECT id, note FROM app.staff_notes").fetchall() == [
                (1, "an internal remark about a caller")
            ]
    finally:
        apply_grants(lp.migration_url, load_datamap(), lp.roles, other_databases="skip")
    _refused(lp.task_url, "SELECT note FROM app.staff_notes", "permission denied for table staff_notes")
    # Applying again changes nothing (idempotent): still exactly the map's grants.
    apply_grants(lp.migration_url, load_datamap(), lp.roles, other_databases="skip")
    with psycopg.connect(lp.task_url) as conn:
        assert conn.execute("SELECT count(email) FROM app.users").fetchone() is not None


def test_tasks_only_check_the_schema_where_a_migration_role_is_configured(
    least_privilege: LeastPrivilege, make_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lp = least_privilege
    assert ensure_schema(lp.task_url) == []  # current: nothing to do, nothing attempted
    # The task role may not migrate, even when asked to.
    with pytest.raises(MigrationError, match="not that role nor a member"):
        migrate(lp.task_url)
    empty = make_db("least_privilege_empty")
    with pytest.raises(SchemaNotMigrated, match="python -m governance migrate"):
        ensure_schema(empty)
    with psycopg.connect(empty) as conn:
        assert conn.execute("SELECT to_regnamespace('governance')").fetchone() == (None,)
    # Without a migration role (development, tests, make demo) the first task migrates.
    monkeypatch.delenv("GOVERNANCE_MIGRATION_ROLE")
    assert "0001_core.sql" in ensure_schema(empty)


def test_task_role_reads_and_adds_insights_releases_but_cannot_change_or_remove_one(least_privilege: LeastPrivilege) -> None:
    lp = least_privilege
    with psycopg.connect(lp.task_url) as conn:
        assert conn.execute("SELECT count(*) FROM insights.industry_insights").fetchone() is not None
        assert conn.execute("SELECT count(*) FROM governance.insights_budget_spends").fetchone() is not None
    for statement, match in (
        ("UPDATE insights.releases SET cells = 0", "permission denied for table releases"),
        ("DELETE FROM insights.industry_insights", "permission denied for table industry_insights"),
        ("CREATE TABLE insights.exfiltrate (v text)", "permission denied for schema insights"),
    ):
        _refused(lp.task_url, statement, match)


# Last in the module: the sweep deletes old rows the tests above read.
def test_retention_sweep_of_every_app_table_runs_as_the_task_role_and_deletes_what_expired(
    least_privilege: LeastPrivilege,
) -> None:
    from governance.datamap.plans import build_retention_plan
    from governance.retention.engine import sweep_targets
    from governance.workflows.retention_sweep import sweep_one_target

    lp = least_privilege
    datamap = load_datamap()
    targets = sorted(
        (t for t in sweep_targets(datamap, build_retention_plan(datamap)) if t["system"] == "aircalls_app"),
        key=lambda t: t["wave"],
    )
    assert {t["name"] for t in targets} >= {"calls", "messages", "usage_events"}
    as_of = datetime.now(UTC).replace(microsecond=0)
    expired_calls = "SELECT count(*) FROM app.calls WHERE started_at < %s::timestamptz - interval '2 years'"
    with psycopg.connect(lp.admin_url) as conn:
        before = conn.execute(expired_calls, (as_of,)).fetchone()
    assert before is not None and before[0] > 0, "the copy holds calls past their two years"
    options = {"dry_run": False, "as_of": as_of.isoformat(), "orphan_grace_days": 7}
    results = [sweep_one_target(t, {**options, "rules": t["rules"]}, run_id=f"least_privilege_{t['name']}") for t in targets]
    assert all(r["verification"].get("success") for r in results if r["rules"]), results
    with psycopg.connect(lp.admin_url) as conn:
        after = conn.execute(expired_calls, (as_of,)).fetchone()
        recorded = conn.execute(
            "SELECT rule, rows_affected FROM governance.retention_runs WHERE run_id = 'least_privilege_calls'"
        ).fetchall()
    deleted = before[0] - after[0]  # type: ignore[index]
    assert deleted > 0 and sum(rows for _, rows in recorded) >= deleted
    # Still the task role: it owns nothing and runs no DDL after sweeping.
    _refused(lp.task_url, "CREATE TABLE app.after_sweep (v text)", "permission denied for schema app")
