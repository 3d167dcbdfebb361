-- The governance workflows' database roles (README, "Database roles"), created by a DBA: run once
-- per database, as a superuser or the app schema's owner with CREATEROLE. Idempotent (a second run
-- sets the passwords again and changes nothing else). A psql script (psql 15 or later):
--
--   GOVERNANCE_MIGRATOR_DB_PASSWORD=... GOVERNANCE_TASK_DB_PASSWORD=... \
--     psql -v ON_ERROR_STOP=1 -f include/sql/roles/database_roles.sql DBNAME
--
-- docker-compose runs it on app-postgres's first start (docker-entrypoint-initdb.d, after the app
-- schema). Role names come from GOVERNANCE_MIGRATION_ROLE, GOVERNANCE_TASK_ROLE and
-- GOVERNANCE_LEDGER_WRITER_ROLE (defaults below), the app schema from GOVERNANCE_APP_SCHEMA.
--
-- This script creates the roles and what only a DBA can give; the grants the data map implies are
-- applied by the migration role: `python -m governance migrate`, then
-- `python -m governance grants --apply` (docker-compose: the airflow-init service).
\set ON_ERROR_STOP on
\getenv migration_role GOVERNANCE_MIGRATION_ROLE
\if :{?migration_role}
\else
\set migration_role governance_migrator
\endif
\getenv task_role GOVERNANCE_TASK_ROLE
\if :{?task_role}
\else
\set task_role governance_task
\endif
\getenv ledger_role GOVERNANCE_LEDGER_WRITER_ROLE
\if :{?ledger_role}
\else
\set ledger_role governance_ledger_writer
\endif
\getenv app_schema GOVERNANCE_APP_SCHEMA
\if :{?app_schema}
\else
\set app_schema app
\endif
\getenv migration_password GOVERNANCE_MIGRATOR_DB_PASSWORD
\getenv task_password GOVERNANCE_TASK_DB_PASSWORD
\if :{?migration_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'set GOVERNANCE_MIGRATOR_DB_PASSWORD (the migration role''s password)'; END $$;
\endif
\if :{?task_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'set GOVERNANCE_TASK_DB_PASSWORD (the task role''s password)'; END $$;
\endif

-- Login roles with no attribute that grants could not limit (no superuser, no role or database
-- creation, no row-security bypass).
SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY[:'migration_role', :'task_role', :'ledger_role']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', :'migration_role', :'migration_password') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', :'task_role', :'task_password') \gexec
-- The ledger writer is never logged in as: tasks switch to it (SET ROLE) to append to the ledger.
SELECT format('ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS', :'ledger_role') \gexec
SELECT format('GRANT %I TO %I', :'ledger_role', :'task_role')
WHERE NOT pg_has_role(:'task_role', :'ledger_role', 'MEMBER') \gexec

-- The migration role creates and owns the governance schema (and so is the only one that can alter
-- the audit ledger or its triggers) ...
SELECT format('GRANT CREATE ON DATABASE %I TO %I', current_database(), :'migration_role') \gexec
-- ... and hands the task role the privileges on the app's tables the data map implies: it may pass
-- on reading, updating and deleting, never more (no INSERT, no DDL, no TRUNCATE), for the tables
-- there now and those the app's owner (the role running this script) creates later.
SELECT format('GRANT USAGE ON SCHEMA %I TO %I WITH GRANT OPTION', :'app_schema', :'migration_role') \gexec
SELECT format('GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I WITH GRANT OPTION', :'app_schema', :'migration_role') \gexec
SELECT format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, UPDATE, DELETE ON TABLES TO %I WITH GRANT OPTION', :'app_schema', :'migration_role') \gexec

-- Analysts read the published insights (aggregate_anonymisation) through this role and nothing
-- else: grant it to their own login roles. The migration that creates the insights schema gives it
-- SELECT there.
SELECT 'CREATE ROLE insights_analyst NOLOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'insights_analyst') \gexec

-- Nobody else creates objects in the public schema (PostgreSQL 15's default, made explicit).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The retention sweep drops wholly expired partitions of app tables range-partitioned on a rule's
-- age column through governance.drop_expired_partition (migration 0016: SECURITY DEFINER, it
-- only drops a partition of a table the caller may already delete from, whose every row is older
-- than the rule's cutoff). Dropping a partition needs the table's owner, so run this script again,
-- as a superuser, after `python -m governance migrate`: the function is then given to the role
-- running it. Until then the sweep deletes those partitions' rows in batches.
SELECT format('ALTER FUNCTION governance.drop_expired_partition(regclass, regclass, timestamptz, boolean) OWNER TO %I', current_user)
WHERE to_regprocedure('governance.drop_expired_partition(regclass, regclass, timestamptz, boolean)') IS NOT NULL \gexec
