-- Governance schema, version 13: anonymised industry insights (policy 2.2).
-- The release itself is published to its own schema, insights, which a read-only analyst role may
-- query; what the release was made from (each cell's status, the privacy-budget ledger) stays in
-- the governance schema.
CREATE SCHEMA IF NOT EXISTS insights;

-- One row per release (a version per data period); staged until verified, then published.
CREATE TABLE governance.insights_releases (
    release_id     text PRIMARY KEY,
    release_name   text NOT NULL,
    run_id         text NOT NULL UNIQUE,
    period_start   date NOT NULL,
    period_end     date NOT NULL,            -- inclusive (a Sunday: releases cover whole ISO weeks)
    version        integer NOT NULL CHECK (version >= 1),
    k_businesses   integer NOT NULL CHECK (k_businesses >= 2),
    k_callers      integer NOT NULL CHECK (k_callers >= 2),
    dominance_share double precision NOT NULL,
    epsilon        double precision CHECK (epsilon > 0),
    delta          double precision CHECK (delta > 0 AND delta < 1),
    status         text NOT NULL CHECK (status IN ('staged', 'verified', 'published', 'blocked')),
    empty_reason   text,
    report         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    UNIQUE (period_start, period_end, version),
    CHECK (period_end >= period_start)
);

-- Every cell the release considered: its status, and the public values of those published.
CREATE TABLE governance.insights_release_cells (
    release_id        text NOT NULL REFERENCES governance.insights_releases (release_id),
    level             text NOT NULL,
    industry          text NOT NULL,
    country           text NOT NULL,
    period            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('published', 'suppressed_primary', 'suppressed_secondary')),
    reason            text,
    calls             double precision,
    answered_share    double precision,
    voicemail_share   double precision,
    transferred_share double precision,
    missed_share      double precision,
    booked_share      double precision,
    mean_duration_s   double precision,
    messages_per_call double precision,
    after_hours_share double precision,
    businesses        double precision,
    PRIMARY KEY (release_id, level, industry, country, period)
);

-- The differential-privacy ledger: epsilon spent on each ISO week of data, once per release
-- (a retried task finds its release's rows and spends nothing again).
CREATE TABLE governance.insights_budget_spends (
    release_id  text NOT NULL REFERENCES governance.insights_releases (release_id),
    week_start  date NOT NULL CHECK (extract(isodow FROM week_start) = 1),
    epsilon     double precision NOT NULL CHECK (epsilon > 0),
    delta       double precision NOT NULL CHECK (delta > 0 AND delta < 1),
    spent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (release_id, week_start)
);
CREATE INDEX insights_budget_spends_week_idx ON governance.insights_budget_spends (week_start);

-- The published release: public columns only.
CREATE TABLE insights.industry_insights (
    release_id        text NOT NULL,
    level             text NOT NULL,
    industry          text NOT NULL,
    country           text NOT NULL,
    period            text NOT NULL,
    calls             double precision NOT NULL,
    answered_share    double precision,
    voicemail_share   double precision,
    transferred_share double precision,
    missed_share      double precision,
    booked_share      double precision,
    mean_duration_s   double precision,
    messages_per_call double precision,
    after_hours_share double precision,
    businesses        double precision NOT NULL,
    PRIMARY KEY (release_id, level, industry, country, period)
);
CREATE TABLE insights.releases (
    release_id    text PRIMARY KEY,
    release_name  text NOT NULL,
    period_start  date NOT NULL,
    period_end    date NOT NULL,
    version       integer NOT NULL,
    k_businesses  integer NOT NULL,
    k_callers     integer NOT NULL,
    epsilon       double precision,
    delta         double precision,
    cells         integer NOT NULL,
    empty_reason  text,
    published_at  timestamptz NOT NULL
);

-- The read-only analyst role: the insights schema and nothing else. Created here where the
-- migrating login may create roles (development, tests); elsewhere the DBA's roles script does.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'insights_analyst') THEN
        BEGIN
            CREATE ROLE insights_analyst NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'role insights_analyst not created: run include/sql/roles/database_roles.sql';
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'insights_analyst') THEN
        GRANT USAGE ON SCHEMA insights TO insights_analyst;
        GRANT SELECT ON ALL TABLES IN SCHEMA insights TO insights_analyst;
    END IF;
END
$$;
