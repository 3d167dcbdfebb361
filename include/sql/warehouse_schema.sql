-- The reference deployment's analytics warehouse: its own database (Redshift or PostgreSQL in
-- production, a second database on the embedded server locally), schema "analytics", loaded
-- nightly from the app database by an ELT job (governance_dev.seed.warehouse stands in for it).
-- Rows reach a person through the app's ids (call_facts.call_id, user_sessions.user_id: references
-- into another system) or directly by identity (marketing_audience.email). The governance
-- workflows read this layout from include/datamap.yaml, never from here.
CREATE SCHEMA IF NOT EXISTS analytics;

-- One row per call, keyed by the app's call id, with the caller's phone as the ELT copied it.
CREATE TABLE IF NOT EXISTS analytics.call_facts (
    call_id       bigint PRIMARY KEY,
    business_id   bigint NOT NULL,
    caller_phone  text,
    started_at    timestamptz NOT NULL,
    duration_s    integer,
    outcome       text,
    loaded_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS call_facts_caller_phone_idx ON analytics.call_facts (caller_phone);
CREATE INDEX IF NOT EXISTS call_facts_business_id_idx ON analytics.call_facts (business_id);

-- One row per user and day of activity, keyed by the app's user id.
CREATE TABLE IF NOT EXISTS analytics.user_sessions (
    id              bigint PRIMARY KEY,
    user_id         bigint NOT NULL,
    business_id     bigint NOT NULL,
    session_start   timestamptz NOT NULL,
    session_end     timestamptz NOT NULL,
    events          integer NOT NULL,
    loaded_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS user_sessions_user_id_idx ON analytics.user_sessions (user_id);
CREATE INDEX IF NOT EXISTS user_sessions_business_id_idx ON analytics.user_sessions (business_id);

-- The marketing audience: one row per business and e-mail address (opted-in users, callers who
-- gave an address), as typed.
CREATE TABLE IF NOT EXISTS analytics.marketing_audience (
    id           bigint PRIMARY KEY,
    business_id  bigint NOT NULL,
    email        text NOT NULL,
    segment      text NOT NULL,
    added_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS marketing_audience_email_nfc_lower_idx ON analytics.marketing_audience (lower(normalize(email, NFC)));
CREATE INDEX IF NOT EXISTS marketing_audience_business_id_idx ON analytics.marketing_audience (business_id);
