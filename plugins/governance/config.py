"""Project configuration: connection ids, paths and environment settings in one place.

Values that differ between deployments come from environment variables (or Airflow connections
for anything secret); nothing here is a secret.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = Path(os.environ.get("GOVERNANCE_INCLUDE_DIR", PROJECT_ROOT / "include"))
SQL_DIR = INCLUDE_DIR / "sql"

# Airflow connection ids. The workflows read systems from the data map; these are the ids the
# reference deployment and the project's own state use.
APP_CONN_ID = "aircalls_app"
WAREHOUSE_CONN_ID = "aircalls_warehouse"  # the analytics warehouse (its own database)
OBJECTS_CONN_ID = "aircalls_objects"
EVENTS_CONN_ID = "aircalls_events"  # the call-event store (DynamoDB; DynamoDB Local or moto locally)
GOVERNANCE_CONN_ID = "governance_db"
# The migration role's connection (schema owner): held only by the init and maintenance services.
MIGRATION_CONN_ID = "governance_migrator"
HASH_KEY_CONN_ID = "governance_hash_key"
ENCRYPTION_KEY_CONN_ID = "governance_encryption_key"
LEDGER_KEY_CONN_ID = "governance_ledger_key"
PAYMENTS_CONN_ID = "payments_processor"
CRM_CONN_ID = "crm"
SUPPORT_DESK_CONN_ID = "support_desk"
ALERTS_CONN_ID = "governance_alerts"

GOVERNANCE_SCHEMA = "governance"
# The published industry insights (aggregate_anonymisation), beside the governance schema.
INSIGHTS_SCHEMA = "insights"
# Added to Airflow's [core] sensitive_var_conn_names wherever the project runs Airflow, so the
# secrets masker hides these keys' values (trigger-form identities in the API action log, rendered
# fields, task logs). `python -m governance scrub-run-confs` removes them from run configurations.
AIRFLOW_SENSITIVE_NAMES = "email,phone"
APP_SCHEMA = "app"

# Database roles (least privilege; ``python -m governance grants`` derives their grants from the
# data map). Role names are cluster-wide in PostgreSQL, so each is configurable.
TASK_ROLE_ENV = "GOVERNANCE_TASK_ROLE"
LEDGER_WRITER_ROLE_ENV = "GOVERNANCE_LEDGER_WRITER_ROLE"
# Set (to the role's name) where a migration role owns the governance schema: tasks then only check
# that the schema is current and never migrate it themselves. Unset (development, tests): the
# first task to need the schema migrates it, as before.
MIGRATION_ROLE_ENV = "GOVERNANCE_MIGRATION_ROLE"
DEFAULT_TASK_ROLE = "governance_task"
DEFAULT_LEDGER_WRITER_ROLE = "governance_ledger_writer"


def task_role() -> str:
    """The role tasks log in as (``GOVERNANCE_TASK_ROLE``, default ``governance_task``)."""
    return os.environ.get(TASK_ROLE_ENV) or DEFAULT_TASK_ROLE


def ledger_writer_role() -> str:
    """The insert-only role ledger writers switch to (``GOVERNANCE_LEDGER_WRITER_ROLE``)."""
    return os.environ.get(LEDGER_WRITER_ROLE_ENV) or DEFAULT_LEDGER_WRITER_ROLE


def migration_role() -> str | None:
    """The role that owns and migrates the governance schema, when one is configured."""
    return os.environ.get(MIGRATION_ROLE_ENV) or None


def datamap_path() -> Path:
    """Path of the data map: ``GOVERNANCE_DATAMAP`` or ``include/datamap.yaml``."""
    return Path(os.environ.get("GOVERNANCE_DATAMAP", INCLUDE_DIR / "datamap.yaml"))


# Where the daily privacy-request SLA report is published in the objects bucket (the Asset
# privacy_request_sla_report; governance.sla_report).
SLA_REPORT_PREFIX = "reports/privacy-requests"
# Where anonymised industry insights are published in the objects bucket (governance.anonymisation).
INSIGHTS_PREFIX_ENV = "GOVERNANCE_INSIGHTS_PREFIX"


def insights_prefix() -> str:
    """The insights prefix, ``GOVERNANCE_INSIGHTS_PREFIX`` or ``insights/`` (ends with ``/``)."""
    return os.environ.get(INSIGHTS_PREFIX_ENV, "insights/").rstrip("/") + "/"


def objects_bucket() -> str:
    """Bucket holding recordings, transcripts and exports."""
    return os.environ.get("GOVERNANCE_OBJECTS_BUCKET", "aircalls-data")
