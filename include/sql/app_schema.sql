-- The reference deployment: aircalls.ai's application database, schema "app".
-- Shaped as the product's own database would be (DESIGN.md section 2): the governance workflows
-- never assume this layout, they read it from include/datamap.yaml. Identity columns and every
-- foreign key carry an index, as a well-run app would have.
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.businesses (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    industry    text NOT NULL,
    country     char(2) NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS app.users (
    id               bigint PRIMARY KEY,
    business_id      bigint NOT NULL REFERENCES app.businesses (id),
    full_name        text NOT NULL,
    email            text NOT NULL,
    phone            text,
    phone_e164       text,
    job_title        text,
    billing_address  text,
    created_at       timestamptz NOT NULL,
    last_login_at    timestamptz
);
-- E-mail addresses are stored as typed, sometimes decomposed (NFD): unique and looked up as the
-- identity normaliser compares them, NFC then lower-case.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_nfc_lower_key ON app.users (lower(normalize(email, NFC)));
CREATE INDEX IF NOT EXISTS users_phone_e164_idx ON app.users (phone_e164);
CREATE INDEX IF NOT EXISTS users_business_id_idx ON app.users (business_id);

CREATE TABLE IF NOT EXISTS app.callers (
    id             bigint PRIMARY KEY,
    business_id    bigint NOT NULL REFERENCES app.businesses (id),
    phone          text NOT NULL,
    full_name      text,
    email          text,
    first_seen_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS callers_phone_idx ON app.callers (phone);
CREATE INDEX IF NOT EXISTS callers_email_nfc_lower_idx ON app.callers (lower(normalize(email, NFC)));
CREATE INDEX IF NOT EXISTS callers_business_id_idx ON app.callers (business_id);
CREATE INDEX IF NOT EXISTS callers_first_seen_at_idx ON app.callers (first_seen_at);

CREATE TABLE IF NOT EXISTS app.calls (
    id                  bigint PRIMARY KEY,
    business_id         bigint NOT NULL REFERENCES app.businesses (id),
    caller_id           bigint NOT NULL REFERENCES app.callers (id),
    handled_by_user_id  bigint REFERENCES app.users (id),
    started_at          timestamptz NOT NULL,
    duration_s          integer NOT NULL CHECK (duration_s >= 0),
    outcome             text NOT NULL CHECK (outcome IN ('answered', 'voicemail', 'transferred', 'missed', 'booked')),
    recording_key       text,
    transcript          text
);
CREATE INDEX IF NOT EXISTS calls_business_id_idx ON app.calls (business_id);
CREATE INDEX IF NOT EXISTS calls_caller_id_idx ON app.calls (caller_id);
CREATE INDEX IF NOT EXISTS calls_handled_by_user_id_idx ON app.calls (handled_by_user_id);
CREATE INDEX IF NOT EXISTS calls_started_at_idx ON app.calls (started_at);

CREATE TABLE IF NOT EXISTS app.messages (
    id           bigint PRIMARY KEY,
    business_id  bigint NOT NULL REFERENCES app.businesses (id),
    caller_id    bigint REFERENCES app.callers (id),
    user_id      bigint REFERENCES app.users (id),
    channel      text NOT NULL CHECK (channel IN ('sms', 'email', 'chat')),
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    body         text NOT NULL,
    sent_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_business_id_idx ON app.messages (business_id);
CREATE INDEX IF NOT EXISTS messages_caller_id_idx ON app.messages (caller_id);
CREATE INDEX IF NOT EXISTS messages_user_id_idx ON app.messages (user_id);
CREATE INDEX IF NOT EXISTS messages_sent_at_idx ON app.messages (sent_at);

CREATE TABLE IF NOT EXISTS app.appointments (
    id                 bigint PRIMARY KEY,
    business_id        bigint NOT NULL REFERENCES app.businesses (id),
    caller_id          bigint NOT NULL REFERENCES app.callers (id),
    scheduled_for      timestamptz NOT NULL,
    notes              text,
    calendar_event_id  text,
    created_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS appointments_business_id_idx ON app.appointments (business_id);
CREATE INDEX IF NOT EXISTS appointments_caller_id_idx ON app.appointments (caller_id);
CREATE INDEX IF NOT EXISTS appointments_scheduled_for_idx ON app.appointments (scheduled_for);

CREATE TABLE IF NOT EXISTS app.support_tickets (
    id          bigint PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES app.users (id),
    subject     text NOT NULL,
    body        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('open', 'pending', 'solved', 'closed')),
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS support_tickets_user_id_idx ON app.support_tickets (user_id);
CREATE INDEX IF NOT EXISTS support_tickets_created_at_idx ON app.support_tickets (created_at);

CREATE TABLE IF NOT EXISTS app.payments (
    id                   bigint PRIMARY KEY,
    business_id          bigint NOT NULL REFERENCES app.businesses (id),
    user_id              bigint REFERENCES app.users (id),
    amount_cents         bigint NOT NULL,
    currency             char(3) NOT NULL,
    card_last4           char(4),
    billing_address      text,
    processor_charge_id  text NOT NULL,
    paid_at              timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_business_id_idx ON app.payments (business_id);
CREATE INDEX IF NOT EXISTS payments_user_id_idx ON app.payments (user_id);
CREATE INDEX IF NOT EXISTS payments_paid_at_idx ON app.payments (paid_at);

CREATE TABLE IF NOT EXISTS app.marketing_preferences (
    user_id        bigint PRIMARY KEY REFERENCES app.users (id),
    email_opt_in   boolean NOT NULL,
    sms_opt_in     boolean NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS app.usage_events (
    id            bigint PRIMARY KEY,
    user_id       bigint REFERENCES app.users (id),
    occurred_at   timestamptz NOT NULL,
    ip_address    inet,
    user_agent    text,
    device_id     text,
    path          text NOT NULL,
    geo_country   char(2)
);
CREATE INDEX IF NOT EXISTS usage_events_user_id_idx ON app.usage_events (user_id);
CREATE INDEX IF NOT EXISTS usage_events_occurred_at_idx ON app.usage_events (occurred_at);
