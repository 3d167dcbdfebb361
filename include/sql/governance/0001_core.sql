-- Governance schema, version 1: privacy requests and legal holds.
-- Owned by this project, separate from the app's schema. Identities are never stored in clear:
-- each is encrypted (AES-GCM, key id recorded) for the workflows that must read it back, and
-- keyed-hashed (HMAC-SHA256, key id recorded) for look-ups. Keys live outside the database.
CREATE TABLE governance.privacy_requests (
    request_id            text PRIMARY KEY CHECK (request_id ~ '^[a-z]{3}-[0-9]{8}-[0-9a-f]{12}$'),
    kind                  text NOT NULL CHECK (kind IN ('export', 'erasure')),
    status                text NOT NULL DEFAULT 'received'
                          CHECK (status IN ('received', 'verified', 'in_progress', 'completed', 'failed', 'rejected')),
    source                text NOT NULL DEFAULT 'cli' CHECK (source IN ('cli', 'trigger_form', 'intake', 'api')),
    received_at           timestamptz NOT NULL,
    due_at                timestamptz NOT NULL,
    completed_at          timestamptz,
    result_uri            text,
    business_id           bigint,
    email_encrypted       text,
    phone_encrypted       text,
    email_hash            text,
    phone_hash            text,
    encryption_key_id     text,
    hash_key_id           text,
    verified_at           timestamptz,
    verification_method   text,
    approved_at           timestamptz,
    approved_by           text,
    dag_run_id            text,
    outcome_detail        text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (due_at > received_at),
    CHECK (email_hash IS NOT NULL OR phone_hash IS NOT NULL),
    CHECK ((email_hash IS NULL) = (email_encrypted IS NULL)),
    CHECK ((phone_hash IS NULL) = (phone_encrypted IS NULL)),
    CHECK (status <> 'completed' OR completed_at IS NOT NULL)
);
CREATE INDEX privacy_requests_email_hash_idx ON governance.privacy_requests (email_hash);
CREATE INDEX privacy_requests_phone_hash_idx ON governance.privacy_requests (phone_hash);
CREATE INDEX privacy_requests_open_due_idx ON governance.privacy_requests (due_at)
    WHERE status NOT IN ('completed', 'rejected');

-- A legal hold keeps data that erasure and retention would otherwise remove: a person (by keyed
-- hash of one identity), a whole business, or a whole table. Ends at ends_at, or when released.
CREATE TABLE governance.legal_holds (
    hold_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope          text NOT NULL CHECK (scope IN ('person', 'business', 'table')),
    identity_kind  text CHECK (identity_kind IN ('email', 'phone')),
    subject_hash   text,
    hash_key_id    text,
    business_id    bigint,
    table_name     text CHECK (table_name ~ '^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$'),
    reason         text NOT NULL CHECK (length(trim(reason)) > 0),
    case_reference text,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz,
    released_at    timestamptz,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR ends_at > starts_at),
    CHECK (
        (scope = 'person' AND subject_hash IS NOT NULL AND hash_key_id IS NOT NULL AND identity_kind IS NOT NULL
            AND business_id IS NULL AND table_name IS NULL)
        OR (scope = 'business' AND business_id IS NOT NULL AND subject_hash IS NULL AND table_name IS NULL)
        OR (scope = 'table' AND table_name IS NOT NULL AND subject_hash IS NULL AND business_id IS NULL)
    )
);
CREATE INDEX legal_holds_subject_hash_idx ON governance.legal_holds (subject_hash) WHERE scope = 'person';
CREATE INDEX legal_holds_business_idx ON governance.legal_holds (business_id) WHERE scope = 'business';
