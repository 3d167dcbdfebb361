-- Governance schema, version 2: the audit ledger.
-- One row per task instance final state (success, failed, skipped, upstream_failed, up_for_retry):
-- which datasets it read and wrote, how many rows it changed, under which privacy request. Never
-- personal data: dataset URIs, counts and a request id only.
--
-- Tamper evidence has three layers:
--  1. the database refuses UPDATE, DELETE and TRUNCATE (trigger below; the writing role has no such
--     privileges either);
--  2. each row carries an HMAC-SHA256 (key outside the database, key id recorded) over its fields
--     and the previous row's MAC, so an edit, a deletion or a reordering breaks the chain;
--  3. the chain head is anchored outside the database (object store) at the end of each DAG run,
--     so a deleted tail, or a chain rebuilt from scratch, no longer matches the anchors.
-- `python -m governance verify-ledger` checks all three.
CREATE TABLE governance.audit_ledger (
    seq            bigint PRIMARY KEY CHECK (seq > 0),
    recorded_at    timestamptz NOT NULL,
    dag_id         text NOT NULL,
    run_id         text NOT NULL,
    task_id        text NOT NULL,
    map_index      integer NOT NULL DEFAULT -1,
    try_number     integer NOT NULL CHECK (try_number >= 0),
    state          text NOT NULL
                   CHECK (state IN ('success', 'failed', 'skipped', 'upstream_failed', 'up_for_retry', 'removed')),
    started_at     timestamptz,
    ended_at       timestamptz,
    inputs         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(inputs) = 'array'),
    outputs        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(outputs) = 'array'),
    rows_affected  bigint CHECK (rows_affected >= 0),
    request_id     text CHECK (request_id ~ '^[a-z]{3}-[0-9]{8}-[0-9a-f]{12}$'),
    -- 'listener': written by the task's own process; 'reconciled': written at the end of the DAG
    -- run for a state the scheduler set without the task running (or a lost listener write).
    source         text NOT NULL CHECK (source IN ('listener', 'reconciled')),
    key_id         text NOT NULL CHECK (length(key_id) > 0),
    prev_mac       text NOT NULL CHECK (prev_mac ~ '^[0-9a-f]{64}$'),
    mac            text NOT NULL CHECK (mac ~ '^[0-9a-f]{64}$'),
    -- A retried listener call or a second reconciliation never writes the same fact twice.
    CONSTRAINT audit_ledger_one_row_per_final_state
        UNIQUE (dag_id, run_id, task_id, map_index, try_number, state)
);
-- (dag_id, run_id) look-ups use the unique constraint's index; keep indexes few, every append pays them.
CREATE INDEX audit_ledger_request_idx ON governance.audit_ledger (request_id) WHERE request_id IS NOT NULL;

-- Appends are serialised and gap-free whoever writes: each insert takes the ledger's transaction
-- advisory lock and must extend the current head (seq + 1, prev_mac = head's mac).
CREATE FUNCTION governance.audit_ledger_check_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_mac text;
BEGIN
    PERFORM pg_advisory_xact_lock(1734569729);  -- governance.ledger.APPEND_LOCK_KEY
    SELECT seq, mac INTO head_seq, head_mac FROM governance.audit_ledger ORDER BY seq DESC LIMIT 1;
    IF NEW.seq <> coalesce(head_seq, 0) + 1 THEN
        RAISE EXCEPTION 'audit ledger append out of order: seq % does not follow head %', NEW.seq, coalesce(head_seq, 0)
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF NEW.prev_mac <> coalesce(head_mac, repeat('0', 64)) THEN
        RAISE EXCEPTION 'audit ledger append does not chain to the head (seq %)', coalesce(head_seq, 0)
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_ledger_append_only_chain
    BEFORE INSERT ON governance.audit_ledger
    FOR EACH ROW EXECUTE FUNCTION governance.audit_ledger_check_append();

CREATE FUNCTION governance.audit_ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'governance.audit_ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_ledger_refuse_update_delete
    BEFORE UPDATE OR DELETE ON governance.audit_ledger
    FOR EACH ROW EXECUTE FUNCTION governance.audit_ledger_refuse_change();

CREATE TRIGGER audit_ledger_refuse_truncate
    BEFORE TRUNCATE ON governance.audit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION governance.audit_ledger_refuse_change();

-- The role the listener writes as: INSERT and SELECT only. Roles are cluster-wide; a migrating
-- user without CREATEROLE leaves the role to the DBA (the triggers above still hold).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'governance_ledger_writer') THEN
        BEGIN
            CREATE ROLE governance_ledger_writer NOLOGIN;
        EXCEPTION WHEN insufficient_privilege OR duplicate_object THEN
            RAISE NOTICE 'role governance_ledger_writer not created (%); create it as a DBA', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'governance_ledger_writer') THEN
        GRANT USAGE ON SCHEMA governance TO governance_ledger_writer;
        REVOKE ALL ON governance.audit_ledger FROM governance_ledger_writer;
        GRANT SELECT, INSERT ON governance.audit_ledger TO governance_ledger_writer;
    END IF;
END;
$$;
