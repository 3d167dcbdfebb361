-- Governance schema, version 5: erasure (dsr_erasure, policy 5.3).
-- Plans, per-step progress, the suppression list, certificates and suppression re-applications.
-- Nothing here holds an identity in clear: plans hold primary keys, object keys and processor
-- record ids; the suppression list holds keyed hashes (HMAC-SHA256, key id recorded).

-- What one erasure does, computed from the data map in one database snapshot and persisted before
-- anything changes. `plan` holds the executable detail (keys per table and effect, object keys,
-- processor record ids, what is kept and why); `summary` holds counts only (what XCom and the task
-- log show). A request has at most one plan being carried out at a time.
CREATE TABLE governance.erasure_plans (
    plan_id          text PRIMARY KEY CHECK (plan_id ~ '^epl-[0-9a-f]{20}$'),
    request_id       text NOT NULL REFERENCES governance.privacy_requests (request_id),
    dag_id           text NOT NULL,
    dag_run_id       text NOT NULL,
    status           text NOT NULL CHECK (status IN (
                         'planned', 'refused', 'approved', 'executing', 'executed', 'verified',
                         'verification_failed', 'superseded')),
    dry_run          boolean NOT NULL,
    as_of            timestamptz NOT NULL,
    guard_override   boolean NOT NULL DEFAULT false,
    refusal          text,
    datamap_version  text NOT NULL,
    datamap_sha256   text NOT NULL,
    summary          jsonb NOT NULL,
    plan             jsonb NOT NULL,
    verification     jsonb,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    approved_at      timestamptz,
    approved_by      text,
    executed_at      timestamptz,
    verified_at      timestamptz
);
CREATE INDEX erasure_plans_request_idx ON governance.erasure_plans (request_id, created_at);
CREATE UNIQUE INDEX erasure_plans_one_active_per_request ON governance.erasure_plans (request_id)
    WHERE status IN ('approved', 'executing');

-- Per-step progress of a plan: a retried task or a cleared-and-re-run run skips what is done.
-- Steps are named `db:<system>:<order>:<table>:<effect>`, `db:<system>` (the database's whole
-- transaction), `objects:<system>:<prefix>`, `processor:<name>:<record id>`.
CREATE TABLE governance.erasure_progress (
    plan_id       text NOT NULL REFERENCES governance.erasure_plans (plan_id),
    step          text NOT NULL,
    affected      bigint NOT NULL DEFAULT 0 CHECK (affected >= 0),
    detail        jsonb NOT NULL DEFAULT '{}',
    completed_at  timestamptz NOT NULL,
    PRIMARY KEY (plan_id, step)
);

-- People who were erased, as keyed hashes of each identity (never the identity): after a database
-- or bucket restore, `python -m governance reapply-suppressions` erases them again, touching only
-- data created before `erased_at`. `business_id` is set when the erasure was scoped to one business.
CREATE TABLE governance.suppression_list (
    identity_kind  text NOT NULL CHECK (identity_kind IN ('email', 'phone')),
    subject_hash   text NOT NULL CHECK (subject_hash ~ '^[0-9a-f]{64}$'),
    hash_key_id    text NOT NULL,
    business_id    bigint,
    erased_at      timestamptz NOT NULL,
    request_id     text NOT NULL REFERENCES governance.privacy_requests (request_id),
    recorded_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX suppression_list_subject_key
    ON governance.suppression_list (identity_kind, subject_hash, hash_key_id, COALESCE(business_id, 0));
CREATE INDEX suppression_list_request_idx ON governance.suppression_list (request_id);

-- Erasure certificates issued (the documents live in the object store; this is the index).
CREATE TABLE governance.erasure_certificates (
    plan_id              text PRIMARY KEY REFERENCES governance.erasure_plans (plan_id),
    request_id           text NOT NULL REFERENCES governance.privacy_requests (request_id),
    issued_at            timestamptz NOT NULL,
    verification_passed  boolean NOT NULL,
    json_uri             text NOT NULL,
    html_uri             text NOT NULL,
    sha256               text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    certificate          jsonb NOT NULL
);
CREATE INDEX erasure_certificates_request_idx ON governance.erasure_certificates (request_id);

-- Each run of `reapply-suppressions`: counts only.
CREATE TABLE governance.suppression_reapplications (
    run_id       text PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    as_of        timestamptz NOT NULL,
    dry_run      boolean NOT NULL,
    people       integer NOT NULL DEFAULT 0,
    summary      jsonb NOT NULL DEFAULT '{}'
);
